"""The one command line: `python -m diffnphr <subcommand>`; parsing only, the work lives in the package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffnphr.pipeline import HeadReconstructionPipeline, Reconstruction, SamplingSettings


def _convert_mononphm(args: argparse.Namespace) -> None:
    from diffnphr.nphm.convert import convert_official_checkpoint

    out = convert_official_checkpoint(args.checkpoint, args.anchors, args.out_dir, config_yaml=args.config)
    print(f"wrote {out}")


def _convert_farl(args: argparse.Namespace) -> None:
    from diffnphr.encoders.convert import convert_farl_checkpoint

    out = convert_farl_checkpoint(args.checkpoint, args.out_dir)
    print(f"wrote {out}")


def _convert_ict(args: argparse.Namespace) -> None:
    from diffnphr.data.ict_convert import convert_ict_repo

    out = convert_ict_repo(args.ict_repo_dir, args.out_npz)
    print(f"wrote {out}")


def _build_backgrounds(args: argparse.Namespace) -> None:
    from diffnphr.data.backgrounds import build_background_bank

    out = build_background_bank(args.out)
    print(f"wrote {out}")


def _train_decoder(args: argparse.Namespace) -> None:
    from diffnphr.train.decoder import train_decoder

    report = train_decoder(
        args.out, args.time_budget, args.config, total_steps=args.steps, ict_path=args.ict, device=args.device
    )
    print(json.dumps(report, indent=2, default=str))


def _slim_run(args: argparse.Namespace) -> None:
    from diffnphr.train.checkpoints import slim_checkpoint

    print(f"slimmed {slim_checkpoint(args.run_dir, averages_only=args.averages_only)}")


def _export_decoder(args: argparse.Namespace) -> None:
    from diffnphr.train.decoder import export_decoder

    for name, folder in export_decoder(args.run_dir, args.out_dir).items():
        print(f"wrote {name}: {folder}")


def _train_reconstruction(args: argparse.Namespace) -> None:
    from diffnphr.train.reconstruction import train_reconstruction

    report = train_reconstruction(
        args.out,
        args.latents,
        args.time_budget,
        args.config,
        total_steps=args.steps,
        ict_path=args.ict,
        backgrounds=args.backgrounds,
        device=args.device,
    )
    print(json.dumps(report, indent=2, default=str))


def _export_reconstruction(args: argparse.Namespace) -> None:
    from diffnphr.train.reconstruction import export_reconstruction

    for name, folder in export_reconstruction(args.run_dir, args.out_dir).items():
        print(f"wrote {name}: {folder}")


def _fit(args: argparse.Namespace) -> None:
    from diffnphr.train.fit import fit_heads

    report = fit_heads(
        args.decoder,
        args.split,
        args.out,
        which=args.which,
        count=args.count,
        expressions=args.expressions,
        steps=args.steps,
        time_budget_s=args.time_budget,
        factor_map_dir=args.factor_map,
        ict_path=args.ict,
        device=args.device,
    )
    print(json.dumps(report, indent=2, default=str))


def _bench(args: argparse.Namespace) -> None:
    from diffnphr.bench import run_benchmarks

    report = run_benchmarks(device=args.device, quick=args.quick, only=args.only)
    print(json.dumps(report, indent=2) if args.json else _format_table(report))


def _eval(args: argparse.Namespace) -> None:
    from diffnphr.eval.decoder import evaluate_decoder, format_summary

    report = evaluate_decoder(
        args.weights,
        fitted_dir=args.fitted,
        count=args.count,
        resolution=args.resolution,
        points=args.points,
        device=args.device,
        seed=args.seed,
        ict_path=args.ict,
        renders_dir=args.renders,
    )
    print(json.dumps(report, indent=2) if args.json else format_summary(report))


def _eval_reconstruction(args: argparse.Namespace) -> None:
    from diffnphr.eval.reconstruction.report import format_reconstruction_summary
    from diffnphr.eval.reconstruction.run import evaluate_reconstruction

    report = evaluate_reconstruction(
        args.weights,
        args.latents,
        args.out,
        methods=args.methods,
        count=args.count,
        resolution=args.resolution,
        points=args.points,
        regression_dir=args.regression,
        landmarks_file=args.landmarks,
        max_minutes=args.max_minutes,
        device=args.device,
        seed=args.seed,
        ict_path=args.ict,
        backgrounds=args.backgrounds,
        figures_dir=args.figures,
        shard=args.shard,
    )
    print(json.dumps(report, indent=2) if args.json else format_reconstruction_summary(report))


def _shard(text: str) -> tuple[int, int]:
    """`K/N` (0 <= K < N) as a pair, for `--shard`."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, got {text!r}")
    return k, n


def _eval_landmarks(args: argparse.Namespace) -> None:
    from diffnphr.eval.reconstruction.landmarks import build_landmark_predictions

    report = build_landmark_predictions(
        args.latents,
        args.out,
        train_count=args.train_count,
        image_size=args.image_size,
        frame_size=args.frame_size,
        seed=args.seed,
        ict_path=args.ict,
        backgrounds=args.backgrounds,
    )
    print(json.dumps(report, indent=2))


def _eval_crops(args: argparse.Namespace) -> None:
    from diffnphr.eval.crops import crop_agreement, format_crop_agreement

    report = crop_agreement(
        args.count,
        args.seed,
        size=args.size,
        ict_path=args.ict,
        backgrounds=args.backgrounds,
        progress=lambda done, total: print(f"{done}/{total}", file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=2) if args.json else format_crop_agreement(report))


def _reconstruct(args: argparse.Namespace) -> None:
    from diffnphr.pipeline import HeadReconstructionPipeline

    pipeline = HeadReconstructionPipeline.from_pretrained(args.weights, device=args.device)
    result = pipeline(
        args.photo, _sampling_settings(pipeline, args), allow_no_face=args.allow_no_face, progress=_ProgressPrinter()
    )
    _write_result(result, args.output or Path(f"{args.photo.stem}.{args.format or 'glb'}"), args.format)


def _transfer(args: argparse.Namespace) -> None:
    from diffnphr.pipeline import HeadReconstructionPipeline

    pipeline = HeadReconstructionPipeline.from_pretrained(args.weights, device=args.device)
    result = pipeline.transfer_expression(
        args.identity_photo,
        args.expression_photo,
        _sampling_settings(pipeline, args),
        allow_no_face=args.allow_no_face,
        progress=_ProgressPrinter(),
    )
    default = Path(f"{args.identity_photo.stem}_as_{args.expression_photo.stem}.{args.format or 'glb'}")
    _write_result(result, args.output or default, args.format)


def _sampling_settings(pipeline: HeadReconstructionPipeline, args: argparse.Namespace) -> SamplingSettings:
    """The pipeline's validated settings for the command's options (left out: the weights' pipeline.json)."""
    return pipeline.settings(
        seed=args.seed, steps=args.steps, resolution=args.resolution, guidance_scale=args.guidance, samples=args.samples
    )


class _ProgressPrinter:
    """Prints pipeline progress to stderr: each new stage, and every further 10 % of the work."""

    def __init__(self) -> None:
        self.last: tuple[str, float] = ("", -1.0)

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self.last[0] or fraction >= self.last[1] + 0.1:
            print(f"[{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)
            self.last = (stage, fraction)


def _write_result(result: Reconstruction, output: Path, file_format: str | None) -> None:
    from diffnphr.mesh import export_mesh

    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    path = export_mesh(result.mesh, output, file_format)
    print(f"wrote {path} ({len(result.mesh.vertices)} vertices, {len(result.mesh.faces)} faces)")
    print(f"seed: {result.seed}")
    print("seconds: " + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in result.timings.items()))


def _add_reconstruction_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `reconstruct` and `transfer`."""
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="mesh file to write: .glb, .obj or .ply (default: named after the photo)",
    )
    p.add_argument(
        "--format", choices=("glb", "obj", "ply"), default=None, help="mesh format (default: from --output, else glb)"
    )
    p.add_argument("--seed", type=int, default=None, help="diffusion seed (default: random, printed)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the weights' pipeline.json)")
    p.add_argument(
        "--resolution", type=int, default=None, help="marching-cubes grid size per axis (default: pipeline.json)"
    )
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: pipeline.json)"
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="diffusion samples averaged into the head; 1 gives one sample (default: pipeline.json)",
    )
    p.add_argument(
        "--weights", default=None, help="weights folder or Hub id (default: $DIFFNPHR_WEIGHTS, else ./weights)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--allow-no-face", action="store_true", help="use the centre of the image when no face is found")


def _format_table(report: dict) -> str:
    lines = [f"device: {report['device']}"]
    for row in report["results"]:
        extra = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("name",))
        lines.append(f"  {row['name']}: {extra}")
    return "\n".join(lines)


def _add_training_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit archive (default: $DIFFNPHR_ICT or ../shared)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_training_run_options(p: argparse.ArgumentParser) -> None:
    """The options every resumable trainer takes: time budget, settings file, planned steps, data, device."""
    p.add_argument(
        "--time-budget", type=float, default=540.0, help="seconds this call may train before it saves and stops"
    )
    p.add_argument("--config", type=Path, default=None, help="JSON file of training settings (default: the defaults)")
    p.add_argument("--steps", type=int, default=None, help="planned total steps (the schedules are fractions of it)")
    _add_training_data_options(p)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m diffnphr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert-mononphm", help="official MonoNPHM checkpoint -> diffnphr decoder folder")
    p.add_argument("checkpoint", type=Path, help="checkpoint_epoch_N.tar with 'id_decoder' and 'ex_decoder'")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--anchors", type=Path, required=True, help="the official assets/anchors_65.npy")
    p.add_argument(
        "--config", type=Path, default=None, help="the official configs.yaml (default: mononphm.yaml values)"
    )
    p.set_defaults(run=_convert_mononphm)

    p = sub.add_parser("convert-farl", help="FaRL .pth -> transformers CLIPVisionModelWithProjection folder")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(run=_convert_farl)

    p = sub.add_parser("convert-ict", help="official ICT-FaceKit repository (OBJ files) -> the archive diffnphr reads")
    p.add_argument("ict_repo_dir", type=Path, help="a checkout of the ICT-FaceKit repository")
    p.add_argument("out_npz", type=Path)
    p.set_defaults(run=_convert_ict)

    p = sub.add_parser(
        "build-backgrounds", help="natural-image background patches (scikit-image) -> one safetensors file"
    )
    p.add_argument("out", type=Path, help="file to write, e.g. carry/backgrounds.safetensors")
    p.set_defaults(run=_build_backgrounds)

    p = sub.add_parser("train-decoder", help="train (or resume) the MonoNPHM-architecture decoder on ICT-FaceKit heads")
    p.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoints, split, log; resumed when it exists"
    )
    _add_training_run_options(p)
    p.set_defaults(run=_train_decoder)

    p = sub.add_parser(
        "slim-run", help="keep a run's newest checkpoint in float16 without optimiser moments (to carry it to a GPU)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--averages-only",
        action="store_true",
        help="keep only the moving averages of averaged weights (about half the size; the run resumes from them)",
    )
    p.set_defaults(run=_slim_run)

    p = sub.add_parser(
        "export-decoder",
        help="a training run's newest checkpoint -> decoder/, factor_map/ and decoder_latents/ folders",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(run=_export_decoder)

    p = sub.add_parser(
        "train-reconstruction",
        help="train (or resume) the image encoder + diffusion model (+ regression baseline) on renders",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoints, config, log; resumed when it exists"
    )
    p.add_argument(
        "--latents",
        type=Path,
        default=Path("weights/decoder_latents"),
        help="the decoder's split + codebook latents (the diffusion targets)",
    )
    p.add_argument(
        "--backgrounds", type=Path, default=None, help="background bank (python -m diffnphr build-backgrounds)"
    )
    _add_training_run_options(p)
    p.set_defaults(run=_train_reconstruction)

    p = sub.add_parser(
        "export-reconstruction",
        help="a reconstruction run's newest checkpoint -> encoder/, diffusion/, baselines/regression/",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(run=_export_reconstruction)

    p = sub.add_parser("fit", help="fit latents of new heads with the decoder frozen (held-out identities by default)")
    p.add_argument("--decoder", type=Path, required=True, help="decoder weights folder")
    p.add_argument("--split", type=Path, required=True, help="folder with split.json and heads.safetensors")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--which", choices=("heldout", "train"), default="heldout")
    p.add_argument("--factor-map", type=Path, default=None, help="factor map folder: start from its latents")
    p.add_argument("--count", type=int, default=None, help="how many identities (default: all of the split)")
    p.add_argument("--expressions", type=int, default=None, help="expressions per identity (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per group")
    p.add_argument("--time-budget", type=float, default=None)
    _add_training_data_options(p)
    p.set_defaults(run=_fit)

    p = sub.add_parser("bench", help="time every block on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes, for a smoke check")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="CASE",
        help="run only these cases (e.g. pipeline_default pipeline_128; default: all)",
    )
    p.set_defaults(run=_bench)

    evaluations = sub.add_parser("eval", help="measure models against ground-truth ICT heads (mm)").add_subparsers(
        dest="what", required=True
    )
    p = evaluations.add_parser(
        "decoder", help="the decoder and its factor map on held-out heads with hair against ground truth (mm)"
    )
    p.add_argument(
        "--weights", type=Path, default=Path("weights"), help="folder with decoder/, factor_map/, decoder_latents/"
    )
    p.add_argument(
        "--fitted", type=Path, default=None, help="folder of `fit` (held-out latents); else 'fitted' is skipped"
    )
    p.add_argument("--count", type=int, default=100, help="held-out identities (one expression each)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--points", type=int, default=200_000, help="surface samples per side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--renders", type=Path, default=None, help="folder for ground truth | mapped | fitted PNGs")
    _add_training_data_options(p)
    p.add_argument("--json", action="store_true", help="print the full JSON report instead of a table")
    p.set_defaults(run=_eval)

    p = evaluations.add_parser(
        "reconstruction", help="reconstructions of held-out renders vs ground truth and baselines"
    )
    p.add_argument(
        "--weights", default=None, help="pipeline weights folder (default: $DIFFNPHR_WEIGHTS, else ./weights)"
    )
    p.add_argument(
        "--latents",
        type=Path,
        default=Path("weights/decoder_latents"),
        help="split, codebooks and fitted held-out latents",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("eval_reconstruction"),
        help="results folder: cached per-render results (resumed), report.json, report.md",
    )
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the methods (default: all available)")
    p.add_argument("--count", type=int, default=None, help="held-out identities to evaluate (default: all)")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid per axis")
    p.add_argument("--points", type=int, default=100_000, help="surface samples per side")
    p.add_argument(
        "--regression", type=Path, default=None, help="LatentRegressor folder (weights/baselines/regression)"
    )
    p.add_argument("--landmarks", type=Path, default=None, help="file written by `eval landmarks`")
    p.add_argument("--backgrounds", type=Path, default=None, help="background bank for the renders")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after about this long; rerun to continue")
    p.add_argument("--figures", type=Path, default=None, help="folder for side-by-side PNGs and the steps chart")
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        help="K/N: evaluate only the K-th (from 0) of N contiguous parts of the renders, so N processes "
        "can share a GPU and --out; a call without it then reports on (and draws) everything",
    )
    p.add_argument("--seed", type=int, default=0)
    _add_training_data_options(p)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the markdown summary")
    p.set_defaults(run=_eval_reconstruction)

    p = evaluations.add_parser("landmarks", help="fit the Face Mesh landmark ridge baseline (CPU, MediaPipe)")
    p.add_argument("--out", type=Path, required=True, help="file for the evaluation renders' predicted latents")
    p.add_argument(
        "--latents",
        type=Path,
        default=Path("weights/decoder_latents"),
        help="split, codebooks and fitted held-out latents",
    )
    p.add_argument("--train-count", type=int, default=1000, help="training heads to render and trace")
    p.add_argument("--frame-size", type=int, default=256, help="side of the rendered frames Face Mesh traces")
    p.add_argument("--image-size", type=int, default=128, help="the encoder's crop size (scene sampling follows it)")
    p.add_argument("--backgrounds", type=Path, default=None, help="background bank for the renders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit archive (default: $DIFFNPHR_ICT or ../shared)")
    p.set_defaults(run=_eval_landmarks)

    p = evaluations.add_parser(
        "crops", help="training crops (projected landmarks) vs photo crops (MediaPipe) on CPU renders"
    )
    p.add_argument("--count", type=int, default=300, help="frames to render and detect")
    p.add_argument("--size", type=int, default=512, help="frame side in pixels")
    p.add_argument("--backgrounds", type=Path, default=None, help="background bank for the renders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit archive (default: $DIFFNPHR_ICT or ../shared)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.set_defaults(run=_eval_crops)

    p = sub.add_parser("reconstruct", help="one face photo -> a 3D head mesh with vertex colours")
    p.add_argument("photo", type=Path, help="a photo with one clearly visible face")
    _add_reconstruction_options(p)
    p.set_defaults(run=_reconstruct)

    p = sub.add_parser("transfer", help="the head of one photo with the expression of another")
    p.add_argument("identity_photo", type=Path, help="photo whose face shape and appearance are kept")
    p.add_argument("expression_photo", type=Path, help="photo whose expression is used")
    _add_reconstruction_options(p)
    p.set_defaults(run=_transfer)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    # The library reports progress through `logging`; the command line shows it on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

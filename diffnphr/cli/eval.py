"""`eval decoder`, `eval reconstruction`, `eval landmarks`, `eval crops`, `eval correspondence`, `eval refinement`:
measurements against ground-truth heads (and the Face Mesh correspondence the refinement is built on)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffnphr.cli.options import add_ict_option, add_training_data_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `eval` and its subcommands to the command line."""
    evaluations = sub.add_parser("eval", help="measure models against ground-truth ICT heads (mm)").add_subparsers(
        dest="what", required=True
    )
    _add_decoder(evaluations)
    _add_reconstruction(evaluations)
    _add_landmarks(evaluations)
    _add_crops(evaluations)
    _add_correspondence(evaluations)
    _add_refinement(evaluations)


def _add_latents_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latents",
        type=Path,
        default=Path("weights/decoder_latents"),
        help="split, codebooks and fitted held-out latents",
    )


def _add_backgrounds_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backgrounds", type=Path, default=None, help="background bank for the renders")


def _add_decoder(evaluations: argparse._SubParsersAction) -> None:
    """`eval decoder`: the decoder and its factor map on held-out heads."""
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
    p.add_argument(
        "--out", type=Path, default=None, help="folder for heads.jsonl and report.json: a rerun resumes from it"
    )
    p.add_argument("--max-minutes", type=float, default=None, help="stop after about this long; rerun to continue")
    add_training_data_options(p)
    p.add_argument("--json", action="store_true", help="print the full JSON report instead of a table")
    p.set_defaults(run=_eval_decoder)


def _eval_decoder(args: argparse.Namespace) -> None:
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
        out_dir=args.out,
        max_minutes=args.max_minutes,
    )
    print(json.dumps(report, indent=2) if args.json else format_summary(report))


def _add_reconstruction(evaluations: argparse._SubParsersAction) -> None:
    """`eval reconstruction`: every method on held-out renders, resumable and shardable."""
    p = evaluations.add_parser(
        "reconstruction", help="reconstructions of held-out renders vs ground truth and baselines"
    )
    p.add_argument(
        "--weights", default=None, help="pipeline weights folder (default: $DIFFNPHR_WEIGHTS, else ./weights)"
    )
    _add_latents_option(p)
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
    _add_backgrounds_option(p)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after about this long; rerun to continue")
    p.add_argument("--figures", type=Path, default=None, help="folder for side-by-side PNGs and the steps chart")
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        help="K/N: evaluate only the K-th (from 0) of N contiguous parts of the renders, so N processes "
        "can share a GPU and --out; a call without it then reports on (and draws) everything",
    )
    p.add_argument("--seed", type=int, default=0)
    add_training_data_options(p)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the markdown summary")
    p.set_defaults(run=_eval_reconstruction)


def shard(text: str) -> tuple[int, int]:
    """`K/N` (0 <= K < N) as a pair, for `--shard`."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, got {text!r}")
    return k, n


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


def _add_landmarks(evaluations: argparse._SubParsersAction) -> None:
    """`eval landmarks`: the landmark ridge baseline's CPU phase."""
    p = evaluations.add_parser("landmarks", help="fit the Face Mesh landmark ridge baseline (CPU, MediaPipe)")
    p.add_argument("--out", type=Path, required=True, help="file for the evaluation renders' predicted latents")
    _add_latents_option(p)
    p.add_argument("--train-count", type=int, default=1000, help="training heads to render and trace")
    p.add_argument("--frame-size", type=int, default=256, help="side of the rendered frames Face Mesh traces")
    p.add_argument("--image-size", type=int, default=128, help="the encoder's crop size (scene sampling follows it)")
    _add_backgrounds_option(p)
    p.add_argument("--seed", type=int, default=0)
    add_ict_option(p)
    p.set_defaults(run=_eval_landmarks)


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


def _add_crops(evaluations: argparse._SubParsersAction) -> None:
    """`eval crops`: the training crops against MediaPipe's on the same renders."""
    p = evaluations.add_parser(
        "crops", help="training crops (projected landmarks) vs photo crops (MediaPipe) on CPU renders"
    )
    p.add_argument("--count", type=int, default=300, help="frames to render and detect")
    p.add_argument("--size", type=int, default=512, help="frame side in pixels")
    _add_backgrounds_option(p)
    p.add_argument("--seed", type=int, default=0)
    add_ict_option(p)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.set_defaults(run=_eval_crops)


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


def _add_correspondence(evaluations: argparse._SubParsersAction) -> None:
    """`eval correspondence`: where Face Mesh's points lie on the ICT head, for the refinement (CPU, MediaPipe)."""
    p = evaluations.add_parser(
        "correspondence", help="build the Face Mesh -> ICT correspondence and expression gains from renders (CPU)"
    )
    p.add_argument("--out", type=Path, default=Path("diffnphr/refine/facemesh_ict.npz"), help="landmark model file")
    p.add_argument("--renders", type=int, default=48, help="neutral renders the correspondence is the median of")
    p.add_argument("--gain-heads", type=int, default=4, help="heads each calibrated expression is rendered on")
    add_ict_option(p)
    p.set_defaults(run=_eval_correspondence)


def _eval_correspondence(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from diffnphr.eval.correspondence import build_correspondence

    report = build_correspondence(args.out, renders=args.renders, gain_heads=args.gain_heads, ict_path=args.ict)
    print(json.dumps(asdict(report), indent=2))


def _add_refinement(evaluations: argparse._SubParsersAction) -> None:
    """`eval refinement`: expression error with and without the landmark fit, on held-out renders (CPU)."""
    p = evaluations.add_parser(
        "refinement", help="expression error (mm) and landmark reprojection (px) with and without refinement (CPU)"
    )
    p.add_argument("--weights", type=Path, default=Path("weights"), help="pipeline weights with factor_map/")
    _add_latents_option(p)
    p.add_argument("--count", type=int, default=24, help="evaluation renders (identity-major: neutral, 2 expressive)")
    _add_backgrounds_option(p)
    add_ict_option(p)
    p.add_argument("--json", action="store_true", help="print the full JSON report instead of a table")
    p.set_defaults(run=_eval_refinement)


def _eval_refinement(args: argparse.Namespace) -> None:
    from diffnphr.eval.refinement import evaluate_refinement, format_report

    report = evaluate_refinement(
        args.weights, args.latents, count=args.count, ict_path=args.ict, backgrounds=args.backgrounds
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))

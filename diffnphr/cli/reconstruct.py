"""`reconstruct` and `transfer`: the app's two requests from the command line, mesh files out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from diffnphr.cli.options import add_device_option

if TYPE_CHECKING:
    from diffnphr.pipeline import HeadReconstructionPipeline, Reconstruction, SamplingSettings


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `reconstruct` and `transfer` to the command line."""
    p = sub.add_parser("reconstruct", help="one face photo -> a 3D head mesh with vertex colours")
    p.add_argument("photo", type=Path, help="a photo with one clearly visible face")
    _add_reconstruction_options(p)
    p.set_defaults(run=_reconstruct)

    p = sub.add_parser("transfer", help="the head of one photo with the expression of another")
    p.add_argument("identity_photo", type=Path, help="photo whose face shape and appearance are kept")
    p.add_argument("expression_photo", type=Path, help="photo whose expression is used")
    _add_reconstruction_options(p)
    p.set_defaults(run=_transfer)


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
    add_device_option(p)
    p.add_argument("--allow-no-face", action="store_true", help="use the centre of the image when no face is found")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the sampled head to the photo's landmarks, or with --no-refine keep it as sampled "
        "(default: pipeline.json's refine, off)",
    )


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
        seed=args.seed,
        steps=args.steps,
        resolution=args.resolution,
        guidance_scale=args.guidance,
        samples=args.samples,
        refine=args.refine,
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

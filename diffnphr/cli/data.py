"""`convert-ict`, `build-backgrounds`: the data files training and evaluation read."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `convert-ict` and `build-backgrounds` to the command line."""
    p = sub.add_parser("convert-ict", help="official ICT-FaceKit repository (OBJ files) -> the archive diffnphr reads")
    p.add_argument("ict_repo_dir", type=Path, help="a checkout of the ICT-FaceKit repository")
    p.add_argument("out_npz", type=Path)
    p.set_defaults(run=_convert_ict)

    p = sub.add_parser(
        "build-backgrounds", help="natural-image background patches (scikit-image) -> one safetensors file"
    )
    p.add_argument("out", type=Path, help="file to write, e.g. carry/backgrounds.safetensors")
    p.set_defaults(run=_build_backgrounds)


def _convert_ict(args: argparse.Namespace) -> None:
    from diffnphr.data.ict_convert import convert_ict_repo

    out = convert_ict_repo(args.ict_repo_dir, args.out_npz)
    print(f"wrote {out}")


def _build_backgrounds(args: argparse.Namespace) -> None:
    from diffnphr.data.backgrounds import build_background_bank

    out = build_background_bank(args.out)
    print(f"wrote {out}")

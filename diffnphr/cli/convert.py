"""`convert-mononphm`, `convert-farl`: official (licence-gated) checkpoints into diffnphr weight folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `convert-mononphm` and `convert-farl` to the command line."""
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


def _convert_mononphm(args: argparse.Namespace) -> None:
    from diffnphr.nphm.convert import convert_official_checkpoint

    out = convert_official_checkpoint(args.checkpoint, args.anchors, args.out_dir, config_yaml=args.config)
    print(f"wrote {out}")


def _convert_farl(args: argparse.Namespace) -> None:
    from diffnphr.encoders.convert import convert_farl_checkpoint

    out = convert_farl_checkpoint(args.checkpoint, args.out_dir)
    print(f"wrote {out}")

"""The trainers and what turns their runs into weights: `train-decoder`, `slim-run`, `export-decoder`,
`train-reconstruction`, `export-reconstruction`, `fit`.

Every trainer saves and stops before `--time-budget` seconds; the next call on the same `--out` resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffnphr.cli.options import add_training_data_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the training commands, in the order a training run uses them."""
    _add_decoder_commands(sub)
    _add_reconstruction_commands(sub)
    _add_fit(sub)


def _add_training_run_options(p: argparse.ArgumentParser) -> None:
    """The options every resumable trainer takes: time budget, settings file, planned steps, data, device."""
    p.add_argument(
        "--time-budget", type=float, default=540.0, help="seconds this call may train before it saves and stops"
    )
    p.add_argument("--config", type=Path, default=None, help="JSON file of training settings (default: the defaults)")
    p.add_argument("--steps", type=int, default=None, help="planned total steps (the schedules are fractions of it)")
    add_training_data_options(p)


def _add_decoder_commands(sub: argparse._SubParsersAction) -> None:
    """`train-decoder`, `slim-run` and `export-decoder`."""
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


def _add_reconstruction_commands(sub: argparse._SubParsersAction) -> None:
    """`train-reconstruction` and `export-reconstruction`."""
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


def _add_fit(sub: argparse._SubParsersAction) -> None:
    """`fit`: latents of new heads with the decoder frozen."""
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
    add_training_data_options(p)
    p.set_defaults(run=_fit)


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

"""Flags more than one command group takes, with one wording everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_ict_option(p: argparse.ArgumentParser) -> None:
    """`--ict`: the ICT-FaceKit archive the heads come from."""
    p.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit archive (default: $DIFFNPHR_ICT or ../shared)")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """`--device`: where the models run."""
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_training_data_options(p: argparse.ArgumentParser) -> None:
    """`--ict` and `--device`: what trainers and evaluations of the ICT heads take."""
    add_ict_option(p)
    add_device_option(p)

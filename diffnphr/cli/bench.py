"""`bench`: every block's speed and peak memory on this machine (`diffnphr.bench`)."""

from __future__ import annotations

import argparse
import json

from diffnphr.cli.options import add_device_option


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `bench` to the command line."""
    p = sub.add_parser("bench", help="time every block on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_device_option(p)
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes, for a smoke check")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="CASE",
        help="run only these cases (e.g. pipeline_default pipeline_128; default: all)",
    )
    p.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> None:
    from diffnphr.bench import run_benchmarks

    report = run_benchmarks(device=args.device, quick=args.quick, only=args.only)
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def format_table(report: dict) -> str:
    """The benchmark report as text: the device, then one line per row with its measured values."""
    lines = [f"device: {report['device']}"]
    for row in report["results"]:
        extra = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("name",))
        lines.append(f"  {row['name']}: {extra}")
    return "\n".join(lines)

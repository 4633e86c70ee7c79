"""`python -m diffnphr <subcommand>`: parse the command line and run the chosen command's handler.

Each command group's flags and handler live in its own module of `diffnphr.cli`.
"""

from __future__ import annotations

import logging
import sys

from diffnphr.cli import build_parser


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

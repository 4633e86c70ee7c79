"""The command line's rooms: one module per command group, each adding its own subcommands and their handlers.

`convert` (official checkpoints), `data` (training data files), `train` (trainers, exports, fitting),
`bench`, `eval` (the `eval <what>` subcommands), `reconstruct` (`reconstruct`, `transfer`); `options` holds
the flags several groups share. Every handler imports the library it drives when it runs, so parsing stays
fast; `diffnphr.__main__` only parses and dispatches.
"""

from __future__ import annotations

import argparse

from diffnphr.cli import bench, convert, data, eval, reconstruct, train

DESCRIPTION = "The one command line: `python -m diffnphr <subcommand>`; parsing only, the work lives in the package."
# In the order `python -m diffnphr --help` lists their subcommands.
GROUPS = (convert, data, train, bench, eval, reconstruct)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand, each group adding its own; `args.run(args)` runs the one chosen."""
    parser = argparse.ArgumentParser(prog="python -m diffnphr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser

"""The `scalesearch` command. Thin: parses flags and hands over to `scalesearch.commands.<name>`.

Each command module keeps its heavy imports (torch, ray, optuna, matplotlib) inside `run`, so
`scalesearch --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from scalesearch import __version__
from scalesearch.errors import UserError

# The order here is the order of `scalesearch --help`.
COMMANDS = ["family", "data", "train", "search", "validate", "plot", "report", "export"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="scalesearch",
        description="Find compound-scaling coefficients (alpha, beta, gamma) on your own data.",
    )
    parser.add_argument("--version", action="version", version=f"scalesearch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"scalesearch.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"scalesearch {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scalesearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

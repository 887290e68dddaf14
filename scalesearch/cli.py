"""The `scalesearch` command. Thin: parses flags and hands over to `scalesearch.commands.<name>`.

Each command module keeps its heavy imports (torch, ray, optuna, matplotlib) inside `run`, so
`scalesearch --help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from scalesearch import __version__
from scalesearch.core.errors import UserError

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


def _check_cluster_early(args: argparse.Namespace) -> None:
    """A command that joins a Ray cluster (--address or $RAY_ADDRESS) checks the address before it
    loads data and models, so a wrong one costs seconds, not the command's whole start-up.
    ray_session checks again when it joins (the cluster may have changed since)."""
    if "address" not in vars(args):
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        from scalesearch.execution.cluster import check_address

        check_address(address)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and `python -m scalesearch`: returns the exit status.

    0 ok; 2 bad input (argparse's usage message for a bad flag, one line on stderr for every
    UserError); 130 on Ctrl-C at any point, also while the commands' modules import; no traceback for
    either. SIGTERM (`kill`, a scheduler's stop) takes Ctrl-C's path, so a search stops the same way
    (finished trials kept, one line with the resume hint), and exits 143 (128 + SIGTERM), the status a
    supervisor expects of a process it terminated.
    """
    command = "scalesearch"
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated.append(signum)
        # Whatever Ctrl-C does right now: Ray Tune's graceful stop during a search, else KeyboardInterrupt.
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not on_sigterm:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    # cluster.ray_session puts this handler back after ray.init (which installs its own).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        command = f"scalesearch {args.command}"
        _check_cluster_early(args)
        status = int(args.run(args) or 0)
        return 128 + signal.SIGTERM if terminated and status == 130 else status
    except UserError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except BrokenPipeError:
        # The reader went away (`scalesearch family | head`): not an error. Point stdout at devnull so
        # Python's flush at exit does not complain again (the recipe in Python's signal docs).
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

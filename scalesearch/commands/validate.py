"""`scalesearch validate`: does compound scaling beat single-dimension scaling at equal cost, on this run's data?"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scalesearch.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate",
        help="train compound vs single-dimension scaling at equal cost on the run's data",
        description="At each phi, train the realizable proxy network (the run's constraint within "
        "target^phi +- tolerance of the proxy base, as the search plans a trial) nearest the chosen "
        "network's realized shares, and the ones nearest pure depth, pure width and pure resolution "
        "(validation.csv records each network's realized shares and its share error: how far from a "
        "pure dimension it really is); phi 0 is the proxy base. Each trains for several seeds on the "
        "run's dataset and recipe in parallel on Ray. Writes RUN_DIR/validation.csv (as jobs finish: "
        "Ctrl-C keeps the finished rows) and validation.png, and prints a verdict per phi.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished search run folder")
    parser.add_argument(
        "--phis",
        default=None,
        help="phi values: a list '0,2,3,4' or a range '0-4' (default: 0, each whole phi up to the searched one, "
        "and two steps beyond it: the budgets B1..B7 extrapolate to, held out from the search)",
    )
    parser.add_argument("--baselines", default="depth,width,resolution", help="single-dimension baselines to train")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per strategy and phi (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the search's)")
    parser.add_argument("--concurrency", type=int, default=None, help="jobs at once (default: the search's)")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per job (default: the search's)")
    parser.add_argument("--address", default=None, help="join a Ray cluster (default: the search's, else local)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def run(args: argparse.Namespace) -> int:
    from scalesearch.core.scaling import parse_phis
    from scalesearch.outputs.runs import read_run
    from scalesearch.validation.validate import VALIDATION_CSV, ValidationOptions, parse_baselines, run_validation

    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    options = ValidationOptions(
        phis=tuple(parse_phis(args.phis)) if args.phis is not None else (),
        baselines=tuple(parse_baselines(args.baselines)),
        seeds=args.seeds,
        epochs=args.epochs,
        concurrency=args.concurrency,
        cpus_per_trial=args.cpus_per_trial,
        address=args.address,
        quiet=args.quiet,
    )
    run_folder = read_run(args.run_dir)
    try:
        rows = run_validation(run_folder, options)
    except KeyboardInterrupt:
        print(
            f"scalesearch validate: interrupted; the finished jobs are in {run_folder.path / VALIDATION_CSV} "
            "(run validate again for the whole comparison)",
            file=sys.stderr,
        )
        return 130
    _print_results(rows, run_folder.path)
    return 0


def _print_results(rows: pd.DataFrame, run_dir: Path) -> None:
    """The summary per strategy and phi, the verdict per phi with how far to trust it, and what was written."""
    from scalesearch.core.tables import text_table
    from scalesearch.outputs.runs import VALIDATION_CSV, VALIDATION_PNG
    from scalesearch.outputs.verdict import VERDICT_COLUMNS, summarize, verdict, verdict_note, verdict_records

    summary = summarize(rows)

    def decimals(value: float, places: int = 4) -> str:
        return "" if math.isnan(value) else f"{value:.{places}f}"

    table = summary.assign(
        mean=summary["mean"].map(decimals),
        std=summary["std"].map(decimals),
        mflops=(summary["flops"] / 1e6).map(lambda v: decimals(v, 3)),
        ratio=summary["constraint_ratio"].map(lambda v: decimals(v, 3)),
        share_error=summary["share_error"].map(lambda v: decimals(v, 2)),
    )
    columns = ["phi", "strategy", "network", "share_error", "n", "mean", "std", "mflops", "ratio", "status"]
    print(text_table(table.to_dict("records"), columns))
    constraint = str(rows["constraint"].dropna().iloc[0]) if rows["constraint"].notna().any() else "flops"
    print(f"ratio: measured {constraint} over the proxy base's; share_error: L-inf distance of the network's "
          "realized shares from the strategy's")  # fmt: skip
    print()
    print(text_table(verdict_records(verdict(summary)), VERDICT_COLUMNS))
    print(f"\n{verdict_note(rows)}")
    failed = rows[rows["status"] == "failed"]
    if len(failed):
        print(f"{len(failed)} job(s) failed; see the error column of validation.csv")
    print(f"wrote {run_dir / VALIDATION_CSV} and {run_dir / VALIDATION_PNG}")

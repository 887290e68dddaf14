"""`scalesearch plot`: accuracy against FLOPs of one or more runs, and where each search looked."""

from __future__ import annotations

import argparse

from scalesearch.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot",
        help="plot accuracy vs FLOPs of runs and where their searches looked",
        description="Draw, for one or more runs, every trial's accuracy against its FLOPs with the Pareto "
        "frontier and the chosen point, beside the proposals on the compute-shares simplex coloured by "
        "accuracy. The format follows the suffix of --out (.png or .svg).",
    )
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="search run folders")
    parser.add_argument("--out", required=True, metavar="FILE", help="the image to write (.png or .svg)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scalesearch.plots import check_image_path, plot_search

    out = check_image_path(args.out)
    for run_dir in args.run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            raise UserError(f"run folder {run_dir!r} not found")
        if not (path / "trials.csv").is_file():
            raise UserError(f"{run_dir!r} has no trials.csv: is it a search run?")
    plot_search(args.run_dirs, out)
    print(f"wrote {out}")
    return 0

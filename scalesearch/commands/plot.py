"""`scalesearch plot`: what one or more searches trained, on their budget band and on the shares simplex."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot",
        help="plot what searches trained: accuracy on their budget band and the shares simplex",
        description="Draw, for one or more search runs (finished or still running), every trained network's "
        "accuracy against its measured cost (all on the search's one budget band: a strip, not a frontier "
        "across budgets) beside the shares simplex: each network at its realized shares coloured by accuracy, "
        "the shares the sampler requested joined to the network trained, the confirmed candidates with mean "
        "± std, the tie region and the chosen network. The frontier across budgets is validation.png, from "
        "`scalesearch validate RUN_DIR`. The format follows the suffix of --out (.png or .svg).",
    )
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="search run folders")
    parser.add_argument("--out", required=True, metavar="FILE", help="the image to write (.png or .svg)")
    return parser


def run(args: argparse.Namespace) -> int:
    from scalesearch.outputs.plots import check_image_path, plot_runs
    from scalesearch.outputs.views import read_view

    out = check_image_path(args.out)
    for run_dir in args.run_dirs:
        read_view(run_dir)  # one clear line for a missing folder or one without trials.csv, before drawing
    plot_runs(args.run_dirs, out)
    print(f"wrote {out}")
    return 0

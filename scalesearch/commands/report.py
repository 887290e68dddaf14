"""`scalesearch report`: a Markdown report of a finished run that reads well on a code host."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write a Markdown report of a run (coefficients, search, top trials, validation, family, plots)",
        description="Write RUN_DIR/report.md: the chosen coefficients and constraint, search statistics, the "
        "top trials, the validation verdict (when `scalesearch validate` has run), the scaled family and "
        "the plots (drawing RUN_DIR/search.png), with relative links that render on a code host.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished search run folder")
    parser.add_argument("--out", metavar="FILE", help="report file inside RUN_DIR (default RUN_DIR/report.md)")
    return parser


def run(args: argparse.Namespace) -> int:
    from scalesearch.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0

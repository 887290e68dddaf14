"""`scalesearch report`: a Markdown report of a finished run that reads well on a code host."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write a Markdown report of a run (answer, confirmed candidates, search, validation, family, plots)",
        description="Write RUN_DIR/report.md, leading with the answer: the chosen coefficients, how sure the "
        "choice is (the confirmed candidates with mean ± std and which are tied), how the search went, the "
        "frontier across budgets (validation.png, when `scalesearch validate` has run), the search's views "
        "(search.png, frontier.png, redrawn) and the scaled family, with relative links that render on a code host.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished search run folder")
    parser.add_argument("--out", metavar="FILE", help="report file inside RUN_DIR (default RUN_DIR/report.md)")
    return parser


def run(args: argparse.Namespace) -> int:
    from scalesearch.outputs.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0

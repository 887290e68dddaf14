"""`scalesearch export`: a run's discovered rule and family, for other tools."""

from __future__ import annotations

import argparse

from scalesearch.core.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export the discovered rule and family (json, yaml, python, timm, torchvision)",
        description="Write RUN_DIR's scaling rule and family as data (json, yaml), as a standalone Python "
        "module with scaled_config(phi) -> dict (no scalesearch needed), or as the arguments timm "
        "(channel_multiplier, depth_multiplier) and torchvision (width_mult, depth_mult) take per variant. "
        "Every format says which rule produced the variants.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished search run folder")
    parser.add_argument("--format", default="json", help="json (default) | yaml | python | timm | torchvision")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (atomically) instead of standard output")
    return parser


def run(args: argparse.Namespace) -> int:
    from scalesearch.core.atomic import write_or_print
    from scalesearch.outputs.export import EXPORT_FORMATS, render_export, rule_export
    from scalesearch.outputs.runs import read_run

    if args.format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {args.format!r} (choose from {', '.join(EXPORT_FORMATS)})")
    text = render_export(rule_export(read_run(args.run_dir)), args.format)
    write_or_print(text, args.out)
    return 0

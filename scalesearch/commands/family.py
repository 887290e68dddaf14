"""`scalesearch family`: coefficients (or the published table) → a scaled family with measured cost."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from scalesearch.core.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from scalesearch.outputs.family_table import FORMATS

    parser = subparsers.add_parser(
        "family",
        help="scale a base network into a family (B0..B7) and measure params and FLOPs",
        description="Turn coefficients (alpha, beta, gamma), a search's best.json, or the published "
        "EfficientNet table into a scaled family of concrete models with measured params and FLOPs.",
    )
    parser.add_argument("--space", default=None, help="search-space YAML or shipped name (default: efficientnet_b0)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--reference", action="store_true", help="use the space's published table (B0..B7)")
    source.add_argument("--from", dest="run_dir", metavar="RUN_DIR", help="use the coefficients in RUN_DIR/best.json")
    parser.add_argument("--alpha", type=float, help="depth coefficient (>= 1)")
    parser.add_argument("--beta", type=float, help="width coefficient (>= 1)")
    parser.add_argument("--gamma", type=float, help="resolution coefficient (>= 1)")
    parser.add_argument("--phis", default="0-7", help="a range '0-7' (default) or a list '0,1,2.5'")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument("--in-channels", type=int, default=3, help="input image channels (default 3)")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="also measure activations, latency (batch 1 and 8) and training-step peak memory (batch 2) of "
        "each variant on this machine's CPU (slow for B5-B7)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for --costs timings (default: torch's own count)"
    )
    parser.add_argument(
        "--pure-rule",
        action="store_true",
        help="the pure compound rule, without planning each variant onto its FLOPs budget (target^phi ± tolerance)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (atomically) instead of standard output")
    return parser


def read_best(run_dir: str) -> tuple[dict, str | None]:
    """The coefficients stored in RUN_DIR/best.json, and the space the run searched (None: not recorded)."""
    from scalesearch.outputs.runs import BEST, recorded_space

    path = Path(run_dir) / BEST
    if not path.is_file():
        raise UserError(f"{path} not found: is {run_dir!r} a finished search run?")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
        coefficients = {key: float(best[key]) for key in ("alpha", "beta", "gamma")}
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a scalesearch best.json ({error})") from None
    return coefficients, recorded_space(best)


def run(args: argparse.Namespace) -> int:
    from scalesearch.config.spaces import DEFAULT_SPACE, load_space
    from scalesearch.core.atomic import write_or_print
    from scalesearch.core.scaling import Coefficients, parse_phis
    from scalesearch.outputs.family_table import family_table, render_family

    if args.num_classes < 1 or args.in_channels < 1:
        raise UserError("--num-classes and --in-channels must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    phis = parse_phis(args.phis)
    given = [args.alpha, args.beta, args.gamma]
    space_name = args.space
    coefficients: Coefficients | None
    if args.reference:
        if any(v is not None for v in given):
            raise UserError("--reference takes no --alpha/--beta/--gamma")
        coefficients = None
    elif args.run_dir:
        if any(v is not None for v in given):
            raise UserError("--from takes no --alpha/--beta/--gamma")
        values, run_space = read_best(args.run_dir)
        coefficients = Coefficients(**values)
        space_name = space_name or run_space
    elif all(v is not None for v in given):
        coefficients = Coefficients(args.alpha, args.beta, args.gamma)
    else:
        raise UserError("give --alpha, --beta and --gamma, or --reference, or --from RUN_DIR")
    space = load_space(space_name or DEFAULT_SPACE)

    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(phis), desc="measuring variants", unit="variant", file=sys.stderr, leave=False)
    try:
        # A user's model may print while it is measured: stdout carries the table or JSON alone.
        with contextlib.redirect_stdout(sys.stderr):
            family = family_table(
                space,
                coefficients,
                phis,
                num_classes=args.num_classes,
                in_channels=args.in_channels,
                on_variant=(lambda _row: progress.update(1)) if progress else None,
                costs=args.costs,
                threads=args.threads,
                calibrated=not args.pure_rule,
            )
    finally:
        if progress is not None:
            progress.close()
    text = render_family(family, args.format)
    write_or_print(text, args.out)
    return 0

"""`scalesearch search`: find (alpha, beta, gamma) on a dataset by training proxies on Ray Tune."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from scalesearch.config.recipe import recipe_with_overrides
from scalesearch.core.errors import UserError

# Flags that override the space's `search:` section; None means "not given on the command line".
OVERRIDABLE = (
    "dataset",
    "sampler",
    "trials",
    "epochs",
    "scheduler",
    "concurrency",
    "cpus_per_trial",
    "gpus_per_trial",
    "seed",
    "max_failures",
    "constraint",
    "objective",
    "confirm_top",
    "confirm_seeds",
    "base_resolution",
)
SEARCH_KEYS = {*OVERRIDABLE, "phi", "batch"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search",
        help="search alpha, beta, gamma on a dataset (Ray Tune + Optuna)",
        description="Propose (alpha, beta, gamma) on the constraint surface, train a scaled proxy for each on "
        "DATASET in parallel on Ray, and write the chosen coefficients with a scaled B0..B7 family. "
        "Defaults come from the space's `search:` section; flags override them.",
    )
    parser.add_argument("--space", default="efficientnet_b0", help="search-space YAML or shipped name")
    parser.add_argument("--dataset", default=None, help="dataset spec: digits (default), synthetic, a folder, npz:PATH")
    parser.add_argument("--sampler", default=None, help="grid | tpe (default) | gp | random")
    parser.add_argument("--trials", type=int, default=None, help="proposals to make (grid: lattice points at most)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per proxy")
    parser.add_argument("--scheduler", default=None, help="none | asha (stop weak trials early)")
    parser.add_argument("--concurrency", type=int, default=None, help="trials at once")
    parser.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs (and torch threads) per trial")
    parser.add_argument("--gpus-per-trial", type=float, default=None, help="GPU fraction per trial, e.g. 0.25")
    parser.add_argument("--seed", type=int, default=None, help="seed of proposals and training")
    parser.add_argument("--address", default=None, help="join a Ray cluster (or set RAY_ADDRESS)")
    parser.add_argument("--out", default=None, help="run folder (default: results/runs/SPACE-DATASET-SAMPLER-TIME)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --out (or the newest match)")
    parser.add_argument("--max-failures", type=int, default=None, help="retries of a failed trial")
    parser.add_argument(
        "--base-resolution",
        default=None,
        metavar="PX|off",
        help="the resolution you deploy the target base (B0) at; the proxies see the data with the same "
        "headroom: resized to proxy_resolution x native / PX first (default: the space's search: "
        "base_resolution, else its base resolution; off: the stored images as they are)",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one field of the space's proxy recipe, e.g. --recipe init=zero (repeatable)",
    )
    parser.add_argument(
        "--constraint",
        default=None,
        help="the cost whose measured ratio to the proxy base must be target^phi: flops (default), latency, "
        "activations or params",
    )
    parser.add_argument(
        "--objective",
        default=None,
        help="accuracy (default), or accuracy,COST (e.g. accuracy,latency): a multi-objective search "
        "(accuracy up, COST down) whose trials.csv marks the Pareto front",
    )
    parser.add_argument(
        "--confirm-top",
        type=int,
        default=None,
        help="after the search, retrain the best N networks with more seeds (default 3; 0: off)",
    )
    parser.add_argument(
        "--confirm-seeds",
        type=int,
        default=None,
        help="seeds per confirmed network, the search's own included (default 3)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the realizable networks on the budget band and their coverage; train nothing",
    )
    parser.add_argument("--family-phis", default="0-7", help="variants of the output family (default 0-7)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--verbose", action="store_true", help="show Ray's and Optuna's own logs")
    output.add_argument("--quiet", action="store_true", help="print only the result")
    return parser


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(text).name or text)
    return keep.strip("-")[:40] or "data"


def _newest_match(prefix: str) -> Path | None:
    """The newest unfinished run folder named PREFIX-*, for --resume without --out."""
    root = Path("results/runs")
    candidates = sorted(
        (p for p in root.glob(f"{prefix}-*") if (p / "search.json").is_file() and not (p / "best.json").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return candidates[-1] if candidates else None


def settings_from_args(args: argparse.Namespace) -> Any:
    """Merge the space's `search:` defaults with the flags into SearchSettings."""
    from scalesearch.config.settings import SearchSettings, parse_base_resolution
    from scalesearch.config.spaces import load_space

    space = load_space(args.space)
    defaults = dict(space.search)
    unknown = set(defaults) - SEARCH_KEYS
    if unknown:
        raise UserError(f"{space.path}: unknown keys in 'search': {sorted(unknown)}")
    values: dict[str, Any] = {"dataset": "digits", **defaults}
    for key in OVERRIDABLE:
        given = getattr(args, key)
        if given is not None:
            values[key] = given
    # The space's base_resolution goes with its own dataset (planning.data_view decides); only the flag is a setting.
    values["base_resolution"] = parse_base_resolution(args.base_resolution)
    prefix = f"{space.name}-{_slug(values['dataset'])}-{values.get('sampler', 'tpe')}"
    out = args.out
    if out is None and args.resume:
        match = _newest_match(prefix)
        if match is None:
            raise UserError(f"nothing to resume: no unfinished run results/runs/{prefix}-*; pass --out")
        out = str(match)
    if out is None:
        out = f"results/runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    return SearchSettings(
        space_path=space.path,
        recipe=recipe_with_overrides(space.recipe, args.recipe),
        address=args.address,
        out=out,
        family_phis=args.family_phis,
        verbose=args.verbose,
        quiet=args.quiet,
        **values,
    )


def run(args: argparse.Namespace) -> int:
    from scalesearch.outputs.family_table import render_family
    from scalesearch.search.driver import run_search

    settings = settings_from_args(args)
    if args.dry_run:
        return dry_run(settings)
    command = shlex.join(["scalesearch", *sys.argv[1:]]) if sys.argv and "scalesearch" in sys.argv[0] else ""
    try:
        best = run_search(settings, resume=args.resume, command=command)
    except KeyboardInterrupt:
        print(
            f"scalesearch search: interrupted; finished trials are in {settings.out}/trials.csv. "
            f"Run the same command with --resume{'' if args.out else ' --out ' + settings.out} to continue.",
            file=sys.stderr,
        )
        return 130
    out = Path(settings.out)
    import json

    family = json.loads((out / "family.json").read_text(encoding="utf-8"))
    shares = best["shares"]
    print(
        f"chosen: alpha={best['alpha']:.4f} beta={best['beta']:.4f} gamma={best['gamma']:.4f} "
        f"(shares depth {shares['depth']:.2f} / width {shares['width']:.2f} / resolution {shares['resolution']:.2f}; "
        f"network {best['network']}, trained at {best['measured_ratio']:.3f}x the base FLOPs)"
    )
    print(f"  {best['verdict']}")
    if best.get("pareto_front"):
        cost = best["pareto_cost"]
        points = ", ".join(
            f"trial {p['trial']} ({p['final_val_accuracy']:.4f}, {cost} {p[cost]:.4g})" for p in best["pareto_front"]
        )
        print(f"Pareto front (accuracy up, {cost} down): {points}")
    if not settings.quiet:
        print()
        print(render_family(family, "table"), end="")
        print(f"\nrun folder: {out}  (trials.csv, best.json, family.json, family.md, frontier.png, manifest.json)")
    return 0


def dry_run(settings: Any) -> int:
    """Print the realizable networks on the budget band and how well they cover the simplex."""
    from scalesearch.config.spaces import load_space
    from scalesearch.data.datasets import load_dataset
    from scalesearch.planning.data_view import data_view
    from scalesearch.planning.planner import describe
    from scalesearch.search.driver import check_settings, say_view, search_set

    check_settings(settings)
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset)
    say_view(data_view(space, dataset.native_size, settings.base_resolution, dataset=settings.dataset), quiet=False)
    found = search_set(settings, space, dataset)
    rows = describe(found)
    columns = list(rows[0]) if rows else []
    print(
        f"{len(rows)} realizable networks of {space.name}'s proxy at phi={settings.phi:g}: "
        f"{settings.constraint} within {found.goal:g} ± {found.tolerance:.0%} of the base"
    )
    if rows:
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
        print("  ".join(c.rjust(widths[c]) for c in columns))
        for row in rows:
            print("  ".join(str(row[c]).rjust(widths[c]) for c in columns))
    print(f"coverage: every point of the shares simplex lies within {found.coverage:.3f} (L-inf) of a network")
    return 0

"""How often do FLOPs and measured latency rank model variants differently?

Kendall's τ between FLOPs (fvcore) and measured CPU latency (batch 1 and a throughput batch), and
between activations and latency, over four sets of variants:

1. `efficientnet-family`: EfficientNet B0..B3 (the paper's coefficients, 224-300 px). FLOPs grow
   2x per step, so any sane latency ranks them alike: the control.
2. `<space>-equal-flops`: the proxy of each space for the compound coefficients' shares and for the
   pure depth, width and resolution directions at φ = 1 and 2, each planned exactly as a search plans
   its trials: the realizable network (FLOPs within target^φ ± tolerance of the proxy base) nearest
   those shares (`planner`); `share_error` says how far it lies from them, and strategies that land on
   the same network share one row (named "a=b"). FLOPs are equal by construction within a φ; latency
   decides. Reported per φ, with the spread of latency (max / min) at equal FLOPs.
3. `<space>-simplex`: the nearest realizable networks to random points on the compute-share simplex
   at φ = 1: the networks a search trains.
4. `run:<dir>`: the trials of finished search runs whose trials.csv has latency columns (measured
   in the trial's worker while another trial trained beside it: a noisier clock than the rest).

Latency here: median of REPEATS forward passes after WARMUP, on one torch thread. Also measured: the
noise of a latency ratio (the proxy base timed against itself in alternation, as `--constraint
latency` does), as its spread over NOISE_ROUNDS rounds.

    .venv/bin/python benchmarks/flops_vs_latency.py --out results/open-questions [--runs RUN_DIR ...]

Writes variants.csv, kendall.csv, noise.csv and flops_vs_latency.png under --out, and prints them.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy.stats import kendalltau

from scalesearch.config.spaces import load_space
from scalesearch.core.atomic import atomic_write_text
from scalesearch.core.scaling import Coefficients, Shares
from scalesearch.models.cost import (
    count_flops,
    count_params,
    measure_activations,
    measure_latency,
    measure_latency_ratio,
)
from scalesearch.outputs.runs import BASELINES
from scalesearch.planning.planner import realizable_set, requested_shares, share_error
from scalesearch.validation.validate import baseline_shares

WARMUP, REPEATS = 3, 15
THROUGHPUT_BATCH = 8
NOISE_ROUNDS = 10
PAPER = Coefficients(1.2, 1.1, 1.15)


def measure(model: torch.nn.Module, resolution: int, in_channels: int, repeats: int = REPEATS) -> dict[str, float]:
    """FLOPs, params, activations and the two latencies of one model."""
    image: dict[str, Any] = {"resolution": resolution, "in_channels": in_channels}
    flops, _ = count_flops(model, **image)
    return {
        "flops": flops,
        "params": count_params(model),
        "activations": measure_activations(model, **image),
        "latency_batch1_s": measure_latency(model, **image, batch_size=1, warmup=WARMUP, repeats=repeats),
        "latency_throughput_s": measure_latency(
            model, **image, batch_size=THROUGHPUT_BATCH, warmup=WARMUP, repeats=max(3, repeats // 3)
        ),
    }


def family_set() -> list[dict]:
    space = load_space("efficientnet_b0")
    rows = []
    for phi in range(4):
        spec = space.scaled_spec(PAPER, phi, num_classes=1000, in_channels=3)
        model = space.family.build(spec)
        rows.append({"set": "efficientnet-family", "name": f"B{phi}", "phi": phi,
                     **measure(model, spec.resolution, 3, repeats=5)})  # fmt: skip
        print(f"  B{phi} done", file=sys.stderr)
    return rows


def proxy_sets(space_name: str, coefficients: Coefficients, simplex_points: int, seed: int) -> list[dict]:
    """The nearest realizable networks to compound's and the pure directions' shares at φ = 1, 2, and
    to random simplex points at φ = 1."""
    space = load_space(space_name)
    strategies = [("compound", requested_shares(coefficients, space.target))]
    strategies += [(name, baseline_shares(name)) for name in BASELINES]
    rng = random.Random(seed)
    for index in range(simplex_points):
        cuts = sorted(rng.random() for _ in range(2))
        strategies.append((f"simplex-{index}", Shares(cuts[0], cuts[1] - cuts[0], 1.0 - cuts[1])))
    rows: list[dict] = []
    for phi in (1.0, 2.0):
        found = realizable_set(space, num_classes=10, in_channels=1, phi=phi)
        if not found.networks:
            print(f"  {space_name}: no realizable network at phi {phi:g}; skipped", file=sys.stderr)
            continue
        seen: dict[tuple[str, str], dict] = {}
        for name, shares in strategies:
            if name.startswith("simplex") and phi != 1.0:
                continue
            kind = "simplex" if name.startswith("simplex") else "equal-flops"
            network = found.nearest(shares)
            if (kind, network.key) in seen:  # one network measured once; its row names every strategy
                seen[(kind, network.key)]["name"] += f"={name}"
                continue
            spec = network.spec
            realized = network.shares
            row = {"set": f"{space_name}-{kind}", "name": name, "phi": phi, "network": network.key,
                   "share_depth": realized.depth, "share_width": realized.width,
                   "share_resolution": realized.resolution, "share_error": share_error(shares, network),
                   "resolution": spec.resolution, "width_mult": round(spec.width_mult, 4),
                   "depth_mult": round(spec.depth_mult, 4),
                   **measure(space.proxy_family.build(spec), spec.resolution, 1)}  # fmt: skip
            seen[(kind, network.key)] = row
            rows.append(row)
    return rows


def run_set(run_dir: str) -> list[dict]:
    trials = pd.read_csv(Path(run_dir) / "trials.csv")
    if "latency_batch1_s" not in trials.columns:
        print(f"  {run_dir}: no latency columns (made before they existed); skipped", file=sys.stderr)
        return []
    trained = trials.dropna(subset=["latency_batch1_s"])
    return [
        {"set": f"run:{Path(run_dir).name}", "name": f"trial {int(r.trial)}", "phi": 1.0,
         "network": getattr(r, "network", None), "resolution": r.resolution,
         "width_mult": r.width_mult, "depth_mult": r.depth_mult, "flops": r.flops, "params": r.params,
         "activations": r.activations, "latency_batch1_s": r.latency_batch1_s,
         "latency_throughput_s": r.latency_throughput_s}
        for r in trained.itertuples()
    ]  # fmt: skip


def kendall(variants: pd.DataFrame) -> pd.DataFrame:
    """τ of (FLOPs, activations, params) against both latencies, per set and per (set, φ)."""
    groups = [(s, None, g) for s, g in variants.groupby("set", sort=False)]
    groups += [(s, phi, g) for (s, phi), g in variants.groupby(["set", "phi"], sort=False)
               if s.endswith("equal-flops")]  # fmt: skip
    rows = []
    for name, phi, group in groups:
        for x in ("flops", "activations", "params"):
            for y in ("latency_batch1_s", "latency_throughput_s"):
                tau, p = kendalltau(group[x], group[y]) if len(group) > 2 else (math.nan, math.nan)
                rows.append({"set": name, "phi": "all" if phi is None else phi, "n": len(group), "x": x, "y": y,
                             "tau": round(float(tau), 3), "p": round(float(p), 4),
                             "flops_spread": round(group["flops"].max() / group["flops"].min(), 3),
                             "latency_spread": round(group[y].max() / group[y].min(), 3)})  # fmt: skip
    return pd.DataFrame(rows)


def noise(space_name: str) -> dict:
    """Spread of the base-vs-base latency ratio, as `--constraint latency` measures it."""
    space = load_space(space_name)
    base = space.scaled_proxy(Coefficients(1.0, 1.0, 1.0), 0.0, num_classes=10, in_channels=1)
    model, again = space.proxy_family.build(base), space.proxy_family.build(base)
    ratios = [
        measure_latency_ratio(model, again, resolutions=(base.resolution, base.resolution), in_channels=1,
                              threads=1, warmup=WARMUP, repeats=REPEATS)
        for _ in range(NOISE_ROUNDS)
    ]  # fmt: skip
    return {
        "space": space_name,
        "rounds": NOISE_ROUNDS,
        "repeats": REPEATS,
        "median": round(statistics.median(ratios), 4),
        "stdev": round(statistics.stdev(ratios), 4),
        "min": round(min(ratios), 4),
        "max": round(max(ratios), 4),
        "within_5pct": sum(abs(r - 1) <= 0.05 for r in ratios),
    }


def plot(variants: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(variants["set"]))
    columns = 3
    rows = math.ceil(len(sets) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(sets) :]:
        axis.set_axis_off()
    for axis, name in zip(axes.flat, sets, strict=False):
        group = variants[variants["set"] == name]
        for phi, part in group.groupby("phi"):
            axis.scatter(part["flops"] / 1e6, part["latency_batch1_s"] * 1e3, label=f"φ={phi:g}", alpha=0.8)
            if name.endswith("equal-flops"):
                for row in part.itertuples():
                    axis.annotate(row.name, (row.flops / 1e6, row.latency_batch1_s * 1e3), fontsize=7)
        # Log axes only where values span a wide range (log ticks over a 5% range are unreadable).
        if group["flops"].max() / group["flops"].min() > 3:
            axis.set_xscale("log")
        if group["latency_batch1_s"].max() / group["latency_batch1_s"].min() > 3:
            axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("MFLOPs (fvcore)")
        axis.set_ylabel("latency, batch 1, ms (1 thread)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/open-questions")
    parser.add_argument("--runs", nargs="*", default=[], help="search run folders whose trials to rank")
    parser.add_argument("--simplex-points", type=int, default=10)
    parser.add_argument("--skip-family", action="store_true", help="leave out EfficientNet B0..B3 (slowest part)")
    parser.add_argument("--spaces", default="efficientnet_b0,vit_tiny", help="proxy spaces to measure")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from --out's variants.csv")
    args = parser.parse_args()
    if args.replot:
        plot(pd.read_csv(Path(args.out) / "variants.csv"), Path(args.out) / "flops_vs_latency.png")
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    rows = [] if args.skip_family else family_set()
    spaces = [name.strip() for name in args.spaces.split(",") if name.strip()]
    for space_name in spaces:
        rows += proxy_sets(space_name, PAPER, args.simplex_points, seed=0)
        print(f"  {space_name} proxies done", file=sys.stderr)
    for run_dir in args.runs:
        rows += run_set(run_dir)
    variants = pd.DataFrame(rows)
    taus = kendall(variants)
    noises = pd.DataFrame([noise(name) for name in spaces])
    atomic_write_text(out / "variants.csv", variants.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "kendall.csv", taus.to_csv(index=False))
    atomic_write_text(out / "noise.csv", noises.to_csv(index=False))
    plot(variants, out / "flops_vs_latency.png")
    pd.set_option("display.width", 200)
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(taus[(taus["x"] != "params")].to_string(index=False))
    print(noises.to_string(index=False))
    print(f"{time.monotonic() - start:.0f} s; wrote {out}/variants.csv, kendall.csv, noise.csv, flops_vs_latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

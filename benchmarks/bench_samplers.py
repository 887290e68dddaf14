"""Sampler efficiency on a known response surface: how close each sampler's pick lands to a known optimum.

No training: each trial "scores" a point s of the shares simplex with a test objective

    accuracy(s) = a_max − k·‖s − s*‖² + h·exp(−‖s − s₂‖² / (2σ²)) + noise,   noise ~ N(0, σ_noise²)

(a quadratic bowl around the optimum s*, a mild second bump at s₂, whose local peak stays below the
optimum, and Gaussian seed noise of σ_noise = 0.0075 by default: the seed-to-seed spread of proxy
accuracy on digits is about 0.005-0.01). Three optima: corner-ish (0.1, 0.1, 0.8), the paper's
(0.26, 0.28, 0.46) and a depth-heavy interior one (0.5, 0.3, 0.2).

The round loop is the search's (`scalesearch.search.rounds.SearchState`): propose a round of `--batch`
points with `make_proposer(sampler, seed=, trials=N, grid_points=)`, snap each proposal to the
nearest point of the "realizable set" (here `simplex_lattice(--lattice)`, nearest by L∞ then L2, as
`RealizableSet.nearest`), score it, and once the round is complete tell every trial's realized point
and [value]. The grid walks the first N lattice points in farthest-point order from the corners (as
`RealizableSet.spread(N)`). After N trials the pick is

- best obs: the trial with the best single observed value;
- best mean: the realized point with the best mean over its trials (as `confirm.scores` ranks the
  search's networks before the confirm stage; differs only when a point was proposed twice or more).

Reported per sampler and N, over seeds × optima: the mean and 90th percentile of the L∞ distance
(`share_distance`) of the pick from the true optimum (the argmax of the noise-free surface on a
fine lattice), the regret (noise-free value at the optimum minus at the pick), and the mean number
of distinct points trained. A reference row `all` scores every lattice point once and picks the
best observation: the noise floor of one evaluation per point.

    .venv/bin/python benchmarks/bench_samplers.py               # 10 seeds: about 2.5 minutes on one busy core
    .venv/bin/python benchmarks/bench_samplers.py --seeds 30    # the README's figures: about 6 minutes
    .venv/bin/python benchmarks/bench_samplers.py --noise 0 --samplers tpe,gp --trials 8,16 --gp-trials 8

Deterministic given its options and the proposer's code (proposer seed = run seed; the noise stream is
seeded by run seed and optimum, the same for every sampler); the last line names the commit. Optuna's
GP sampler refits a Gaussian process every round, about 0.5-2.3 s per search of 8-32 trials on one core,
most of the run's time: `--gp-trials` limits its budgets (default: those of `--trials`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # single-threaded: GPSampler fits with torch
os.environ.setdefault("MKL_NUM_THREADS", "1")

from scalesearch.core.scaling import Shares, share_distance, simplex_lattice
from scalesearch.search.proposals import make_proposer

SAMPLER_ORDER = ("grid", "random", "tpe", "gp")


@dataclass(frozen=True)
class Surface:
    """The noise-free test objective: a bowl around `optimum` plus a mild bump at `bump`."""

    name: str
    optimum: Shares
    bump: Shares
    a_max: float = 0.98
    curvature: float = 0.1  # k: 0.1 costs 0.025 at Euclidean distance 0.5
    bump_height: float = 0.02
    bump_width: float = 0.08

    def value(self, s: Shares) -> float:
        return (
            self.a_max
            - self.curvature * squared(s, self.optimum)
            + self.bump_height * math.exp(-squared(s, self.bump) / (2.0 * self.bump_width**2))
        )


def squared(a: Shares, b: Shares) -> float:
    return (a.depth - b.depth) ** 2 + (a.width - b.width) ** 2 + (a.resolution - b.resolution) ** 2


def surfaces(curvature: float) -> list[Surface]:
    return [
        Surface("corner", Shares(0.1, 0.1, 0.8), Shares(0.4, 0.2, 0.4), curvature=curvature),
        Surface("paper", Shares(0.26, 0.28, 0.46), Shares(0.7, 0.1, 0.2), curvature=curvature),
        Surface("interior", Shares(0.5, 0.3, 0.2), Shares(0.1, 0.6, 0.3), curvature=curvature),
    ]


def local_maxima(surface: Surface, step: float) -> list[Shares]:
    """Points of the lattice of `step` that score at least as well as each of their lattice neighbours."""
    count = round(1.0 / step)
    values = {(i, j): surface.value(Shares(i / count, j / count, (count - i - j) / count))
              for i in range(count + 1) for j in range(count + 1 - i)}  # fmt: skip
    moves = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, -1), (-1, 1))
    return [
        Shares(i / count, j / count, (count - i - j) / count)
        for (i, j), value in values.items()
        if all(values.get((i + di, j + dj), -math.inf) <= value for di, dj in moves)
    ]


def spread(points: Sequence[Shares], count: int) -> list[Shares]:
    """`count` points spread evenly: the nearest to each corner, then farthest-point order (L∞),
    ties to the larger index, as `RealizableSet.spread` (whose key is the network's name)."""
    remaining = sorted(range(len(points)), key=lambda i: (points[i].depth, points[i].width, i))
    if count >= len(remaining):
        return [points[i] for i in remaining]
    chosen: list[int] = []
    for corner in (Shares(1, 0, 0), Shares(0, 1, 0), Shares(0, 0, 1)):
        if len(chosen) < count:
            best = min(remaining, key=lambda i: (share_distance(points[i], corner), i))
            chosen.append(best)
            remaining.remove(best)
    while len(chosen) < count and remaining:
        best = max(remaining, key=lambda i: (min(share_distance(points[i], points[c]) for c in chosen), i))
        chosen.append(best)
        remaining.remove(best)
    return [points[i] for i in chosen]


def nearest(points: Sequence[Shares], s: Shares) -> Shares:
    """The lattice point nearest `s`: L∞, then L2 (as `RealizableSet.nearest`)."""
    return min(points, key=lambda p: (share_distance(p, s), squared(p, s)))


@dataclass(frozen=True)
class Outcome:
    best_observed: Shares
    best_mean: Shares
    distinct: int


def pick(trials: Sequence[tuple[Shares, float]]) -> Outcome:
    best_observed = max(trials, key=lambda t: t[1])[0]  # first of equal values
    grouped: dict[Shares, list[float]] = {}
    for shares, value in trials:
        grouped.setdefault(shares, []).append(value)
    best_mean = max(grouped, key=lambda s: statistics.fmean(grouped[s]))
    return Outcome(best_observed, best_mean, len(grouped))


def run_search(
    sampler: str, trials: int, seed: int, surface: Surface, lattice: Sequence[Shares], noise: random.Random, args
) -> Outcome:
    """The search's round loop on the test surface."""
    proposer = make_proposer(sampler, seed=seed, trials=trials, grid_points=spread(lattice, trials))
    done: list[tuple[Shares, float]] = []
    for round_number in range(math.ceil(trials / args.batch)):
        count = min(args.batch, trials - len(done))
        scored = []
        for proposal in proposer.propose(round_number, count):
            realized = nearest(lattice, proposal)
            scored.append((realized, surface.value(realized) + noise.gauss(0.0, args.noise)))
        for realized, value in scored:  # the round is told once all its trials have finished
            proposer.tell(realized, [value])
        done.extend(scored)
    return pick(done)


def exhaustive(surface: Surface, lattice: Sequence[Shares], noise: random.Random, args) -> Outcome:
    """Every lattice point scored once."""
    return pick([(s, surface.value(s) + noise.gauss(0.0, args.noise)) for s in lattice])


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def source_version() -> str:
    """The commit of this checkout, and whether the proposer's code differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "scalesearch/proposals.py", "scalesearch/scaling.py"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"{commit} (proposals.py or scaling.py modified)" if changed else commit


def standard_error(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


class GreenletNote(logging.Filter):
    """Drops Optuna's one-off note that greenlet is missing (sequential L-BFGS-B, same results)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "greenlet" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per optimum (default 10)")
    parser.add_argument("--trials", default="8,16,32", help="budgets N (default 8,16,32)")
    parser.add_argument("--gp-trials", default="", help="budgets N for gp, which is slow (default: --trials)")
    parser.add_argument("--samplers", default=",".join(SAMPLER_ORDER), help="default grid,random,tpe,gp")
    parser.add_argument("--noise", type=float, default=0.0075, help="std of the Gaussian noise (default 0.0075)")
    parser.add_argument("--curvature", type=float, default=0.1, help="k of the bowl (default 0.1)")
    parser.add_argument("--lattice", type=float, default=0.05, help="step of the realizable set (default 0.05)")
    parser.add_argument("--batch", type=int, default=4, help="trials per round (default 4)")
    args = parser.parse_args(argv)
    budgets = [int(t) for t in args.trials.split(",") if t.strip()]
    gp_budgets = [int(t) for t in args.gp_trials.split(",") if t.strip()] or budgets
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    import optuna

    optuna.logging.get_logger("optuna")  # installs Optuna's handler, to which the filter goes
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(GreenletNote())
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    lattice = simplex_lattice(args.lattice)
    fine = simplex_lattice(0.005)
    tests = surfaces(args.curvature)
    truth = {}
    print(
        f"surface: {tests[0].a_max:g} - {args.curvature:g}·|s - s*|² + {tests[0].bump_height:g}·bump "
        f"(σ {tests[0].bump_width:g}), noise σ {args.noise:g}; realizable set: lattice step {args.lattice:g} "
        f"({len(lattice)} points); rounds of {args.batch}; {args.seeds} seeds x {len(tests)} optima"
    )
    for surface in tests:
        best = max(fine, key=surface.value)
        truth[surface.name] = (best, surface.value(best))
        others = [s for s in local_maxima(surface, 0.005) if s != best]
        second = (
            "; other local maxima: "
            + ", ".join(f"{surface.value(s):.4f} at ({s.depth:.2f}, {s.width:.2f}, {s.resolution:.2f})" for s in others)
            if others
            else "; no other local maximum (the bump is a shoulder)"
        )
        print(
            f"  {surface.name:9s} optimum {surface.value(best):.4f} at ({best.depth:.3f}, {best.width:.3f}, "
            f"{best.resolution:.3f}){second}; best lattice point {max(surface.value(s) for s in lattice):.4f}"
        )
    print()

    cells: list[tuple[str, int]] = [("all", len(lattice))]
    for sampler in samplers:
        for budget in gp_budgets if sampler == "gp" else budgets:
            cells.append((sampler, budget))
    header = (
        f"{'sampler':8s} {'N':>4s} | {'best obs: L∞ mean ± se':>22s} {'p90':>6s} {'regret mean':>11s} {'p90':>7s} | "
        f"{'best mean: L∞':>13s} {'regret':>7s} | {'distinct':>8s} | "
        + " ".join(f"{s.name[:8]:>8s}" for s in tests)
        + f" | {'seconds':>7s}"
    )
    print("L∞ distance of the pick from the true optimum (± its standard error) and regret (noise-free), over")
    print("seeds x optima;")
    print("last columns: mean L∞ of the best-obs pick per optimum")
    print(header)
    print("-" * len(header))
    total_start = time.perf_counter()
    for sampler, budget in cells:
        start = time.perf_counter()
        distance: dict[str, list[float]] = {"obs": [], "mean": []}
        regret: dict[str, list[float]] = {"obs": [], "mean": []}
        per_optimum: dict[str, list[float]] = {s.name: [] for s in tests}
        distinct = []
        for index, surface in enumerate(tests):
            optimum, top = truth[surface.name]
            for seed in range(args.seeds):
                noise = random.Random(seed * 1000 + index)
                if sampler == "all":
                    outcome = exhaustive(surface, lattice, noise, args)
                else:
                    outcome = run_search(sampler, budget, seed, surface, lattice, noise, args)
                for key, chosen in (("obs", outcome.best_observed), ("mean", outcome.best_mean)):
                    distance[key].append(share_distance(chosen, optimum))
                    regret[key].append(top - surface.value(chosen))
                per_optimum[surface.name].append(distance["obs"][-1])
                distinct.append(outcome.distinct)
        print(
            f"{sampler:8s} {budget:4d} | {statistics.fmean(distance['obs']):14.3f} ± "
            f"{standard_error(distance['obs']):.3f} "
            f"{quantile(distance['obs'], 0.9):6.3f} {statistics.fmean(regret['obs']):11.4f} "
            f"{quantile(regret['obs'], 0.9):7.4f} | {statistics.fmean(distance['mean']):13.3f} "
            f"{statistics.fmean(regret['mean']):7.4f} | {statistics.fmean(distinct):8.1f} | "
            + " ".join(f"{statistics.fmean(per_optimum[s.name]):8.3f}" for s in tests)
            + f" | {time.perf_counter() - start:7.1f}",
            flush=True,
        )
    print(
        f"\ntotal {time.perf_counter() - total_start:.0f} s; python {sys.version.split()[0]}, optuna "
        f"{optuna.__version__}, {os.cpu_count()} CPUs; scalesearch {source_version()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

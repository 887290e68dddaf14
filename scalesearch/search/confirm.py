"""The confirm stage and the noise-aware choice.

One training run of a proxy is a noisy measurement (on digits, the same network scores 0.972 or
0.983 depending on the seed, or on the machine). So after the search the best few networks are
retrained with more seeds, the chosen network is the best *mean*, and every confirmed network whose
mean is not significantly below it (a pooled two-sample t-test at 95%, the seed spread pooled over
the confirmed networks) is reported as tied: the tie region on the shares simplex. When the region
holds more than the chosen network, the data cannot tell them apart, and the output says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The significance level of "not tied".
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Score:
    """One network's completed trials: its accuracies over seeds and what it is."""

    network: str
    trials: tuple[int, ...]
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    shares: tuple[float, float, float]  # realized (depth, width, resolution)
    flops: int

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None with one seed."""
        return statistics.stdev(self.accuracies) if self.n > 1 else None


def scores(rows: Mapping[int, Mapping[str, Any]], *, cost: str = "flops") -> list[Score]:
    """One Score per network with at least one completed trial, best mean first (then the lower
    `cost` column, FLOPs by default, then the network's key, so the order never depends on
    floating-point noise alone; a multi-objective search breaks ties on its own cost)."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for number in sorted(rows):
        row = rows[number]
        key = (str(row["network"]), int(row["seed"]))
        # A (network, seed) pair is one measurement, however often it appears (the first counts).
        if row.get("status") == "completed" and row.get("final_val_accuracy") is not None and key not in seen:
            seen.add(key)
            grouped.setdefault(str(row["network"]), []).append(row)
    found = []
    for network, members in grouped.items():
        first = members[0]
        found.append(
            Score(
                network=network,
                trials=tuple(int(r["trial"]) for r in members),
                seeds=tuple(int(r["seed"]) for r in members),
                accuracies=tuple(float(r["final_val_accuracy"]) for r in members),
                shares=(
                    float(first["realized_share_depth"]),
                    float(first["realized_share_width"]),
                    float(first["realized_share_resolution"]),
                ),
                flops=int(first["flops"]),
            )
        )
    cost_of = {str(r["network"]): float(r.get(cost) or 0.0) for r in rows.values() if r.get("network")}
    found.sort(key=lambda s: (-s.mean, cost_of.get(s.network, 0.0), s.flops, s.network))
    return found


def plan(rows: Mapping[int, Mapping[str, Any]], *, top: int, seeds: int, base_seed: int) -> list[tuple[str, int]]:
    """(network, seed) pairs the confirm stage trains so that each of the `top` best networks of the
    search has `seeds` completed seeds: the smallest seeds from `base_seed` up it has not used yet."""
    search_rows = {n: r for n, r in rows.items() if r.get("stage") == "search"}
    chosen = scores(search_rows)[:top]
    used: dict[str, set[int]] = {}
    for row in rows.values():
        used.setdefault(str(row["network"]), set()).add(int(row["seed"]))
    completed = {s.network: s.n for s in scores(rows)}
    jobs = []
    for score in chosen:
        missing = seeds - completed.get(score.network, 0)
        seed = base_seed
        while missing > 0:
            if seed not in used[score.network]:
                jobs.append((score.network, seed))
                used[score.network].add(seed)
                missing -= 1
            seed += 1
    return jobs


@dataclass(frozen=True)
class Decision:
    """The chosen network, the confirmed ones with their spread, and which are tied with it."""

    chosen: Score
    confirmed: tuple[Score, ...]  # the networks the choice was made among
    tied: tuple[str, ...]  # networks statistically indistinguishable from the chosen one (itself included)
    pooled_std: float | None  # the seed spread pooled over the confirmed networks
    margin: dict[str, float | None]  # per network: the smallest difference the test could detect
    by_confirm: bool = True  # made among the confirm stage's networks (False: among every trained one)

    @property
    def distinguishable(self) -> bool:
        return len(self.tied) == 1 and self.pooled_std is not None


def decide(
    rows: Mapping[int, Mapping[str, Any]], *, confirmed: Sequence[str] = (), cost: str = "flops"
) -> Decision | None:
    """The best mean among `confirmed` networks (all completed networks when none were confirmed),
    and the tie region around it. None when nothing completed."""
    ranked = scores(rows, cost=cost)
    if not ranked:
        return None
    retrained = [s for s in ranked if s.network in set(confirmed)]
    pool = retrained or ranked
    chosen = pool[0]
    spread = [(s.n - 1, s.std) for s in pool if s.std is not None]
    freedom = sum(df for df, _ in spread)
    pooled = math.sqrt(sum(df * std**2 for df, std in spread if std is not None) / freedom) if freedom else None
    tied = []
    margins: dict[str, float | None] = {}
    for score in pool:
        if pooled is None:
            margins[score.network] = None
            if score.network == chosen.network or score.mean == chosen.mean:
                tied.append(score.network)
            continue
        margin = _t_quantile(freedom) * pooled * math.sqrt(1 / score.n + 1 / chosen.n)
        margins[score.network] = margin
        if chosen.mean - score.mean <= margin:
            tied.append(score.network)
    return Decision(chosen, tuple(pool), tuple(tied), pooled, margins, by_confirm=bool(retrained))


def _t_quantile(freedom: int) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with `freedom` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, freedom))


def summary(decision: Decision) -> dict[str, Any]:
    """best.json's view of the decision: each confirmed network's mean ± spread and tie flag, and the
    tie region's extent on the simplex."""
    tied = [s for s in decision.confirmed if s.network in decision.tied]
    region = {
        name: [min(s.shares[i] for s in tied), max(s.shares[i] for s in tied)]
        for i, name in enumerate(("depth", "width", "resolution"))
    }
    return {
        "confidence": CONFIDENCE,
        "pooled_std": decision.pooled_std,
        "distinguishable": decision.distinguishable,
        "tie_region": region,
        "candidates": [
            {
                "network": s.network,
                "trials": list(s.trials),
                "seeds": list(s.seeds),
                "accuracies": list(s.accuracies),
                "n": s.n,
                "mean": s.mean,
                "std": s.std,
                "share_depth": s.shares[0],
                "share_width": s.shares[1],
                "share_resolution": s.shares[2],
                "flops": s.flops,
                "tied": s.network in decision.tied,
                "margin": decision.margin.get(s.network),
            }
            for s in decision.confirmed
        ],
    }


def verdict_line(decision: Decision) -> str:
    """One plain sentence on how sure the choice is."""
    chosen = decision.chosen
    spread = f" ± {chosen.std:.4f}" if chosen.std is not None else ""
    head = f"mean val accuracy {chosen.mean:.4f}{spread} over {chosen.n} seed(s)"
    among = "confirmed network" if decision.by_confirm else "trained network"
    if decision.pooled_std is None:
        why = "one seed per network" if decision.by_confirm else "confirm stage off"
        return f"{head}; no seed spread was measured, so how sure this choice is is unknown ({why})"
    if decision.distinguishable:
        return f"{head}; it beats every other {among} beyond the seed spread"
    others = len(decision.tied) - 1
    return (
        f"{head}; the data cannot tell it apart from {others} other {among}(s) "
        f"(tie region in best.json): any of them is as good a choice on this evidence"
    )

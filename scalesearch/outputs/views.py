"""A search run read as the tables its views draw (tests check these tables, not pixels).

- `read_view`: a run folder (finished, or still searching) as typed trial rows and best.json.
- `search_view`: the shares simplex: each network at its realized shares with its accuracy, the
  requested shares it was mapped from, the confirmed candidates with mean ± std, the tie region.
- `budget_band`, `budget_strip`, `strip_title`: a search trains on one budget band only, so its
  trials form a strip at one budget, not a frontier across budgets.
- `pareto_front`, `front_rows`: the accuracy-vs-cost front of a multi-objective run.

Runs are read only through `scalesearch.outputs.runs`; cost names, columns and axis labels come from
`scalesearch.models.cost.COSTS` (imported inside the functions, so importing this module stays cheap).
`scalesearch.outputs.plots` draws these tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from scalesearch.core.errors import UserError
from scalesearch.outputs import runs

if TYPE_CHECKING:
    from scalesearch.models.cost import CostKind

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

DIMENSIONS = ("depth", "width", "resolution")
# Corners of the shares simplex in the plane: depth at the left, width at the right, resolution on top.
SQRT3_2 = math.sqrt(3.0) / 2.0


# --------------------------------------------------------------------------------------------------
# Reading runs (through scalesearch.outputs.runs)


@dataclass(frozen=True)
class RunView:
    """A run folder as the views read it: finished (best.json) or still searching (best = {})."""

    path: Path
    best: dict[str, Any]  # best.json, {} while the search runs
    trials: pd.DataFrame  # trials.csv's typed rows, one per trial

    @property
    def name(self) -> str:
        return self.path.name


def trials_frame(rows: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """Typed trial rows (`runs.read_trials`, `Run.trials()`) as a DataFrame sorted by trial, with
    every trials.csv column present (NaN where a row has no value) and numbers as numbers."""
    records = [dict(rows[number]) for number in sorted(rows)]
    columns = list(runs.TRIAL_COLUMNS) + sorted({k for r in records for k in r} - set(runs.TRIAL_COLUMNS))
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in frame.columns:
        if column not in runs.TEXT_COLUMNS | runs.BOOL_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def read_view(run_dir: str | os.PathLike[str]) -> RunView:
    """RUN_DIR through `scalesearch.outputs.runs`: a finished run (`read_run`), or one still searching (its
    trials.csv alone). UserError when the folder is missing or holds no search."""
    path = Path(run_dir)
    if (path / runs.BEST).is_file():
        run = runs.read_run(path)
        return RunView(path=path, best=run.best, trials=trials_frame(run.trials()))
    if not path.is_dir():
        runs.read_run(path)  # raises the one-line "not found" / "not a folder"
    if not (path / runs.TRIALS).is_file():
        raise UserError(f"{str(run_dir)!r} has no {runs.TRIALS}: is it a search run?")
    return RunView(path=path, best={}, trials=trials_frame(runs.read_trials(path / runs.TRIALS, report=False)))


def chosen_network(view: RunView) -> str | None:
    """The network best.json chose (older runs name its trial instead); None while searching."""
    if view.best.get("network"):
        return str(view.best["network"])
    trial = view.best.get("trial")
    match = view.trials[view.trials["trial"] == trial] if trial is not None else view.trials.iloc[:0]
    return str(match["network"].iloc[0]) if len(match) and isinstance(match["network"].iloc[0], str) else None


def cost_by_column(column: str) -> CostKind | None:
    """The registered cost whose trials.csv column is `column`."""
    from scalesearch.models.cost import COSTS

    return next((kind for kind in COSTS.values() if kind.column == column), None)


def cost_word(name: str) -> str:
    """A cost's name (cost.COSTS) as a sentence says it: 'FLOPs', 'params', 'latency'."""
    return "FLOPs" if name == "flops" else name


# --------------------------------------------------------------------------------------------------
# The shares simplex


def to_simplex(depth: Any, width: Any, resolution: Any) -> tuple[Any, Any]:
    """Shares (scalars or Series) to the plane: depth at (0, 0), width at (1, 0), resolution at
    (1/2, √3/2). Shares are renormalised to sum to 1 first."""
    total = depth + width + resolution
    return (width + 0.5 * resolution) / total, SQRT3_2 * resolution / total


def share_columns(trials: pd.DataFrame) -> tuple[str, str, str]:
    """The realized-share columns of a trials table (`realized_share_*`; older runs: `share_*`)."""
    for prefix in ("realized_share_", "share_"):
        names = tuple(f"{prefix}{d}" for d in DIMENSIONS)
        if set(names) <= set(trials.columns) and trials[list(names)].notna().any().any():
            return names  # type: ignore[return-value]
    return tuple(f"realized_share_{d}" for d in DIMENSIONS)  # type: ignore[return-value]


def simplex_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials placed on the shares simplex at their realized shares: trial, status, stage, network,
    share_depth / share_width / share_resolution (renormalised to sum to 1), x, y, final_val_accuracy.
    Rows without shares are left out."""
    columns = share_columns(trials)
    shares = trials[list(columns)].astype(float) if set(columns) <= set(trials.columns) else None
    if shares is None or trials.empty:
        return pd.DataFrame(columns=["trial", "status", "stage", "network", "share_depth", "share_width",
                                     "share_resolution", "x", "y", "final_val_accuracy"])  # fmt: skip
    total = shares.sum(axis=1).where(lambda t: t > 0)
    depth, width, resolution = (shares[c] / total for c in columns)
    x, y = to_simplex(depth, width, resolution)
    return pd.DataFrame(
        {
            "trial": trials["trial"],
            "status": trials["status"],
            "stage": trials.get("stage", "search"),
            "network": trials["network"] if "network" in trials else trials["trial"].astype(str),
            "share_depth": depth,
            "share_width": width,
            "share_resolution": resolution,
            "x": x,
            "y": y,
            "final_val_accuracy": trials["final_val_accuracy"],
        }
    ).dropna(subset=["x", "y"])


def convex_hull(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The convex hull of points, counter-clockwise from the lowest-left one (Andrew's monotone
    chain); one or two points come back as they are (a point, a segment)."""
    unique = sorted(set(points))
    if len(unique) <= 2:
        return unique

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for chain, ordered in ((lower, unique), (upper, unique[::-1])):
        for point in ordered:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], point) <= 0:
                chain.pop()
            chain.append(point)
    return lower[:-1] + upper[:-1]


class SearchView(NamedTuple):
    """What search.png draws for one run, as tables on the simplex (x, y as `to_simplex`)."""

    networks: pd.DataFrame  # one row per trained network at its realized shares
    requests: pd.DataFrame  # one row per search trial: requested shares → the network trained
    candidates: pd.DataFrame  # best.json's confirmed candidates: mean ± std, tied, chosen
    tie_region: pd.DataFrame  # the hull of the tied candidates (x, y in drawing order)


NETWORK_COLUMNS = ["network", "share_depth", "share_width", "share_resolution", "x", "y", "trials", "completed",
                   "accuracy", "status", "chosen", "confirmed"]  # fmt: skip
REQUEST_COLUMNS = ["trial", "network", "requested_depth", "requested_width", "requested_resolution", "share_error",
                   "x_requested", "y_requested", "x", "y"]  # fmt: skip
CANDIDATE_COLUMNS = ["network", "x", "y", "n", "seeds", "mean", "std", "tied", "chosen", "label"]


def _network_rows(points: pd.DataFrame, chosen: str | None, confirmed: set[str]) -> pd.DataFrame:
    """One row per network: where it sits, how often it was trained, its accuracy.

    The accuracy is the mean final accuracy of its completed trials; a network ASHA stopped in every
    trial shows the mean of those shorter runs (status "stopped"), a failed one none.
    """
    rows = []
    for network, group in points.groupby("network", sort=False):
        completed = group[(group["status"] == "completed") & group["final_val_accuracy"].notna()]
        stopped = group[(group["status"] == "stopped") & group["final_val_accuracy"].notna()]
        measured = completed if len(completed) else stopped
        first = group.iloc[0]
        rows.append(
            {
                "network": network,
                **{f"share_{d}": float(first[f"share_{d}"]) for d in DIMENSIONS},
                "x": float(first["x"]),
                "y": float(first["y"]),
                "trials": len(group),
                "completed": len(completed),
                "accuracy": float(measured["final_val_accuracy"].mean()) if len(measured) else math.nan,
                "status": "completed" if len(completed) else ("stopped" if len(stopped) else "failed"),
                "chosen": network == chosen,
                "confirmed": network in confirmed,
            }
        )
    return pd.DataFrame(rows, columns=NETWORK_COLUMNS).astype({"chosen": bool, "confirmed": bool})


def _request_rows(trials: pd.DataFrame, networks: pd.DataFrame) -> pd.DataFrame:
    """Each trial that records requested shares, with the place of the network it was mapped to."""
    requested = [f"requested_share_{d}" for d in DIMENSIONS]
    if not set(requested) <= set(trials.columns):
        return pd.DataFrame(columns=REQUEST_COLUMNS)
    asked = trials.dropna(subset=requested)
    where = networks.set_index("network")[["x", "y"]]
    asked = asked[asked["network"].isin(where.index)]
    x_req, y_req = to_simplex(*(asked[c].astype(float) for c in requested))
    return pd.DataFrame(
        {
            "trial": asked["trial"],
            "network": asked["network"],
            **{f"requested_{d}": asked[c].astype(float) for d, c in zip(DIMENSIONS, requested)},
            "share_error": asked["share_error"],
            "x_requested": x_req,
            "y_requested": y_req,
            "x": where.loc[asked["network"], "x"].to_numpy(),
            "y": where.loc[asked["network"], "y"].to_numpy(),
        },
        columns=REQUEST_COLUMNS,
    ).reset_index(drop=True)


def candidate_rows(best: Mapping[str, Any]) -> pd.DataFrame:
    """best.json's confirmed candidates (its "confirm" block): where each sits on the simplex, its
    seeds, mean ± std, whether it is tied with the chosen one, and the label search.png prints."""
    candidates = (best.get("confirm") or {}).get("candidates") or []
    chosen = best.get("network")
    rows = []
    for c in candidates:
        x, y = to_simplex(*(float(c[f"share_{d}"]) for d in DIMENSIONS))
        std = c.get("std")
        spread = f" ± {float(std):.4f}" if std is not None else ""
        seeds = tuple(c.get("seeds") or ())
        # A network trained twice with one seed repeats one measurement: say so beside its n.
        repeated = f", {len(set(seeds))} distinct seed(s)" if len(set(seeds)) < int(c["n"]) else ""
        rows.append(
            {
                "network": c["network"],
                "x": x,
                "y": y,
                "n": int(c["n"]),
                "seeds": seeds,
                "mean": float(c["mean"]),
                "std": float(std) if std is not None else math.nan,
                "tied": bool(c.get("tied")),
                "chosen": c["network"] == chosen,
                "label": f"{float(c['mean']):.4f}{spread} (n={int(c['n'])}{repeated})",
            }
        )
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS).astype({"tied": bool, "chosen": bool})


def search_view(view: RunView) -> SearchView:
    """What search.png draws for one run: the trained networks, the requests mapped onto them, the
    confirmed candidates and the tie region (hull of the tied candidates; a point or a segment when
    one or two are tied, empty when the run has no confirm block)."""
    candidates = candidate_rows(view.best)
    points = simplex_points(view.trials)
    networks = _network_rows(points, chosen_network(view), set(candidates["network"]))
    tied = candidates[candidates["tied"]]
    hull = convex_hull(zip(tied["x"].round(12), tied["y"].round(12)))
    return SearchView(
        networks=networks,
        requests=_request_rows(view.trials, networks),
        candidates=candidates,
        tie_region=pd.DataFrame(hull, columns=["x", "y"]),
    )


# --------------------------------------------------------------------------------------------------
# The search's strip at one budget, and Pareto fronts


class BudgetBand(NamedTuple):
    """The one budget a search trains on: goal × the base's cost, ± tolerance."""

    constraint: str  # cost name (cost.COSTS)
    column: str  # its trials.csv column
    goal: float  # target^φ
    tolerance: float
    low: float  # the band in the column's own units (the base's cost measured from the trials)
    high: float


def budget_band(view: RunView) -> BudgetBand | None:
    """The budget band of a finished run, in the constraint column's units; None when unknown."""
    from scalesearch.models.cost import COSTS

    best = view.best
    name = best.get("constraint") or "flops"
    target, tolerance = best.get("target"), best.get("tolerance")
    if name not in COSTS or target is None or tolerance is None:
        return None
    column = COSTS[name].column
    goal = float(target) ** float(best.get("phi") or 1.0)
    trials = view.trials
    if column not in trials or "constraint_ratio" not in trials:
        return None
    base = (trials[column] / trials["constraint_ratio"]).dropna()
    if base.empty:
        return None
    cost = float(base.median())  # the same base for every row, up to float noise
    return BudgetBand(
        name, column, goal, float(tolerance), cost * goal * (1 - tolerance), cost * goal * (1 + tolerance)
    )


def frontier_cost(run_dirs: Sequence[str | os.PathLike[str]]) -> str:
    """The trials.csv column frontier.png plots accuracy against: the first run's multi-objective
    cost (best.json's `pareto_cost`), else its constraint's column, else FLOPs."""
    return strip_column([read_view(run_dir) for run_dir in run_dirs[:1]])


def strip_column(views: Sequence[RunView]) -> str:
    """`frontier_cost` of runs already read."""
    from scalesearch.models.cost import COSTS

    known = {kind.column for kind in COSTS.values()}
    for view in views[:1]:
        constraint = COSTS.get(str(view.best.get("constraint")))
        for column in (view.best.get("pareto_cost"), constraint.column if constraint else None):
            if column in known and column in view.trials.columns and view.trials[column].notna().any():
                return str(column)
    return "flops"


def pareto_front(points: pd.DataFrame, *, cost: str = "flops", value: str = "final_val_accuracy") -> pd.DataFrame:
    """Rows on the front of `value` (up) and `cost` (down), by `runs.non_dominated`'s tie rule (exact
    duplicates both stay), sorted by cost; rows missing either are left out."""
    ordered = points.dropna(subset=[cost, value]).sort_values([cost, value], ascending=[True, False])
    pairs = list(zip(ordered[value].astype(float), ordered[cost].astype(float)))
    return ordered.iloc[runs.non_dominated(pairs)]


def front_rows(trials: pd.DataFrame, cost: str = "flops") -> pd.DataFrame:
    """A run's Pareto front as trials.csv marks it (`pareto` column, for this cost), else computed."""
    completed = trials[(trials["status"] == "completed") & trials["final_val_accuracy"].notna()]
    if "pareto" in trials.columns:
        marked = completed[completed["pareto"].astype(str).str.lower() == "true"]
        if len(marked) or not len(completed):
            return marked.sort_values(cost)
    return pareto_front(completed, cost=cost)


STRIP_COLUMNS = ["trial", "network", "stage", "status", "cost", "final_val_accuracy", "front", "chosen"]


def budget_strip(view: RunView, column: str) -> pd.DataFrame:
    """Every trained trial of a run against `column` (a cost, in its own units): stage, status, and
    whether it is on the accuracy-vs-cost Pareto front (only for a multi-objective run, whose
    best.json names this cost: a single-objective search's trials share one budget, so a front
    among them would only pick the cheapest of equals) and whether it is the chosen network."""
    trials = view.trials
    trained = trials[trials["final_val_accuracy"].notna()] if column in trials else trials.iloc[:0]
    front: set[Any] = set()
    if view.best.get("pareto_cost") == column:
        front = set(front_rows(trials, column)["trial"])
    chosen = chosen_network(view)
    return pd.DataFrame(
        {
            "trial": trained["trial"],
            "network": trained["network"],
            "stage": trained["stage"].fillna("search") if "stage" in trained else "search",
            "status": trained["status"],
            "cost": trained.get(column, math.nan),
            "final_val_accuracy": trained["final_val_accuracy"],
            "front": trained["trial"].isin(front),
            "chosen": trained["network"] == chosen,
        },
        columns=STRIP_COLUMNS,
    ).reset_index(drop=True)


def strip_title(view: RunView, column: str) -> str:
    """frontier.png's title: what the trials are (all on one budget band), and what is plotted."""
    band = budget_band(view)
    kind = cost_by_column(column)
    if band is None:
        head = "Search trials (one budget band)"
    else:
        head = f"Search trials: all at {band.goal:g}× the base {cost_word(band.constraint)}"
        head += f" ± {band.tolerance:.0%}"
    if view.best.get("pareto_cost") == column:
        return f"{head}; accuracy vs {cost_word(kind.name if kind is not None else column)}, Pareto front ringed"
    return f"{head}; one budget, not a frontier across budgets"

"""Views of a search run. Each plot draws a table that a data function returns (tests check those
tables, not pixels); the drawing is a thin layer over it.

- `plot_validation` (validation.png, drawn by `scalesearch validate`): the frontier a user wants,
  accuracy against measured FLOPs across φ for the chosen rule and the single-dimension baselines.
- `plot_frontier` (frontier.png): every network the search trained against its measured cost. A
  search trains on one budget band only, so this is a strip at one budget, not a frontier across
  budgets, and its title says so (`budget_strip`, `budget_band`, `strip_title`).
- `plot_search` (search.png): the shares simplex (`search_view`): each network at its realized
  shares coloured by accuracy, the requested shares it was mapped from, the confirmed candidates
  with mean ± std, the tie region and the chosen network.
- `plot_runs` (`scalesearch plot`): the strip beside the simplex, for one run or several.

Runs are read only through `scalesearch.runs`; cost names, columns and axis labels come from
`scalesearch.cost.COSTS`. matplotlib (and cost's torch) are imported inside the functions, so
importing this module is cheap.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from scalesearch import runs
from scalesearch.errors import UserError
from scalesearch.results import atomic_write_bytes

if TYPE_CHECKING:
    from scalesearch.cost import CostKind

IMAGE_SUFFIXES = (".png", ".svg")
DIMENSIONS = ("depth", "width", "resolution")
# Corners of the shares simplex in the plane: depth at the left, width at the right, resolution on top.
_SQRT3_2 = math.sqrt(3.0) / 2.0


# --------------------------------------------------------------------------------------------------
# Reading runs (through scalesearch.runs)


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
    """RUN_DIR through `scalesearch.runs`: a finished run (`read_run`), or one still searching (its
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


def _cost_by_column(column: str) -> CostKind | None:
    """The registered cost whose trials.csv column is `column`."""
    from scalesearch.cost import COSTS

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
    return (width + 0.5 * resolution) / total, _SQRT3_2 * resolution / total


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
    from scalesearch.cost import COSTS

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
    from scalesearch.cost import COSTS

    known = {kind.column for kind in COSTS.values()}
    for view in views[:1]:
        constraint = COSTS.get(str(view.best.get("constraint")))
        for column in (view.best.get("pareto_cost"), constraint.column if constraint else None):
            if column in known and column in view.trials.columns and view.trials[column].notna().any():
                return str(column)
    return "flops"


def pareto_front(points: pd.DataFrame, *, cost: str = "flops", value: str = "final_val_accuracy") -> pd.DataFrame:
    """Rows not dominated by any other (lower or equal cost with higher value), sorted by cost."""
    ordered = points.dropna(subset=[cost, value]).sort_values([cost, value], ascending=[True, False])
    keep = []
    best = -float("inf")
    for index, row in ordered.iterrows():
        if row[value] > best:
            keep.append(index)
            best = row[value]
    return ordered.loc[keep]


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
    kind = _cost_by_column(column)
    if band is None:
        head = "Search trials (one budget band)"
    else:
        head = f"Search trials: all at {band.goal:g}× the base {cost_word(band.constraint)}"
        head += f" ± {band.tolerance:.0%}"
    if view.best.get("pareto_cost") == column:
        return f"{head}; accuracy vs {cost_word(kind.name if kind is not None else column)}, Pareto front ringed"
    return f"{head}; one budget, not a frontier across budgets"


# --------------------------------------------------------------------------------------------------
# Drawing (thin)


def _save(figure: Any, path: Path) -> None:
    """Render `figure` in the format its suffix names, and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def check_image_path(out: str | os.PathLike[str]) -> Path:
    """`out` as a Path; UserError unless it ends in .png or .svg (the format follows the suffix)."""
    path = Path(out)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--out {str(out)!r}: the file must end in .png or .svg")
    return path


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# How the strip draws each kind of trial: (stage, status), marker, legend text.
STRIP_MARKERS = (
    (("search", "completed"), "o", "search, completed"),
    (("search", "stopped"), "x", "search, stopped early (ASHA)"),
    (("confirm", "completed"), "s", "confirm stage (more seeds)"),
)
_VALIDATE_HINT = "the frontier across budgets: `scalesearch validate RUN_DIR` → validation.png"


def _draw_strip(axis: Any, views: Sequence[RunView], column: str) -> None:
    """Every trained trial of each run against one cost, the budget band and the chosen network."""
    kind = _cost_by_column(column)
    scale = kind.scale if kind is not None else 1.0
    many = len(views) > 1
    for index, view in enumerate(views):
        points = budget_strip(view, column)
        colour = f"C{index}" if many else None
        prefix = f"{view.name}: " if many else ""
        band = budget_band(view)
        if band is not None and band.column == column and index == 0:
            axis.axvspan(band.low / scale, band.high / scale, color="0.85", alpha=0.5, zorder=0,
                         label=f"budget band {band.goal:g}× ± {band.tolerance:.0%}")  # fmt: skip
        for (stage, status), marker, what in STRIP_MARKERS:
            subset = points[(points["stage"] == stage) & (points["status"] == status)]
            if len(subset):
                axis.scatter(subset["cost"] / scale, subset["final_val_accuracy"], marker=marker, alpha=0.75,
                             color=colour, label=f"{prefix}{what} ({len(subset)})")  # fmt: skip
        front = points[points["front"]].sort_values("cost")
        if len(front):
            axis.plot(front["cost"] / scale, front["final_val_accuracy"], "-", alpha=0.6, color="0.3")
            axis.scatter(front["cost"] / scale, front["final_val_accuracy"], s=110, facecolors="none",
                         edgecolors="0.2", linewidths=1.2, zorder=4,
                         label=f"{prefix}Pareto front ({len(front)})")  # fmt: skip
        chosen = points[points["chosen"]]
        if len(chosen) and view.best.get("value") is not None:
            std = view.best.get("std")
            axis.errorbar([float(chosen["cost"].iloc[0]) / scale], [float(view.best["value"])],
                          yerr=[float(std)] if std is not None else None, marker="*", markersize=15,
                          color="crimson", capsize=4, zorder=5, linestyle="none",
                          label=f"{prefix}chosen: mean ± std over {view.best.get('seeds', '?')} seed(s)")  # fmt: skip
    axis.set_xlabel(f"proxy {kind.label}" if kind is not None else column)
    axis.set_ylabel("final validation accuracy")
    axis.set_title(strip_title(views[0], column) if views else "", fontsize=10)
    axis.annotate(_VALIDATE_HINT, (0.0, -0.16), xycoords="axes fraction", fontsize=8, color="0.35")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def _draw_simplex(figure: Any, axis: Any, views: Sequence[RunView]) -> None:
    """Each run's search view on the shares triangle: networks by accuracy, requests, candidates, ties."""
    corners = [(0.0, 0.0), (1.0, 0.0), (0.5, _SQRT3_2), (0.0, 0.0)]
    axis.plot([c[0] for c in corners], [c[1] for c in corners], color="0.4", linewidth=1)
    for (x, y), text, align in (((0.0, -0.06), "depth", "left"), ((1.0, -0.06), "width", "right"),
                                ((0.5, _SQRT3_2 + 0.03), "resolution", "center")):  # fmt: skip
        axis.text(x, y, text, ha=align, fontsize=9)
    drawn = [(view, search_view(view)) for view in views]
    accuracies = pd.concat([v.networks["accuracy"] for _, v in drawn]).dropna() if drawn else pd.Series()
    limits = {"vmin": float(accuracies.min()), "vmax": float(accuracies.max())} if len(accuracies) else {}
    colours = None
    markers = "o^sDvP"
    for index, (view, data) in enumerate(drawn):
        prefix = f"{view.name}: " if len(views) > 1 else ""
        marker = markers[index % len(markers)]
        for _, request in data.requests.iterrows():
            axis.plot([request["x_requested"], request["x"]], [request["y_requested"], request["y"]], color="0.6",
                      linewidth=0.7, alpha=0.6, zorder=1)  # fmt: skip
        if len(data.requests):
            axis.scatter(data.requests["x_requested"], data.requests["y_requested"], s=14, facecolors="none",
                         edgecolors="0.55", linewidths=0.7, zorder=2,
                         label=f"{prefix}requested shares → network trained ({len(data.requests)})")  # fmt: skip
        nets = data.networks
        failed = nets[nets["status"] == "failed"]
        if len(failed):
            axis.scatter(failed["x"], failed["y"], marker=marker, facecolors="none", edgecolors="0.4",
                         label=f"{prefix}failed ({len(failed)})")  # fmt: skip
        for status, shape, what in (("completed", marker, "network (mean accuracy)"),
                                    ("stopped", "X", "stopped early (fewer epochs)")):  # fmt: skip
            subset = nets[nets["status"] == status]
            if len(subset):
                colours = axis.scatter(subset["x"], subset["y"], c=subset["accuracy"], cmap="viridis", s=55,
                                       marker=shape, edgecolors="k", linewidths=0.4, zorder=3, **limits,
                                       label=f"{prefix}{what} ({len(subset)})")  # fmt: skip
        region = data.tie_region
        if len(region) >= 3:
            axis.fill(region["x"], region["y"], color="orange", alpha=0.25, zorder=2,
                      label=f"{prefix}tie region (hull of tied candidates)")  # fmt: skip
        elif len(region) == 2:
            axis.plot(region["x"], region["y"], color="orange", linewidth=7, alpha=0.35, zorder=2,
                      solid_capstyle="round", label=f"{prefix}tie region (tied candidates)")  # fmt: skip
        tied = data.candidates[data.candidates["tied"]]
        if len(tied):
            axis.scatter(tied["x"], tied["y"], s=240, facecolors="none", edgecolors="darkorange", linewidths=1.6,
                         zorder=4, label=f"{prefix}tied with the chosen ({len(tied)})")  # fmt: skip
        others = data.candidates[~data.candidates["tied"]]
        if len(others):
            axis.scatter(others["x"], others["y"], s=240, facecolors="none", edgecolors="0.3", linewidths=1.0,
                         linestyle="--", zorder=4, label=f"{prefix}confirmed, not tied ({len(others)})")  # fmt: skip
        for _, candidate in data.candidates.iterrows():
            axis.annotate(candidate["label"], (candidate["x"], candidate["y"]), xytext=(9, 6),
                          textcoords="offset points", fontsize=7, zorder=6)  # fmt: skip
        chosen = nets[nets["chosen"]]
        if len(chosen):
            # Hollow, so the accuracy colour of the chosen network stays visible under it.
            axis.scatter(chosen["x"], chosen["y"], s=420, marker="*", facecolors="none", edgecolors="crimson",
                         linewidths=1.6, zorder=5, label=f"{prefix}chosen")  # fmt: skip
    if colours is not None:
        figure.colorbar(colours, ax=axis, label="final validation accuracy", shrink=0.8)
    axis.set_title("Where the search looked: networks at their realized compute shares", fontsize=10)
    axis.set_aspect("equal")
    axis.set_axis_off()
    # Below the triangle: the corners near the legend hold points too.
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, frameon=False, markerscale=0.7)


def plot_frontier(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """frontier.png: every trained trial's accuracy against its measured cost, on the search's one
    budget band (a strip, titled as such), with the chosen network's mean ± std."""
    plt = _pyplot()
    out = Path(out)
    views = [read_view(run_dir) for run_dir in run_dirs]
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    _draw_strip(axis, views, strip_column(views))
    _save(figure, out)
    plt.close(figure)
    return out


def plot_search(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """search.png: the shares simplex of each run (`search_view`)."""
    plt = _pyplot()
    out = Path(out)
    figure, axis = plt.subplots(figsize=(8, 6.5))
    _draw_simplex(figure, axis, [read_view(run_dir) for run_dir in run_dirs])
    _save(figure, out)
    plt.close(figure)
    return out


def plot_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """`scalesearch plot`: the budget strip beside the shares simplex, in one PNG or SVG."""
    out = check_image_path(out)
    views = [read_view(run_dir) for run_dir in run_dirs]
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1.1]})
    _draw_strip(left, views, strip_column(views))
    _draw_simplex(figure, right, views)
    _save(figure, out)
    plt.close(figure)
    return out


def plot_validation(summary: pd.DataFrame, out: str | os.PathLike[str], *, title: str = "") -> Path:
    """validation.png: the frontier across budgets. Mean accuracy ± seed std against measured FLOPs,
    one line per strategy over φ, the compound rule highlighted.

    `summary` is `scalesearch.validate.summarize`'s table; strategies with no trained seed at a φ
    (infeasible or failed) simply have no point there.
    """
    from scalesearch.cost import COSTS

    flops = COSTS["flops"]
    plt = _pyplot()
    out = Path(out)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy, group in summary.groupby("strategy", sort=False):
        points = group[group["n"] > 0].sort_values("phi")
        if points.empty:
            continue
        compound = strategy == "compound"
        axis.errorbar(
            points["flops"] / flops.scale,
            points["mean"],
            yerr=points["std"].fillna(0.0),
            marker="*" if compound else "o",
            markersize=11 if compound else 5,
            linewidth=2.5 if compound else 1.2,
            color="crimson" if compound else None,
            alpha=1.0 if compound else 0.75,
            capsize=3,
            zorder=5 if compound else 3,
            label=f"{'compound (chosen rule)' if compound else f'{strategy} only'} ({int(points['n'].max())} seeds)",
        )
    axis.set_xscale("log", base=2)  # each φ step doubles the FLOPs target: equal spacing per step
    # One tick per φ at the mean measured FLOPs of its strategies: log-2 default ticks say little here.
    ticks = summary.groupby("phi")["flops"].mean().sort_index()
    axis.set_xticks(ticks.to_numpy() / flops.scale,
                    [f"φ={phi:g}\n{value / flops.scale:.3g}" for phi, value in ticks.items()])  # fmt: skip
    axis.minorticks_off()
    axis.set_xlabel(f"measured proxy {flops.label}, log scale")
    axis.set_ylabel("final validation accuracy (mean ± std over seeds)")
    axis.set_title(title or "Accuracy vs measured FLOPs across φ: compound vs single-dimension", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    _save(figure, out)
    plt.close(figure)
    return out

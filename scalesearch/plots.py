"""Plots of search runs. Analysis (Pareto fronts, tables) returns data; drawing is a thin layer over it.

matplotlib is imported inside the functions (Agg backend), so importing this module is cheap.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scalesearch.errors import UserError
from scalesearch.results import atomic_write_bytes


def load_trials(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """A run's trials.csv as a DataFrame (numeric columns parsed)."""
    return pd.read_csv(Path(run_dir) / "trials.csv")


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


def _save(figure: Any, path: Path) -> None:
    """Render `figure` in the format its suffix names, and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


IMAGE_SUFFIXES = (".png", ".svg")
# Corners of the shares simplex in the plane: depth at the left, width at the right, resolution on top.
_SQRT3_2 = math.sqrt(3.0) / 2.0


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


def _read_best(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(run_dir) / "best.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def simplex_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials placed on the shares simplex: columns trial, status, shares, x, y, final_val_accuracy.

    Shares are renormalized to sum to 1 (grid points lie within the constraint's tolerance, not on
    it), then mapped to the triangle with depth at (0, 0), width at (1, 0), resolution at (1/2, √3/2).
    """
    prefix = "realized_share_" if "realized_share_depth" in trials.columns else "share_"
    shares = trials[[f"{prefix}depth", f"{prefix}width", f"{prefix}resolution"]].astype(float)
    total = shares.sum(axis=1).where(lambda t: t > 0)
    depth, width, resolution = (shares[c] / total for c in shares.columns)
    return pd.DataFrame(
        {
            "trial": trials["trial"],
            "status": trials["status"],
            "share_depth": depth,
            "share_width": width,
            "share_resolution": resolution,
            "x": width + 0.5 * resolution,
            "y": _SQRT3_2 * resolution,
            "final_val_accuracy": trials["final_val_accuracy"],
        }
    ).dropna(subset=["x", "y"])


# How the frontier's x axis shows each cost a Pareto front can trade accuracy against.
_COST_AXES = {
    "flops": (1e-6, "proxy MFLOPs at φ = 1 (fvcore, multiply-adds)", "FLOPs"),
    "latency_batch1_s": (1e3, "proxy latency at batch 1, ms (median, trial's device)", "latency"),
    "activations": (1e-3, "proxy activations at batch 1, thousands (conv/linear outputs)", "activations"),
    "params": (1e-3, "proxy parameters, thousands", "params"),
}


def frontier_cost(run_dirs: Sequence[str | os.PathLike[str]]) -> str:
    """The trials.csv column the frontier plots accuracy against: the first run's multi-objective
    cost (best.json's `pareto_cost`), else FLOPs."""
    for run_dir in run_dirs[:1]:
        best = _read_best(run_dir) or {}
        cost = best.get("pareto_cost")
        if cost in _COST_AXES and cost in load_trials(run_dir).columns:
            return str(cost)
    return "flops"


def front_rows(trials: pd.DataFrame, cost: str = "flops") -> pd.DataFrame:
    """A run's Pareto front as trials.csv marks it (`pareto` column, for this cost), else computed."""
    completed = trials[(trials["status"] == "completed") & trials["final_val_accuracy"].notna()]
    if "pareto" in trials.columns:
        marked = completed[completed["pareto"].astype(str).str.lower() == "true"]
        if len(marked) or not len(completed):
            return marked.sort_values(cost)
    return pareto_front(completed, cost=cost)


def _draw_frontier(axis: Any, run_dirs: Sequence[str | os.PathLike[str]]) -> None:
    """Every trained trial of each run, its Pareto front and its chosen point, on one axis."""
    cost = frontier_cost(run_dirs)
    scale, xlabel, title = _COST_AXES[cost]
    for run_dir in run_dirs:
        trials = load_trials(run_dir)
        if cost not in trials.columns:
            continue
        label = Path(run_dir).name
        trained = trials[trials["final_val_accuracy"].notna()]
        for status, marker in (("completed", "o"), ("stopped", "x")):
            subset = trained[trained["status"] == status]
            if len(subset):
                axis.scatter(subset[cost] * scale, subset["final_val_accuracy"], marker=marker, alpha=0.7,
                             label=f"{label}: {status} ({len(subset)})")  # fmt: skip
        best = _read_best(run_dir)
        same_cost = cost == ((best or {}).get("pareto_cost") or "flops")
        front = front_rows(trials, cost) if same_cost else pareto_front(trained[trained["status"] == "completed"],
                                                                        cost=cost)  # fmt: skip
        if len(front):
            axis.plot(front[cost] * scale, front["final_val_accuracy"], "-", alpha=0.6, color="0.3")
            # Ringed points: the non-dominated trials (trials.csv's `pareto` column).
            axis.scatter(front[cost] * scale, front["final_val_accuracy"], s=110, facecolors="none",
                         edgecolors="0.2", linewidths=1.2, zorder=4,
                         label=f"{label}: Pareto front ({len(front)})")  # fmt: skip
        if best is not None:
            chosen = trials[trials["trial"] == best["trial"]]
            if len(chosen):
                chosen_label = f"chosen α={best['alpha']:.3f} β={best['beta']:.3f} γ={best['gamma']:.3f}"
                axis.scatter(chosen[cost] * scale, chosen["final_val_accuracy"], s=220, marker="*", color="crimson",
                             zorder=5, label=chosen_label)  # fmt: skip
    axis.set_xlabel(xlabel)
    axis.set_ylabel("final validation accuracy")
    axis.set_title(f"Accuracy vs {title} of every trial")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")


def _draw_simplex(figure: Any, axis: Any, run_dirs: Sequence[str | os.PathLike[str]]) -> None:
    """Where the search looked: every proposal on the shares triangle, coloured by accuracy."""
    corners = [(0.0, 0.0), (1.0, 0.0), (0.5, _SQRT3_2), (0.0, 0.0)]
    axis.plot([c[0] for c in corners], [c[1] for c in corners], color="0.4", linewidth=1)
    for (x, y), text, align in (((0.0, -0.06), "depth", "left"), ((1.0, -0.06), "width", "right"),
                                ((0.5, _SQRT3_2 + 0.03), "resolution", "center")):  # fmt: skip
        axis.text(x, y, text, ha=align, fontsize=9)
    markers = "o^sDvP"
    colours = None
    for index, run_dir in enumerate(run_dirs):
        points = simplex_points(load_trials(run_dir))
        trained = points[points["final_val_accuracy"].notna()]
        untrained = points[points["final_val_accuracy"].isna()]
        marker = markers[index % len(markers)]
        if len(untrained):
            axis.scatter(untrained["x"], untrained["y"], marker=marker, facecolors="none", edgecolors="0.5",
                         label=f"{Path(run_dir).name}: not trained ({len(untrained)})")  # fmt: skip
        if len(trained):
            colours = axis.scatter(trained["x"], trained["y"], c=trained["final_val_accuracy"], cmap="viridis",
                                   marker=marker, edgecolors="k", linewidths=0.3,
                                   label=f"{Path(run_dir).name}: trained ({len(trained)})")  # fmt: skip
        best = _read_best(run_dir)
        if best is not None:
            chosen = points[points["trial"] == best["trial"]]
            # Hollow, so the accuracy colour of the chosen point stays visible under it.
            axis.scatter(chosen["x"], chosen["y"], s=260, marker="*", facecolors="none", edgecolors="crimson",
                         linewidths=1.5, zorder=5)  # fmt: skip
    if colours is not None:
        figure.colorbar(colours, ax=axis, label="final validation accuracy", shrink=0.8)
    axis.set_title("Where the search looked (compute shares)")
    axis.set_aspect("equal")
    axis.set_axis_off()
    axis.legend(fontsize=7, loc="upper left")


def plot_frontier(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Accuracy against proxy FLOPs for every trial of each run, its Pareto front and chosen point."""
    plt = _pyplot()
    out = Path(out)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    _draw_frontier(axis, run_dirs)
    _save(figure, out)
    plt.close(figure)
    return out


def plot_search(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """`scalesearch plot`: the accuracy-vs-FLOPs frontier beside the shares simplex, in one PNG or SVG."""
    out = check_image_path(out)
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    _draw_frontier(left, run_dirs)
    _draw_simplex(figure, right, run_dirs)
    _save(figure, out)
    plt.close(figure)
    return out


def plot_validation(summary: pd.DataFrame, out: str | os.PathLike[str], *, title: str = "") -> Path:
    """validation.png: mean accuracy ± seed std against measured FLOPs, a line per strategy, compound highlighted.

    `summary` is `scalesearch.validate.summarize`'s table; strategies with no trained seed at a φ
    (infeasible or failed) simply have no point there.
    """
    plt = _pyplot()
    out = Path(out)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy, group in summary.groupby("strategy", sort=False):
        points = group[group["n"] > 0].sort_values("phi")
        if points.empty:
            continue
        compound = strategy == "compound"
        axis.errorbar(
            points["flops"] / 1e6,
            points["mean"],
            yerr=points["std"].fillna(0.0),
            marker="*" if compound else "o",
            markersize=11 if compound else 5,
            linewidth=2.5 if compound else 1.2,
            color="crimson" if compound else None,
            alpha=1.0 if compound else 0.75,
            capsize=3,
            zorder=5 if compound else 3,
            label=f"{strategy} ({int(points['n'].max())} seeds)",
        )
    axis.set_xscale("log", base=2)  # each φ step doubles the FLOPs target: equal spacing per step
    # One tick per φ at the mean measured FLOPs of its strategies: log-2 default ticks say little here.
    ticks = summary.groupby("phi")["flops"].mean().sort_index()
    axis.set_xticks(ticks.to_numpy() / 1e6, [f"φ={phi:g}\n{flops / 1e6:.3g}" for phi, flops in ticks.items()])
    axis.minorticks_off()
    axis.set_xlabel("measured proxy MFLOPs (fvcore, multiply-adds; log scale)")
    axis.set_ylabel("final validation accuracy (mean ± std over seeds)")
    axis.set_title(title or "Compound vs single-dimension scaling at equal FLOPs")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    _save(figure, out)
    plt.close(figure)
    return out

"""Drawing a search run's views and validation's frontier: each plot is a thin layer over a table
that `scalesearch.outputs.views` (or `scalesearch.outputs.verdict.summarize`) returns.

- `plot_validation` (validation.png, drawn by `scalesearch validate`): the frontier a user wants,
  accuracy against measured FLOPs across φ for the chosen rule and the single-dimension baselines.
- `plot_frontier` (frontier.png): every network the search trained against its measured cost, on
  the search's one budget band (`views.budget_strip`), titled as a strip, not a frontier.
- `plot_search` (search.png): the shares simplex (`views.search_view`).
- `plot_runs` (`scalesearch plot`): the strip beside the simplex, for one run or several.

matplotlib (and cost's torch) are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scalesearch.core.atomic import atomic_write_bytes
from scalesearch.core.errors import UserError
from scalesearch.outputs.views import (
    SQRT3_2,
    RunView,
    SearchView,
    budget_band,
    budget_strip,
    cost_by_column,
    read_view,
    search_view,
    strip_column,
    strip_title,
)

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

IMAGE_SUFFIXES = (".png", ".svg")


# --------------------------------------------------------------------------------------------------
# Drawing (thin)


def _save(figure: Any, path: Path) -> None:
    """Render `figure` in the format its suffix names, and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:  # a folder of that name, a read-only place, a full disk
        raise UserError(f"cannot write {path}: {error.strerror or error}; nothing was written there") from None


def check_image_path(out: str | os.PathLike[str]) -> Path:
    """`out` as a Path; UserError unless it ends in .png or .svg (the format follows the suffix)."""
    path = Path(out)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--out {str(out)!r}: the file must end in .png or .svg")
    if path.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; give a file name")
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
    kind = cost_by_column(column)
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
    corners = [(0.0, 0.0), (1.0, 0.0), (0.5, SQRT3_2), (0.0, 0.0)]
    axis.plot([c[0] for c in corners], [c[1] for c in corners], color="0.4", linewidth=1)
    for (x, y), text, align in (((0.0, -0.06), "depth", "left"), ((1.0, -0.06), "width", "right"),
                                ((0.5, SQRT3_2 + 0.03), "resolution", "center")):  # fmt: skip
        axis.text(x, y, text, ha=align, fontsize=9)
    drawn = [(view, search_view(view)) for view in views]
    accuracies = pd.concat([v.networks["accuracy"] for _, v in drawn]).dropna() if drawn else pd.Series()
    limits = {"vmin": float(accuracies.min()), "vmax": float(accuracies.max())} if len(accuracies) else {}
    colours = None
    markers = "o^sDvP"
    for index, (view, data) in enumerate(drawn):
        prefix = f"{view.name}: " if len(views) > 1 else ""
        scatter = _draw_search_view(axis, data, prefix, markers[index % len(markers)], limits)
        colours = scatter if scatter is not None else colours
    if colours is not None:
        figure.colorbar(colours, ax=axis, label="final validation accuracy", shrink=0.8)
    axis.set_title("Where the search looked: networks at their realized compute shares", fontsize=10)
    axis.set_aspect("equal")
    axis.set_axis_off()
    # Below the triangle: the corners near the legend hold points too.
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, frameon=False, markerscale=0.7)


def _draw_search_view(axis: Any, data: SearchView, prefix: str, marker: str, limits: dict[str, float]) -> Any:
    """One run's search view on the triangle; returns the accuracy-coloured scatter (None if nothing was)."""
    colours = None
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
    return colours


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


def plot_validation(
    summary: pd.DataFrame, out: str | os.PathLike[str], *, title: str = "", searched_phi: float | None = None
) -> Path:
    """validation.png: the frontier across budgets. Mean accuracy ± seed std against measured FLOPs,
    one line per strategy over φ, the compound rule highlighted; with `searched_phi`, the budgets past
    it (held out: the search never trained there) are shaded and labelled.

    `summary` is `scalesearch.validation.validate.summarize`'s table; strategies with no trained seed at a φ
    (infeasible or failed) simply have no point there.
    """
    from scalesearch.models.cost import COSTS

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
    held_out = ticks[ticks.index > searched_phi] if searched_phi is not None else ticks.iloc[:0]
    if len(held_out):
        searched = ticks[ticks.index <= searched_phi]
        left = held_out.iloc[0] if searched.empty else math.sqrt(searched.iloc[-1] * held_out.iloc[0])
        axis.axvspan(left / flops.scale, held_out.iloc[-1] * 1.5 / flops.scale, color="0.9", zorder=0)
        axis.text(left / flops.scale, 0.02, f"  held out: beyond the searched φ={searched_phi:g}",
                  transform=axis.get_xaxis_transform(), fontsize=8, color="0.35")  # fmt: skip
    axis.minorticks_off()
    axis.set_xlabel(f"measured proxy {flops.label}, log scale")
    axis.set_ylabel("final validation accuracy (mean ± std over seeds)")
    axis.set_title(title or "Accuracy vs measured FLOPs across φ: compound vs single-dimension", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    _save(figure, out)
    plt.close(figure)
    return out

"""Plots of search runs. Analysis (Pareto fronts, tables) returns data; drawing is a thin layer over it.

matplotlib is imported inside the functions (Agg backend), so importing this module is cheap.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

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


def _save(figure: object, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    atomic_write_bytes(path, buffer.getvalue())


def plot_frontier(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Accuracy against proxy FLOPs for every trial of each run, its Pareto front and chosen point."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        trials = load_trials(run_dir)
        label = Path(run_dir).name
        trained = trials[trials["final_val_accuracy"].notna()]
        for status, marker in (("completed", "o"), ("stopped", "x")):
            subset = trained[trained["status"] == status]
            if len(subset):
                axis.scatter(subset["flops"] / 1e6, subset["final_val_accuracy"], marker=marker, alpha=0.7,
                             label=f"{label}: {status} ({len(subset)})")  # fmt: skip
        front = pareto_front(trained[trained["status"] == "completed"])
        if len(front):
            axis.plot(
                front["flops"] / 1e6,
                front["final_val_accuracy"],
                "-",
                alpha=0.6,
                label=f"{label}: Pareto front",
            )
        best_path = Path(run_dir) / "best.json"
        if best_path.is_file():
            best = json.loads(best_path.read_text(encoding="utf-8"))
            chosen = trials[trials["trial"] == best["trial"]]
            if len(chosen):
                chosen_label = f"chosen α={best['alpha']:.3f} β={best['beta']:.3f} γ={best['gamma']:.3f}"
                axis.scatter(chosen["flops"] / 1e6, chosen["final_val_accuracy"], s=220, marker="*", color="crimson",
                             zorder=5, label=chosen_label)  # fmt: skip
    axis.set_xlabel("proxy MFLOPs at φ = 1 (fvcore, multiply-adds)")
    axis.set_ylabel("final validation accuracy")
    axis.set_title("Accuracy vs FLOPs of every trial")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    _save(figure, out)
    plt.close(figure)
    return out

"""A Markdown report of a finished run, meant to be read on a code host (GitHub, GitLab).

Everything comes from the run folder: best.json, search.json, manifest.json, trials.csv, family.json,
and validation.csv when `scalesearch validate` has run. Images are linked by relative path, so the
report renders wherever the folder is browsed.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from scalesearch.results import atomic_write_text
from scalesearch.runs import Run, read_run
from scalesearch.tables import markdown_table

TOP_TRIALS = 5
SHARE_COLUMNS = ("share_depth", "share_width", "share_resolution")
SEARCH_IMAGE = "search.png"  # frontier + shares simplex, drawn by the report itself
RUN_FILES = {
    "trials.csv": "every proposal: coefficients, measured cost, accuracy, status",
    "best.json": "the chosen coefficients",
    "family.json": "the scaled family (B0, B1, ...) with measured params and FLOPs",
    "family.md": "the family as a Markdown table",
    "search.json": "the search settings (for --resume and validate)",
    "manifest.json": "command, versions, machine, start and end",
    "validation.csv": "compound vs single-dimension baselines, one row per strategy, phi and seed",
    "validation.png": "the validation plot",
    "frontier.png": "accuracy vs FLOPs of every trial",
    SEARCH_IMAGE: "accuracy vs FLOPs beside the shares simplex",
}


def _number(value: Any, digits: int = 4) -> str:
    """A float with fixed decimals; blanks for missing values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{number:.{digits}f}" if math.isfinite(number) else ""


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the run folder, or {} when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _duration(manifest: dict[str, Any]) -> str:
    """Wall time from the manifest's start and end stamps, e.g. '4 min 12 s'."""
    try:
        start, end = (datetime.strptime(manifest[k], "%Y-%m-%dT%H:%M:%S%z") for k in ("started", "ended"))
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def coefficients_section(run: Run) -> str:
    """The chosen α, β, γ with their compute shares, and the constraint they satisfy."""
    best = run.best
    coefficients = (run.family or {}).get("coefficients") or {}
    shares = coefficients.get("shares", {})
    rows = [
        {"coefficient": "alpha (depth)", "value": _number(best["alpha"]), "share of each FLOPs doubling":
         _number(shares.get("depth"), 3)},
        {"coefficient": "beta (width)", "value": _number(best["beta"]), "share of each FLOPs doubling":
         _number(shares.get("width"), 3)},
        {"coefficient": "gamma (resolution)", "value": _number(best["gamma"]), "share of each FLOPs doubling":
         _number(shares.get("resolution"), 3)},
    ]  # fmt: skip
    product = float(best["alpha"]) * float(best["beta"]) ** 2 * float(best["gamma"]) ** 2
    tolerance = best.get("tolerance")
    constraint = (
        f"Constraint: alpha * beta^2 * gamma^2 = {product:.4f} (target {best.get('target', 2.0):g}"
        + (f" ± {float(tolerance):.0%}" if tolerance is not None else "")
        + ")."
    )
    if best.get("proxy_flops_ratio") is not None:
        constraint += f" Measured FLOPs ratio of the chosen proxy at phi = 1: {float(best['proxy_flops_ratio']):.3f}."
    return markdown_table(rows, list(rows[0])) + "\n\n" + constraint + "\n"


def search_section(run: Run, trials: Any) -> str:
    """How the search ran: settings, trial outcomes, time, where it ran."""
    settings = run.settings
    manifest = _read_json(run.path / "manifest.json")
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    outcomes = ", ".join(f"{counts[s]} {s}" for s in ("completed", "stopped", "failed", "infeasible") if s in counts)
    dataset = manifest.get("dataset", {})
    versions = manifest.get("versions", {})
    rows = [
        ("search space", f"{run.best.get('space', '')}"),
        ("dataset", f"{run.best.get('dataset', '')}" + (f" ({dataset['classes']} classes, {dataset['images']} images)"
                                                         if {"classes", "images"} <= set(dataset) else "")),
        ("sampler", str(settings.get("sampler", ""))),
        ("trials", f"{len(trials)} ({outcomes})" if outcomes else str(len(trials))),
        ("epochs per trial", str(settings.get("epochs", ""))),
        ("scheduler", str(settings.get("scheduler", ""))),
        ("seed", str(settings.get("seed", ""))),
        ("parallelism", f"{settings.get('concurrency', '')} trials x {settings.get('cpus_per_trial', '')} CPU"),
        ("training time (sum over trials)", f"{float(trials['seconds'].sum()):.0f} s" if len(trials) else ""),
        ("wall time", _duration(manifest)),
        ("ran on", str(manifest.get("ray_address") or "")),
        ("versions", ", ".join(f"{k} {versions[k]}" for k in ("scalesearch", "torch", "ray") if k in versions)),
    ]  # fmt: skip
    return markdown_table([{"": key, "value": value} for key, value in rows if value], ["", "value"]) + "\n"


def top_trials_section(run: Run, trials: Any) -> str:
    """The best completed trials by final accuracy (fewer FLOPs first on ties); the chosen one marked."""
    completed = trials[(trials["status"] == "completed") & trials["final_val_accuracy"].notna()]
    top = completed.sort_values(["final_val_accuracy", "flops"], ascending=[False, True]).head(TOP_TRIALS)
    rows = [
        {
            "trial": f"{int(row['trial'])}" + (" (chosen)" if int(row["trial"]) == run.best.get("trial") else ""),
            "alpha": _number(row["alpha"], 3),
            "beta": _number(row["beta"], 3),
            "gamma": _number(row["gamma"], 3),
            "shares d / w / r": " / ".join(_number(row[c], 2) for c in SHARE_COLUMNS),
            "FLOPs ratio": _number(row["flops_ratio"], 3),
            "val accuracy": _number(row["final_val_accuracy"]),
            "seconds": _number(row["seconds"], 1),
        }
        for row in top.to_dict("records")
    ]
    if not rows:
        return "No trial completed.\n"
    return markdown_table(rows, list(rows[0])) + "\n"


def validation_section(run: Run) -> str:
    """The validation verdict and plot, or how to produce them."""
    from scalesearch.validate import VERDICT_COLUMNS, load_validation, summarize, verdict, verdict_note, verdict_records

    if not (run.path / "validation.csv").is_file():
        return (
            "Not run yet. `scalesearch validate RUN_DIR` trains the family scaled with these coefficients "
            "against depth-only, width-only and resolution-only scaling at equal FLOPs; run `scalesearch "
            "report` again afterwards.\n"
        )
    rows = load_validation(run.path)
    summary = summarize(rows)
    seeds = int(rows["seed"].nunique())
    strategies = ", ".join(dict.fromkeys(rows["strategy"]))
    phis = ", ".join(f"{p:g}" for p in sorted(rows["phi"].unique()))
    text = (
        f"Strategies {strategies} at phi {phis} ({seeds} seed(s) each), all planned onto the same measured "
        "FLOPs target (target^phi times the proxy base); where rounding missed it, resolution (then width) "
        "was corrected, as in the search, and validation.csv records the multipliers actually trained. "
        "Compound minus the best single-dimension baseline, per phi:\n\n"
        + markdown_table(verdict_records(verdict(summary)), VERDICT_COLUMNS)
        + f"\n\n{verdict_note(rows)}\n"
    )
    if (run.path / "validation.png").is_file():
        text += "\n![Compound vs single-dimension scaling](validation.png)\n"
    return text


def build_report(run: Run) -> str:
    """The report's Markdown; needs search.png drawn beforehand when it should show the search view."""
    from scalesearch.export import render_family
    from scalesearch.plots import load_trials

    trials = load_trials(run.path)
    best = run.best
    parts = [
        f"# scalesearch run `{run.path.name}`\n",
        f"Chosen **alpha = {float(best['alpha']):.4g}, beta = {float(best['beta']):.4g}, gamma = "
        f"{float(best['gamma']):.4g}** on `{best.get('dataset', '?')}` (space `{best.get('space', '?')}`): "
        f"trial {best.get('trial')}, validation accuracy {_number(best.get('value'))}.\n",
        "## Coefficients and constraint\n",
        coefficients_section(run),
        "## Search\n",
        search_section(run, trials),
        f"## Top {TOP_TRIALS} trials\n",
        top_trials_section(run, trials),
    ]
    if (run.path / SEARCH_IMAGE).is_file():
        parts += ["## Frontier and search view\n",
                  f"![Accuracy vs FLOPs and the shares simplex]({SEARCH_IMAGE})\n"]  # fmt: skip
    parts += ["## Validation: compound vs single-dimension scaling\n", validation_section(run)]
    if run.family is not None:
        parts += ["## The scaled family\n", render_family(run.family, "markdown")]
    files = [f"- [{name}]({name}): {what}" for name, what in RUN_FILES.items() if (run.path / name).is_file()]
    parts += ["## Files\n", "\n".join(files) + "\n"]
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw RUN_DIR/search.png and write the report (RUN_DIR/report.md unless `out`); returns its path.

    A report written elsewhere than the run folder would break its relative links, so `out` must
    lie in RUN_DIR.
    """
    from scalesearch.errors import UserError
    from scalesearch.plots import plot_search

    run = read_run(run_dir)
    path = Path(out) if out is not None else run.path / "report.md"
    if path.resolve().parent != run.path.resolve():
        raise UserError(f"--out {str(out)!r} must be a file inside {str(run_dir)!r}, so the report's links resolve")
    if (run.path / "trials.csv").is_file():
        plot_search([run.path], run.path / SEARCH_IMAGE)
    atomic_write_text(path, build_report(run))
    return path

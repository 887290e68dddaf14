"""Figures of finished search runs: how close trained networks lie to what was asked, how many
distinct networks were trained, and what the confirm stage cost against the search itself.

    python benchmarks/search_figures.py results/default results/runs/*

Prints one row per run folder (reads trials.csv, best.json and manifest.json through scalesearch.outputs.runs).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from scalesearch.outputs import runs


def figures(run_dir: Path) -> dict[str, object]:
    """The figures of one run folder."""
    rows = runs.read_trials(run_dir / runs.TRIALS)
    search = [r for r in rows.values() if r["stage"] == "search"]
    confirm = [r for r in rows.values() if r["stage"] == "confirm"]
    errors = [r["share_error"] for r in search if r.get("share_error") is not None]
    manifest = runs.read_json(run_dir / runs.MANIFEST) or {}
    best = runs.read_json(run_dir / runs.BEST) or {}
    settings = manifest.get("settings", {})
    search_seconds = sum(r["seconds"] or 0 for r in search)
    confirm_seconds = sum(r["seconds"] or 0 for r in confirm)
    return {
        "run": run_dir.name,
        "sampler": settings.get("sampler"),
        "trials": len(search),
        "distinct": len({r["network"] for r in search}),
        "err_median": round(statistics.median(errors), 3) if errors else None,
        "err_max": round(max(errors), 3) if errors else None,
        "coverage": round(manifest.get("realizable", {}).get("coverage", float("nan")), 3),
        "search_cpu_s": round(search_seconds),
        "confirm_cpu_s": round(confirm_seconds),
        "confirm_share": round(confirm_seconds / (search_seconds + confirm_seconds), 2) if confirm else 0.0,
        "chosen_shares": "/".join(f"{best['shares'][k]:.2f}" for k in ("depth", "width", "resolution"))
        if best
        else "-",
        "distinguishable": (best.get("confirm") or {}).get("distinguishable"),
    }


def main(paths: list[str]) -> None:
    table = [figures(Path(p)) for p in paths if (Path(p) / runs.TRIALS).is_file()]
    if not table:
        sys.exit("no run folders with trials.csv given")
    columns = list(table[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in table)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in table:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main(sys.argv[1:])

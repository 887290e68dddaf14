"""Finishing a search: the noise-aware choice into best.json, the family planned onto its budgets,
the plots and the final manifest. Everything here reads the trials; nothing trains."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scalesearch.config.settings import SearchSettings
from scalesearch.config.spaces import SearchSpace
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients, Shares, coefficients_from_shares, parse_phis
from scalesearch.outputs import runs
from scalesearch.outputs.family_table import family_table, render_family, with_evidence
from scalesearch.outputs.plots import plot_frontier, plot_search
from scalesearch.planning.planner import RealizableSet
from scalesearch.search import confirm


def best_result(
    settings: SearchSettings,
    space: SearchSpace,
    found: RealizableSet | None,
    rows: Mapping[int, Mapping[str, Any]],
    confirmed: Sequence[str],
) -> dict[str, Any]:
    """best.json: the chosen network's realized coefficients (normalised onto the constraint, with
    the measured ratio beside them), its mean ± spread, and the confirmed networks and tie region."""
    decision = confirm.decide(rows, confirmed=confirmed, cost=settings.pareto_column())
    if decision is None:
        raise UserError("no trial finished training (see trials.csv); nothing to choose")
    chosen = decision.chosen
    row = rows[chosen.trials[0]]
    shares = Shares(*chosen.shares)
    coefficients = coefficients_from_shares(shares, target=space.target)
    result: dict[str, Any] = {
        "alpha": coefficients.alpha,
        "beta": coefficients.beta,
        "gamma": coefficients.gamma,
        "product": coefficients.product,
        "shares": {"depth": shares.depth, "width": shares.width, "resolution": shares.resolution},
        "coefficients_are": "realized: the chosen network's measured multipliers, normalised onto the constraint",
        "realized_multipliers": {k: row[f"realized_{k}"] for k in ("depth", "width", "resolution")},
        "measured_ratio": row["flops_ratio"],
        "constraint": settings.constraint,
        "constraint_ratio": row["constraint_ratio"],
        "phi": settings.phi,
        "target": space.target,
        "tolerance": space.tolerance,
        "metric": "mean final_val_accuracy over seeds",
        "value": chosen.mean,
        "std": chosen.std,
        "seeds": chosen.n,
        "network": chosen.network,
        "trial": chosen.trials[0],
        "trials_of_network": list(chosen.trials),
        "verdict": confirm.verdict_line(decision),
        "confirm": confirm.summary(decision),
        "search": search_summary(rows, found),
        "objective": settings.objective,
        "dataset": settings.dataset,
        "space": space.name,
        "space_path": space.path,
    }
    if settings.objective_cost():
        result.update(_pareto_fields(rows, settings.pareto_column()))
    return result


def _pareto_fields(rows: Mapping[int, Mapping[str, Any]], column: str) -> dict[str, Any]:
    """best.json's fields of a multi-objective search: the cost `column` and the trials on the
    accuracy-vs-cost front, by trial number."""
    front = sorted(runs.pareto_trials(rows, column))
    return {
        "pareto_cost": column,
        "pareto_front": [
            {
                "trial": n,
                "network": rows[n]["network"],
                **{k: rows[n][k] for k in ("alpha", "beta", "gamma")},
                "final_val_accuracy": rows[n]["final_val_accuracy"],
                column: rows[n].get(column),
            }
            for n in front
        ],
    }


def search_summary(rows: Mapping[int, Mapping[str, Any]], found: RealizableSet | None) -> dict[str, Any]:
    """How the search went: trials, distinct networks, how far they lay from what was asked, coverage."""
    errors = [float(r["share_error"]) for r in rows.values() if r.get("share_error") is not None]
    search_rows = [r for r in rows.values() if r.get("stage") == "search"]
    return {
        "trials": len(search_rows),
        "distinct_networks": len({r["network"] for r in search_rows}),
        "share_error_median": _median(errors),
        "share_error_max": max(errors) if errors else None,
        "realizable_networks": len(found.networks) if found else None,
        "coverage": found.coverage if found else None,
    }


def _median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def run_family(
    space: SearchSpace,
    coefficients: Coefficients,
    settings: SearchSettings,
    view: Mapping[str, Any] | None,
    checks: Mapping[float, str] | None = None,
) -> dict[str, Any]:
    """The run's family.json: the target base at r_base (the data view's base resolution, else the
    space's), scaled by the chosen coefficients and calibrated, each variant marked as upsampling or
    not and with what validation said at its φ (`checks`; "unchecked" where none ran)."""
    base_resolution = (view or {}).get("base_resolution") or space.base.resolution
    family = family_table(
        space.with_base_resolution(base_resolution),
        coefficients,
        parse_phis(settings.family_phis),
        num_classes=1000,
        in_channels=3,
    )
    family["base_resolution"] = base_resolution
    return with_evidence(family, native=(view or {}).get("native"), searched_phi=settings.phi, checks=checks)


def finish_run(
    settings: SearchSettings,
    space: SearchSpace,
    found: RealizableSet | None,
    rows: Mapping[int, Mapping[str, Any]],
    confirmed: Sequence[str],
    out: Path,
    manifest: dict[str, Any],
    *,
    num_classes: int,
    in_channels: int,
) -> dict[str, Any]:
    """Write best.json, family.json/.md, the plots and the final manifest; returns best.json."""

    result = best_result(settings, space, found, rows, confirmed)
    view = manifest.get("data_view")
    result["data_view"] = view
    coefficients = Coefficients(result["alpha"], result["beta"], result["gamma"])
    family = run_family(space, coefficients, settings, view)
    runs.write_json(out / runs.FAMILY_JSON, family)
    runs.write_text(out / runs.FAMILY_MD, render_family(family, "markdown"))
    # best.json marks the run as finished; the plots read it to mark the chosen point.
    runs.write_json(out / runs.BEST, result)
    plot_frontier([out], out / runs.FRONTIER_PNG)
    plot_search([out], out / runs.SEARCH_PNG)
    manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    runs.write_json(out / runs.MANIFEST, manifest)
    return result

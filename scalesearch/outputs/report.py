"""A Markdown report of a finished run, meant to be read on a code host (GitHub, GitLab).

It leads with the answer (the chosen coefficients, how sure the choice is, the confirmed candidates),
then how the search went, then the frontier across budgets (validation.png, when `scalesearch
validate` has run), the search's own views, and the scaled family. Everything comes from the run
folder, read through `scalesearch.outputs.runs` (and validation.csv through `scalesearch.validation.validate`, its
owner, and `scalesearch.outputs.verdict`); the tables are built by functions that return rows, so tests check
the data. Images are linked by relative path, so the report renders wherever the folder is browsed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from scalesearch.core.errors import UserError
from scalesearch.core.tables import markdown_table
from scalesearch.outputs import runs
from scalesearch.outputs.family_table import evidence_line
from scalesearch.outputs.plots import plot_frontier, plot_search, plot_validation
from scalesearch.outputs.runs import VALIDATION_PNG, Run, load_validation, read_json, read_run
from scalesearch.outputs.verdict import VERDICT_COLUMNS, summarize, verdict, verdict_note, verdict_records
from scalesearch.outputs.views import cost_word, trials_frame

REPORT_MD = "report.md"
RUN_FILES = {
    runs.TRIALS: "every trained network and seed: requested and realized shares, measured cost, accuracy",
    runs.BEST: "the chosen coefficients, the confirmed candidates with mean ± std and the tie region",
    runs.FAMILY_JSON: "the scaled family (B0, B1, ...) with measured params and FLOPs",
    runs.FAMILY_MD: "the family as a Markdown table",
    runs.SEARCH: "the search settings (for --resume and validate)",
    runs.MANIFEST: "command, versions, machine, start and end",
    runs.VALIDATION_CSV: "compound vs single-dimension baselines, one row per strategy, phi and seed",
    VALIDATION_PNG: "accuracy vs measured FLOPs across phi: the frontier across budgets",
    runs.SEARCH_PNG: "the shares simplex: requested vs trained networks, candidates, tie region",
    runs.FRONTIER_PNG: "accuracy vs FLOPs of every search trial (all on one budget band)",
}
CONFIRM_COLUMNS = ["network", "shares d / w / r", "FLOPs", "n", "seeds", "mean ± std", "tied with chosen"]
FAMILY_COLUMNS = ["name", "phi", "depth_mult", "width_mult", "resolution", "params", "GFLOPs", "target ratio",
                  "measured ratio", "off target", "rule: depth / width / res", "calibrated", "upsampling",
                  "check"]  # fmt: skip


def _number(value: Any, digits: int = 4) -> str:
    """A float with fixed decimals; blanks for missing values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{number:.{digits}f}" if math.isfinite(number) else ""


def _shares(values: Mapping[str, Any], prefix: str = "") -> str:
    """Depth / width / resolution shares as 'd / w / r' with two decimals."""
    return " / ".join(_number(values.get(f"{prefix}{d}"), 2) for d in ("depth", "width", "resolution"))


def _duration(manifest: Mapping[str, Any]) -> str:
    """Wall time from the manifest's start and end stamps, e.g. '4 min 12 s'."""
    try:
        start, end = (datetime.strptime(manifest[k], "%Y-%m-%dT%H:%M:%S%z") for k in ("started", "ended"))
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _budget(best: Mapping[str, Any]) -> str:
    """The search's budget band, e.g. '2× the base FLOPs ± 10%'."""

    target, tolerance = best.get("target"), best.get("tolerance")
    if target is None:
        return ""
    goal = float(target) ** float(best.get("phi") or 1.0)
    band = f" ± {float(tolerance):.0%}" if tolerance is not None else ""
    return f"{goal:g}× the base {cost_word(best.get('constraint') or 'flops')}{band}"


def validation_verdict(run: Run) -> pd.DataFrame | None:
    """validate's verdict table (compound minus the best baseline, per phi); None before validate ran."""

    if not (run.path / runs.VALIDATION_CSV).is_file():
        return None
    return verdict(summarize(load_validation(run.path)))


# --------------------------------------------------------------------------------------------------
# The answer


def answer_section(run: Run) -> str:
    """The chosen coefficients, the network they come from, best.json's verdict line, and, when
    the confirmed candidates cannot be told apart, a plain statement that they cannot."""

    best = run.best
    alpha, beta, gamma = (float(best[k]) for k in ("alpha", "beta", "gamma"))
    product = alpha * beta**2 * gamma**2
    shares = best.get("shares") or ((run.family or {}).get("coefficients") or {}).get("shares") or {}
    multipliers = best.get("realized_multipliers") or {}
    ratio = best.get("measured_ratio", best.get("proxy_flops_ratio"))
    network = f"network `{best['network']}`" if best.get("network") else f"trial {best.get('trial')}"
    lines = [
        f"**alpha = {alpha:.4f}, beta = {beta:.4f}, gamma = {gamma:.4f}** "
        f"(alpha * beta^2 * gamma^2 = {product:.4f}, target {float(best.get('target', 2.0)):g}) "
        f"on `{best.get('dataset', '?')}`, space `{best.get('space', '?')}`.\n",
    ]
    facts = [f"They are the realized coefficients of the chosen {network}"]
    if shares:
        facts.append(f"compute shares depth / width / resolution {_shares(shares)}")
    if multipliers:
        facts.append(f"realized multipliers depth / width / resolution {_shares(multipliers)}")
    if ratio is not None:
        facts.append(f"measured {cost_word(best.get('constraint') or 'flops')} ratio {float(ratio):.3f} "
                     f"on the budget band {_budget(best)}")  # fmt: skip
    lines.append(", ".join(facts) + ".\n")
    if best.get("verdict"):
        lines.append(f"**Verdict:** {best['verdict']}.\n")
    else:
        lines.append(f"Validation accuracy {_number(best.get('value'))} (one training run; this run predates the "
                     "confirm stage, so how sure the choice is is unknown).\n")  # fmt: skip
    lines.append(certainty_note(best))
    lines.append(data_view_line(best))
    lines.append(validation_line(run))
    return "\n".join(line for line in lines if line)


def data_view_line(best: Mapping[str, Any]) -> str:
    """What the proxies saw of the data, and why (best.json's data_view), or that the run predates it."""
    view = best.get("data_view")
    if not view:
        return ("**What the proxies saw:** not recorded (this run predates the resolution mapping: every proxy "
                "resampled the stored images directly).\n")  # fmt: skip
    if view.get("base_resolution") is None:
        return (f"**What the proxies saw:** data {view['native']} px, the resolution mapping off: every proxy "
                f"resampled the stored {view['native']}-px images directly.\n")  # fmt: skip
    return (
        f"**What the proxies saw:** data {view['native']} px; the target base runs at {view['base_resolution']} px "
        f"(headroom {float(view['headroom']):.2f}), so the proxy base at {view['proxy_resolution']} px saw the images "
        f"resized to {view['size']} px first, and a proxy above {view['size']} px was upsampling, as a family "
        f"variant above {view['native']} px is.\n"
    )


def validation_line(run: Run) -> str:
    """One line on whether the coefficients beat single-dimension scaling across phi, or that it is unknown."""
    table = validation_verdict(run)
    if table is None:
        return "**Validation:** not run, so whether these coefficients beat scaling one dimension is unknown " \
               "(`scalesearch validate RUN_DIR`, below).\n"  # fmt: skip
    searched = run.best.get("phi")
    calls = [
        f"phi {row['phi']:g}{' (held out)' if isinstance(searched, int | float) and row['phi'] > searched else ''}: "
        f"{row['call']}"
        for row in table.to_dict("records")
        if row["phi"] != 0
    ]
    return f"**Validation** (compound vs the best single-dimension rule at equal FLOPs): {'; '.join(calls)}.\n"


def certainty_note(best: Mapping[str, Any]) -> str:
    """What the confirm stage lets one say about the choice, in one blockquote ('' when sure)."""
    confirm = best.get("confirm")
    if not confirm:
        return ""
    tied = [c for c in confirm.get("candidates", []) if c.get("tied")]
    if confirm.get("pooled_std") is None:
        return (
            "> **How sure this choice is, is unknown:** no network was trained with more than one seed, so there "
            "is no seed spread to compare the candidates against (the confirm stage was off; see `--confirm-top` "
            "and `--confirm-seeds`).\n"
        )
    if confirm.get("distinguishable"):
        return ""
    return (
        f"> **The data cannot tell the {len(tied)} tied candidates apart.** Their mean accuracies differ by less "
        f"than the seed spread can resolve (pooled two-sample t-test at {float(confirm['confidence']):.0%}, pooled "
        f"seed std {float(confirm['pooled_std']):.4f}); any of them is as good a choice on this evidence. More "
        "seeds (`--confirm-seeds`) would narrow the tie region.\n"
    )


def confirm_rows(best: Mapping[str, Any]) -> list[dict[str, str]]:
    """The confirm table: each confirmed network, its realized shares, FLOPs, seeds, mean ± std and
    whether it is tied with the chosen one (the chosen first, as best.json orders them)."""
    rows = []
    for c in (best.get("confirm") or {}).get("candidates", []):
        seeds = [int(s) for s in c.get("seeds") or []]
        std = c.get("std")
        rows.append(
            {
                "network": f"`{c['network']}`" + (" (chosen)" if c["network"] == best.get("network") else ""),
                "shares d / w / r": _shares(c, "share_"),
                "FLOPs": f"{int(c['flops']):,}" if c.get("flops") is not None else "",
                "n": str(int(c["n"])),
                "seeds": ", ".join(str(s) for s in seeds),
                "mean ± std": _number(c["mean"]) + (f" ± {_number(std)}" if std is not None else ""),
                "tied with chosen": "yes" if c.get("tied") else "no",
            }
        )
    return rows


def confirm_section(run: Run) -> str:
    """The confirm table with what 'tied' means, or why there is none."""
    best = run.best
    rows = confirm_rows(best)
    if not rows:
        return "No confirm block in best.json: this run predates the confirm stage.\n"
    confirm = best["confirm"]
    text = markdown_table(rows, CONFIRM_COLUMNS) + "\n\n"
    text += (
        f"The search's best networks retrained with more seeds; the chosen one has the best mean. 'Tied': its mean "
        f"is not significantly below the chosen one's (pooled two-sample t-test at "
        f"{float(confirm.get('confidence', 0.95)):.0%}"
        + (f", pooled seed std {float(confirm['pooled_std']):.4f}" if confirm.get("pooled_std") is not None else "")
        + ")."
    )
    region = confirm.get("tie_region") or {}
    if region:
        text += " Tie region (share ranges of the tied networks): " + ", ".join(
            f"{name} {_number(low, 2)}–{_number(high, 2)}" for name, (low, high) in region.items()
        ) + "."  # fmt: skip
    repeated = [r["network"] for r in rows if len(set(r["seeds"].split(", "))) < int(r["n"])]
    if repeated:
        text += (
            f" Note: {', '.join(repeated)} was trained more than once with the same seed; those runs repeat one "
            "measurement, so its n overstates the evidence."
        )
    return text + "\n"


# --------------------------------------------------------------------------------------------------
# How the search went


def search_rows(run: Run, trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(what, value) rows on how the search went: trials by stage and outcome, distinct networks,
    how far the trained networks lie from the requested shares, the realizable set's coverage, and
    the settings, time and place it ran."""
    settings = run.settings
    stats = run.best.get("search") or {}
    manifest = read_json(run.path / runs.MANIFEST)
    manifest = manifest if isinstance(manifest, dict) else {}

    def outcomes(stage: str) -> str:
        rows = trials[trials["stage"].fillna("search") == stage] if "stage" in trials else trials
        counts = rows["status"].value_counts().to_dict()
        detail = ", ".join(f"{counts[s]} {s}" for s in runs.STATUSES if s in counts)
        return f"{len(rows)} {stage}" + (f" ({detail})" if detail else "")

    search_trials = trials[trials["stage"].fillna("search") == "search"] if "stage" in trials else trials
    distinct = stats.get("distinct_networks", search_trials["network"].nunique() if "network" in trials else None)
    realizable = stats.get("realizable_networks")
    dataset = manifest.get("dataset", {})
    versions = manifest.get("versions", {})
    median, worst, coverage = stats.get("share_error_median"), stats.get("share_error_max"), stats.get("coverage")
    rows = [
        ("trials", outcomes("search") + (f" + {outcomes('confirm')}" if "stage" in trials and
                                         (trials["stage"] == "confirm").any() else "")),
        ("distinct networks trained in the search",
         f"{distinct}" + (f" of {realizable} realizable on the budget band" if realizable is not None else "")
         if distinct is not None else ""),
        ("budget band", _budget(run.best)),
        ("share error (requested → trained, largest share difference)",
         f"median {_number(median, 3)}, max {_number(worst, 3)}" if median is not None else ""),
        ("coverage of the simplex",
         f"{_number(coverage, 3)}: no point of the simplex lies farther than this from a realizable network"
         if coverage is not None else ""),
        ("search space", str(run.best.get("space", ""))),
        ("dataset", f"{run.best.get('dataset', '')}" + (f" ({dataset['classes']} classes, {dataset['images']} images)"
                                                         if {"classes", "images"} <= set(dataset) else "")),
        ("sampler", str(settings.get("sampler", ""))),
        ("epochs per trial", str(settings.get("epochs", ""))),
        ("scheduler", str(settings.get("scheduler", ""))),
        ("seed", str(settings.get("seed", ""))),
        ("parallelism", f"{settings.get('concurrency', '')} trials x {settings.get('cpus_per_trial', '')} CPU"
         if settings else ""),
        ("training time (sum over trials)", f"{float(trials['seconds'].sum()):.0f} s" if len(trials) else ""),
        ("wall time", _duration(manifest)),
        ("ran on", str(manifest.get("ray_address") or "")),
        ("versions", ", ".join(f"{k} {versions[k]}" for k in ("scalesearch", "torch", "ray") if k in versions)),
    ]  # fmt: skip
    return [(key, value) for key, value in rows if value]


def search_section(run: Run, trials: pd.DataFrame) -> str:
    """How the search went, as a two-column table."""
    return markdown_table([{"": k, "value": v} for k, v in search_rows(run, trials)], ["", "value"]) + "\n"


# --------------------------------------------------------------------------------------------------
# Validation, search views, family


def validation_section(run: Run) -> str:
    """The frontier across budgets (validation.png first), the verdict per phi, or how to get them."""

    table = validation_verdict(run)
    if table is None:
        return (
            "**Validation was not run**, so this report cannot show accuracy against FLOPs across budgets, nor "
            "whether these coefficients beat scaling one dimension. To get it, run\n\n"
            "    scalesearch validate RUN_DIR\n\n"
            "with RUN_DIR this folder: it trains the family scaled with these coefficients against depth-only, "
            "width-only and resolution-only scaling at equal measured FLOPs, for several phi and seeds; run "
            "`scalesearch report` again afterwards.\n"
        )
    rows = load_validation(run.path)
    seeds = int(rows["seed"].nunique())
    strategies = ", ".join(dict.fromkeys(rows["strategy"]))
    phis = ", ".join(f"{p:g}" for p in sorted(rows["phi"].unique()))
    text = ""
    if (run.path / VALIDATION_PNG).is_file():
        text += f"![Accuracy vs measured FLOPs across phi: compound vs single-dimension]({VALIDATION_PNG})\n\n"
    text += (
        f"Strategies {strategies} at phi {phis} ({seeds} seed(s) each), all planned onto the same measured FLOPs "
        "target (target^phi times the proxy base); validation.csv records the multipliers actually trained. "
        "Compound minus the best single-dimension baseline, per phi:\n\n"
        + markdown_table(verdict_records(table), VERDICT_COLUMNS)
        + f"\n\n{verdict_note(rows)}\n"
    )
    return text


def views_section(run: Run) -> str:
    """search.png and frontier.png, each with a sentence on what it shows."""
    parts = []
    if (run.path / runs.SEARCH_PNG).is_file():
        parts.append(
            f"![The shares simplex: networks trained, requests, candidates, tie region]({runs.SEARCH_PNG})\n\n"
            "Each trained network at its realized compute shares, coloured by accuracy; faint circles are the "
            "shares the sampler requested, joined to the network they were mapped to; rings mark the confirmed "
            "candidates (mean ± std), the shaded band or hull the tie region, the star the chosen network.\n"
        )
    if (run.path / runs.FRONTIER_PNG).is_file():
        parts.append(
            f"![Accuracy vs FLOPs of every search trial, all on one budget band]({runs.FRONTIER_PNG})\n\n"
            f"Every trial of the search sits on one budget band ({_budget(run.best)}): this strip shows the "
            "spread of accuracy at that budget, not a frontier across budgets (that is the validation plot).\n"
        )
    return "\n".join(parts) or "No plots in the run folder.\n"


def _rule(rule: Mapping[str, Any]) -> str:
    """The pure rule's multipliers as 'depth / width / resolution'."""
    if not rule:
        return ""
    return f"{_number(rule.get('depth_mult'), 3)} / {_number(rule.get('width_mult'), 3)} / {rule.get('resolution', '')}"


def family_rows(family: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per variant: its multipliers, measured cost, the measured FLOPs ratio against its
    target ratio (and how far off), and the pure rule's multipliers before calibration."""
    rows = []
    for v in family.get("variants", []):
        target = v.get("target_ratio", v.get("theoretical_ratio"))
        measured = v.get("flops_ratio")
        off = float(measured) / float(target) - 1 if measured is not None and target else None
        rule = v.get("rule") or {}
        rows.append(
            {
                "name": str(v["name"]),
                "phi": f"{float(v['phi']):g}",
                "depth_mult": _number(v.get("depth_mult"), 3),
                "width_mult": _number(v.get("width_mult"), 3),
                "resolution": str(v.get("resolution", "")),
                "params": f"{int(v['params']):,}" if v.get("params") is not None else "",
                "GFLOPs": _number(float(v["flops"]) / 1e9, 3) if v.get("flops") is not None else "",
                "target ratio": f"{float(target):g}" if target is not None else "",
                "measured ratio": _number(measured, 3),
                "off target": f"{off:+.1%}" if off is not None else "",
                "rule: depth / width / res": _rule(rule),
                "calibrated": "yes" if v.get("calibrated") else "no",
                "upsampling": {True: "yes", False: "no"}.get(v.get("upsampling"), ""),
                "check": str(v.get("check", "")),
            }
        )
    return rows


def family_section(family: Mapping[str, Any]) -> str:
    """The scaled family: how it was planned, and each variant's measured against target cost."""
    coefficients = family.get("coefficients") or {}
    head = f"Family `{family.get('family', '?')}` of space `{family.get('space', '?')}`"
    if coefficients:
        head += (f", alpha = {float(coefficients['alpha']):.4g}, beta = {float(coefficients['beta']):.4g}, "
                 f"gamma = {float(coefficients['gamma']):.4g}")  # fmt: skip
    text = head + f"; rule: {family.get('rule', '?')}.\n\n"
    if family.get("rule_description"):
        text += f"{family['rule_description']}.\n\n"
    if family.get("flops_convention"):
        text += f"FLOPs: {family['flops_convention']}.\n\n"
    evidence = evidence_line(dict(family))
    text += (f"**Evidence:** {evidence}. _check_: what `scalesearch validate` said of the rule against the best "
             "single dimension at that phi at proxy scale; _upsampling_: resolution above the data's native size.\n\n"
             if evidence else "")  # fmt: skip
    text += markdown_table(family_rows(family), FAMILY_COLUMNS) + "\n"
    variants = family.get("variants", [])
    misses = [(abs(float(v["flops_ratio"]) / float(v["target_ratio"]) - 1), v["name"])
              for v in variants if v.get("flops_ratio") is not None and v.get("target_ratio")]  # fmt: skip
    if misses:
        worst, name = max(misses)
        text += f"\nLargest miss of a variant's FLOPs target: {name}, {worst:.1%} off.\n"
    return text


# --------------------------------------------------------------------------------------------------
# The report


def build_report(run: Run) -> str:
    """The report's Markdown; links the plots that exist in the run folder (`write_report` draws them)."""

    trials = trials_frame(run.trials())
    parts = [
        f"# scalesearch run `{run.path.name}`\n",
        "## The answer\n",
        answer_section(run),
        "## Confirmed candidates\n",
        confirm_section(run),
        "## How the search went\n",
        search_section(run, trials),
        "## Validation: accuracy vs FLOPs across phi, compound vs single-dimension scaling\n",
        validation_section(run),
        "## The search's views\n",
        views_section(run),
    ]
    if run.family is not None:
        parts += ["## The scaled family\n", family_section(run.family)]
    files = [f"- [{name}]({name}): {what}" for name, what in RUN_FILES.items() if (run.path / name).is_file()]
    parts += ["## Files\n", "\n".join(files) + "\n"]
    return "\n".join(parts)


def draw_plots(run: Run) -> None:
    """(Re)draw the run's plots from its files: search.png and frontier.png from trials.csv and
    best.json, validation.png from validation.csv when validate has run."""

    if (run.path / runs.TRIALS).is_file():
        plot_search([run.path], run.path / runs.SEARCH_PNG)
        plot_frontier([run.path], run.path / runs.FRONTIER_PNG)
    if (run.path / runs.VALIDATION_CSV).is_file():
        title = f"Accuracy vs measured FLOPs across φ: {run.path.name}"
        searched = run.best.get("phi") if isinstance(run.best.get("phi"), int | float) else None
        plot_validation(summarize(load_validation(run.path)), run.path / VALIDATION_PNG, title=title,
                        searched_phi=searched)  # fmt: skip


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's plots and write the report (RUN_DIR/report.md unless `out`); returns its path.

    A report written elsewhere than the run folder would break its relative links, so `out` must
    lie in RUN_DIR.
    """

    run = read_run(run_dir)
    path = Path(out) if out is not None else run.path / REPORT_MD
    if path.resolve().parent != run.path.resolve():
        raise UserError(f"--out {str(out)!r} must be a file inside {str(run_dir)!r}, so the report's links resolve")
    if path.is_dir():
        raise UserError(f"--out {str(path)!r} is a folder; give a file name")
    if not (run.path / runs.TRIALS).is_file():
        # Without it the report would say "trials: 0" for a search that trained networks.
        raise UserError(f"{run.path / runs.TRIALS} not found: the report is built from the run's trials")
    draw_plots(run)
    runs.write_text(path, build_report(run))
    return path

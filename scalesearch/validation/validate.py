"""Check the paper's central claim on the user's own data: compound scaling beats scaling one dimension.

For each φ the run's chosen rule and each single-dimension baseline are planned exactly as the search
plans its trials: the realizable network at φ (the run's constraint within target^φ ± tolerance of the
proxy base, see `planner`) nearest the rule's shares on the simplex. The chosen rule asks for the
chosen network's realized shares (best.json); the baselines ask for a pure dimension, (1, 0, 0)
depth, (0, 1, 0) width, (0, 0, 1) resolution. At proxy scale a pure dimension is not always
realizable (whole blocks, channel divisors, whole pixels): the baseline then trains the network
nearest it, and validation.csv records its realized shares and share error, so a "depth" baseline
that is really 80% depth is visible rather than hidden. φ = 0 is the proxy base for every strategy.
Networks that several strategies share (the base, or a baseline whose nearest network is the
chosen one) train once per seed. Everything trains with the run's dataset and recipe through the
runner (`runner.run_jobs` on Ray), several seeds each.

`run_validation` writes validation.csv as jobs finish (atomically: an interrupted validation leaves the
finished rows) and validation.png at the end, then marks family.json with the outcome at each φ
(`mark_family`). The file's schema and its reading and writing are `outputs.runs`'s; what the rows
say (summary per strategy and φ, the verdict) is `outputs.verdict`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from scalesearch.config.recipe import as_recorded
from scalesearch.config.settings import FINGERPRINT_DEFAULTS, SearchSettings
from scalesearch.config.spaces import load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Coefficients, Shares
from scalesearch.execution.cluster import ray_session
from scalesearch.execution.runner import Progress, jobs_for, run_jobs
from scalesearch.outputs.family_table import render_family, with_evidence
from scalesearch.outputs.plots import plot_validation
from scalesearch.outputs.runs import (
    BASELINES,
    COMPOUND,
    FAMILY_JSON,
    FAMILY_MD,
    SEARCH,
    VALIDATION_COLUMNS,
    VALIDATION_CSV,
    VALIDATION_PNG,
    run_space,
    write_json,
    write_text,
    write_validation,
)
from scalesearch.outputs.verdict import checks_by_phi, summarize, verdict
from scalesearch.planning.data_view import data_view
from scalesearch.planning.planner import (
    Network,
    measurer_for,
    proxy_base,
    realizable_set,
    requested_shares,
    share_error,
)

if TYPE_CHECKING:
    import pandas as pd

    from scalesearch.config.settings import FINGERPRINT_DEFAULTS, SearchSettings
    from scalesearch.config.spaces import SearchSpace
    from scalesearch.execution.runner import Outcome, TrainJob
    from scalesearch.models.spec import ModelSpec
    from scalesearch.outputs.runs import Run
    from scalesearch.planning.planner import Network

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


def baseline_shares(name: str) -> Shares:
    """The pure direction a single-dimension baseline asks for on the shares simplex."""
    table = {"depth": Shares(1.0, 0.0, 0.0), "width": Shares(0.0, 1.0, 0.0), "resolution": Shares(0.0, 0.0, 1.0)}
    if name not in table:
        raise UserError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
    return table[name]


def parse_baselines(text: str) -> list[str]:
    """`--baselines depth,width,resolution` as a list; UserError names an unknown one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UserError("no baselines given (choose from depth, width, resolution)")
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline(s) {', '.join(unknown)} (choose from {', '.join(BASELINES)})")
    return list(dict.fromkeys(names))  # keep order, drop repeats


# Steps beyond the searched φ that validate checks by default: B1..B7 extrapolate past the evidence,
# and at φ + 2 a width-only network is 2x wider than at φ, so an advantage that came only from the
# proxy's narrow early layers shows up as a verdict that flips.
HELD_OUT_STEPS = 2


def default_phis(searched_phi: float) -> tuple[float, ...]:
    """0 (the base), every whole φ up to the searched one, the searched φ and HELD_OUT_STEPS beyond it."""
    whole = range(int(searched_phi) + 1)
    return tuple(sorted({*map(float, whole), *(searched_phi + step for step in range(HELD_OUT_STEPS + 1))}))


@dataclass(frozen=True)
class ValidationOptions:
    """What `scalesearch validate` was asked for; None fields fall back to the run's own settings."""

    phis: tuple[float, ...] = ()  # empty: default_phis(the searched φ)
    baselines: tuple[str, ...] = BASELINES
    seeds: int = 3  # seeds per (strategy, φ): the run's seed, seed + 1, ...
    epochs: int | None = None  # training epochs (default: the search's)
    concurrency: int | None = None  # jobs at once (default: the search's)
    cpus_per_trial: float | None = None  # CPUs and torch threads per job (default: the search's)
    address: str | None = None  # a Ray cluster (default: the search's, else a local Ray)
    quiet: bool = False  # no progress line

    def validate(self) -> None:
        """UserError for options that cannot work, before anything starts."""
        if self.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {self.seeds}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        for name in self.baselines:
            baseline_shares(name)


@dataclass(frozen=True)
class Planned:
    """One (strategy, φ) of the validation, planned like a search trial (trained or not)."""

    strategy: str
    phi: float
    row: dict[str, Any]  # validation.csv's planning columns: requested and realized shares, share error, cost
    spec: ModelSpec | None  # what to train; None when no network meets the budget at this φ
    reason: str  # why nothing is trained, else ""

    @property
    def network(self) -> str:
        """The trained network's key ("" when nothing is trained)."""
        return str(self.row.get("network") or "")


def run_settings(run: Run, **changes: Any) -> SearchSettings:
    """The run's SearchSettings from search.json, its space resolved on this machine, `changes` applied.

    The recorded space path is absolute on the machine that searched; elsewhere the shipped space of
    that name is used (`runs.run_space`). UserError when search.json is missing or unreadable.
    """

    if not run.settings:
        raise UserError(f"{run.path / SEARCH} is missing or has no settings; cannot retrain this run")
    known = {f.name for f in fields(SearchSettings)}
    # A run made before the resolution mapping saw its stored images as they are: "off".
    recorded = {"base_resolution": FINGERPRINT_DEFAULTS["base_resolution"], **run.settings}
    # ... and one made before the recipe's init trained with the official init.
    if isinstance(recorded.get("recipe"), Mapping):
        recorded["recipe"] = as_recorded(recorded["recipe"])
    try:
        settings = SearchSettings(**{k: v for k, v in recorded.items() if k in known})
    except TypeError as error:
        raise UserError(f"{run.path / SEARCH}: unreadable settings ({error})") from None
    settings = replace(settings, space_path=run_space(run).path, verbose=False)
    try:
        settings.validate()
    except UserError as error:
        # The recorded settings are damaged, not a flag the user gave: name the file and its key.
        message = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), str(error))
        raise UserError(f"{run.path / SEARCH}: damaged setting: {message}") from None
    settings = replace(settings, **changes)
    settings.validate()
    return settings


def search_settings(run: Run, options: ValidationOptions) -> SearchSettings:
    """The run's SearchSettings (from search.json) with this validation's overrides applied."""
    changes: dict[str, Any] = {"quiet": options.quiet}
    for name in ("epochs", "concurrency", "cpus_per_trial", "address"):
        value = getattr(options, name)
        if value is not None:
            changes[name] = value
    return run_settings(run, **changes)


def chosen_shares(run: Run) -> Shares:
    """The shares the run's chosen rule asks for: best.json's realized shares (older runs: the shares
    of its coefficients)."""

    shares = run.best.get("shares")
    if isinstance(shares, dict) and all(
        isinstance(shares.get(k), int | float) for k in ("depth", "width", "resolution")
    ):
        return Shares(float(shares["depth"]), float(shares["width"]), float(shares["resolution"]))
    coefficients = Coefficients(float(run.best["alpha"]), float(run.best["beta"]), float(run.best["gamma"]))
    return requested_shares(coefficients, float(run.best.get("target", 2.0)))


def plan_validation(
    space: SearchSpace,
    shares: Shares,
    *,
    phis: Sequence[float],
    baselines: Sequence[str],
    num_classes: int,
    in_channels: int,
    constraint: str = "flops",
) -> list[Planned]:
    """Plan the chosen rule (`shares`) and every baseline at every φ as the search plans a trial: the
    realizable network at φ on `constraint` nearest the strategy's shares (planner.plan, with the set
    measured once per φ). φ = 0 is the proxy base for every strategy.

    Returns one Planned per (strategy, φ), compound first. All aim at the same measured budget
    (target^φ times the proxy base's `constraint`), so accuracy differences are not budget differences.
    """

    strategies = [(COMPOUND, shares)] + [(name, baseline_shares(name)) for name in baselines]
    planned = []
    for phi in phis:
        if phi == 0:
            base = base_network(space, num_classes=num_classes, in_channels=in_channels, constraint=constraint)
            for strategy, requested in strategies:
                planned.append(Planned(strategy, phi, {**_requested(requested), **base_row(base)}, base.spec, ""))
            continue
        found = realizable_set(space, num_classes=num_classes, in_channels=in_channels, phi=phi, constraint=constraint)
        for strategy, requested in strategies:
            if not found.networks:
                reason = infeasible_reason(space, phi, constraint)
                planned.append(
                    Planned(strategy, phi, {**_requested(requested), "constraint": constraint}, None, reason)
                )
                continue
            network = found.nearest(requested)
            row = {**_requested(requested), "share_error": share_error(requested, network), **network.row(space.target)}
            planned.append(Planned(strategy, phi, row, network.spec, ""))
    return planned


def infeasible_reason(space: SearchSpace, phi: float, constraint: str) -> str:
    """Why nothing trains at φ: no realizable network of the proxy meets its budget band."""
    return (
        f"no network of {space.name}'s proxy meets {space.target:g}^{phi:g} ± {space.tolerance:.0%} "
        f"of the base's {constraint}"
    )


def _requested(shares: Shares) -> dict[str, float]:
    return {
        "requested_share_depth": shares.depth,
        "requested_share_width": shares.width,
        "requested_share_resolution": shares.resolution,
    }


def base_network(space: SearchSpace, *, num_classes: int, in_channels: int, constraint: str = "flops") -> Network:
    """The proxy base (φ = 0, where every rule is the base) as a Network: every multiplier 1, measured.

    The realizable set leaves the base out (it has no direction on the simplex), so its `shares`
    raise ValueError; `base_row` gives its validation.csv columns.
    """

    spec = proxy_base(space, num_classes=num_classes, in_channels=in_channels)
    params, flops = measurer_for(space.proxy_family, in_channels).measured(spec)
    return Network(
        spec=spec,
        params=params,
        flops=flops,
        ratio=1.0,
        constraint=constraint,
        depth=1.0,
        width=1.0,
        resolution=1.0,
        flops_ratio=1.0,
    )


def base_row(base: Network) -> dict[str, Any]:
    """The proxy base's validation.csv columns: no shares, no coefficients, no share error."""
    return {
        "network": base.key,
        "realized_depth": base.depth,
        "realized_width": base.width,
        "realized_resolution": base.resolution,
        "depth_mult": base.spec.depth_mult,
        "width_mult": base.spec.width_mult,
        "resolution": base.spec.resolution,
        "params": base.params,
        "flops": base.flops,
        "flops_ratio": base.flops_ratio,
        "constraint": base.constraint,
        "constraint_ratio": base.ratio,
    }


def validation_rows(
    planned: Sequence[Planned], seeds: Sequence[int], results: Mapping[tuple[str, int], Outcome]
) -> pd.DataFrame:
    """validation.csv's rows: one per (strategy, φ, seed) that finished or cannot train; a network
    not trained yet has no row. `results` is keyed by (network key, seed)."""
    import pandas as pd

    rows = []
    for item in planned:
        for seed in seeds:
            row: dict[str, Any] = {"strategy": item.strategy, "phi": item.phi, "seed": seed, **item.row}
            if item.spec is None:
                row.update(status="infeasible", final_val_accuracy=None, seconds=0.0, error=item.reason)
            elif (item.network, seed) in results:
                outcome = results[(item.network, seed)]
                completed = outcome.status == "completed" and bool(outcome.accuracies)
                row.update(
                    status=outcome.status,
                    final_val_accuracy=outcome.accuracies[-1] if completed else None,
                    seconds=round(outcome.seconds, 2),
                    error=outcome.error,
                )
            else:
                continue
            rows.append(row)
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


def run_validation(run: Run, options: ValidationOptions) -> pd.DataFrame:
    """Plan, train and record the validation of a finished run; returns validation.csv's rows.

    Writes RUN_DIR/validation.csv (atomically) as each job finishes, and RUN_DIR/validation.png at the
    end. Raises KeyboardInterrupt on Ctrl-C, with the finished rows already in validation.csv (and a
    validation.png of an earlier validation removed, since it no longer matches).
    """
    import time

    from scalesearch.data.datasets import load_dataset

    options.validate()
    settings = search_settings(run, options)
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset)
    view = data_view(space, dataset.native_size, settings.base_resolution, dataset=settings.dataset)
    phis = options.phis or default_phis(settings.phi)
    seeds = [settings.seed + i for i in range(options.seeds)]
    progress = Progress("validate", 0, quiet=options.quiet)
    progress.show("planning", f"measuring the realizable networks on the {settings.constraint} budget")
    planned = plan_validation(
        space,
        chosen_shares(run),
        phis=phis,
        baselines=options.baselines,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        constraint=settings.constraint,
    )
    keys, jobs = _jobs(planned, seeds, settings, view=view.resize)
    results: dict[tuple[str, int], Outcome] = {}
    out = run.path / VALIDATION_CSV

    def save(index: int, outcome: Outcome) -> None:
        results[keys[index]] = outcome
        write_validation(out, validation_rows(planned, seeds, results))

    write_validation(out, validation_rows(planned, seeds, results))
    (run.path / VALIDATION_PNG).unlink(missing_ok=True)
    progress.total, progress.start = len(jobs), time.monotonic()
    try:
        if jobs:
            with ray_session(settings, space=space):
                progress.show("start", f"{len({network for network, _ in keys})} network(s) x {len(seeds)} seed(s)")
                run_jobs(jobs, concurrency=settings.concurrency, cpus=settings.cpus_per_trial,
                         gpus=settings.gpus_per_trial, progress=progress, on_done=save)  # fmt: skip
    finally:
        progress.close()
    rows = validation_rows(planned, seeds, results)
    summary = summarize(rows)
    plot_validation(summary, run.path / VALIDATION_PNG, title=f"Compound vs single-dimension: {run.path.name}",
                    searched_phi=settings.phi)  # fmt: skip
    mark_family(run, settings, checks_by_phi(verdict(summary)), native=view.native)
    return rows


def mark_family(run: Run, settings: SearchSettings, checks: Mapping[float, str], *, native: int) -> None:
    """family.json and family.md again, each variant marked with what validation said at its φ."""
    if run.family is None:
        return
    family = with_evidence(run.family, native=native, searched_phi=settings.phi, checks=checks)
    write_json(run.path / FAMILY_JSON, family)
    write_text(run.path / FAMILY_MD, render_family(family, "markdown"))


def _jobs(
    planned: Sequence[Planned], seeds: Sequence[int], settings: SearchSettings, *, view: int | None
) -> tuple[list[tuple[str, int]], list[TrainJob]]:
    """The (network key, seed) of each job, and the jobs: keyed by what is trained, not by strategy, so
    each distinct network trains once per seed (labelled with every strategy and φ that wants it)."""

    specs: dict[str, ModelSpec] = {}
    labels: dict[str, list[str]] = {}
    for item in planned:
        if item.spec is not None:
            specs.setdefault(item.network, item.spec)
            labels.setdefault(item.network, []).append(f"{item.strategy} φ={item.phi:g}")
    keys = [(network, seed) for network in specs for seed in seeds]
    jobs = [
        replace(job, measure_costs=False)  # costs are the search's business, not the comparison's
        for job in jobs_for(settings, [(specs[n], seed, " = ".join(labels[n])) for n, seed in keys], view=view)
    ]
    return keys, jobs

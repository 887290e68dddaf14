"""Running a search: rounds of proposals trained on Ray Tune, the confirm stage, and finishing.

1. The realizable set (planner): the concrete proxy networks on the budget band, with their
   realized shares; its coverage of the simplex is printed and recorded.
2. Rounds of `batch` proposals (proposals): each proposal is mapped to the nearest realizable
   network; a network proposed again trains again with the next seed (a deliberate extra seed, never
   the same run twice). A round is proposed only after the previous rounds finished, and the early
   stop ("asha") compares a trial at half its epochs with the top third of the *earlier rounds* only:
   the trials are the same at any concurrency and in any completion order.
3. Confirm (confirm): the best `confirm_top` networks get `confirm_seeds` seeds each; the choice is
   the best mean, with the networks statistically tied with it. The confirm jobs are the last round
   of the same Tune run, so they train in the workers the search already started (imports, CUDA
   context and dataset paid once per worker).
4. Finish: best.json with the chosen network's realized coefficients, family.json planned onto its
   budgets, plots, manifest.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

from scalesearch.config.settings import SearchSettings
from scalesearch.config.spaces import SearchSpace, load_space
from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Shares, coefficients_from_shares, parse_phis
from scalesearch.execution.cluster import absolute_dataset_spec, check_local_resources, machine, ray_session, versions
from scalesearch.execution.runner import Progress, tune_trainable
from scalesearch.outputs import runs
from scalesearch.planning.data_view import DataView, data_view
from scalesearch.planning.planner import RealizableSet, check_fits, realizable_set
from scalesearch.search.finish import finish_run
from scalesearch.search.proposals import check_sampler
from scalesearch.search.rounds import SearchState
from scalesearch.search.tuning import Recorder, RoundSearcher, RoundStopper

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


def search_set(settings: SearchSettings, space: SearchSpace, dataset: Any) -> RealizableSet:
    """The realizable networks a search with these settings trains on `dataset` (also `--dry-run`)."""
    return realizable_set(space, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                          phi=settings.phi, constraint=settings.constraint)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The search


def check_settings(settings: SearchSettings) -> None:
    """UserError for settings a search cannot run with, before anything starts."""
    check_sampler(settings.sampler, objectives=2 if settings.objective_cost() else 1)
    settings.validate()


def run_search(settings: SearchSettings, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) a search and write its run folder; returns best.json's contents.

    Raises KeyboardInterrupt when interrupted: finished trials are already on disk, and the same
    command with --resume carries on from them.
    """
    from scalesearch.data.datasets import load_dataset

    check_settings(settings)
    settings = replace(settings, dataset=absolute_dataset_spec(settings.dataset))
    space = load_space(settings.space_path)
    out, done = runs.prepare(settings, resume=resume)
    runs.check_writable(out)
    _check_family_fits(settings, space)
    check_local_resources(settings)
    dataset = load_dataset(settings.dataset)  # fail on bad data here, not in every worker
    view = data_view(space, dataset.native_size, settings.base_resolution, dataset=settings.dataset)
    say_view(view, quiet=settings.quiet)
    progress = Progress("search", 0, quiet=settings.quiet)
    found = _plan_networks(settings, space, dataset, progress)
    with ray_session(settings, space=space) as where, contextlib.ExitStack() as stack:
        if not resume:
            runs.start(out, settings)  # only now: a bad flag or a busy machine leaves no folder behind
        stack.enter_context(runs.locked(out))
        state = SearchState(settings, space, found, done, out, progress, view=view.resize)
        progress.total = state.total
        progress.done = sum(1 for n in done if n < state.total)
        manifest = _manifest(settings, command, resume, where, dataset, found)
        manifest["data_view"] = view.to_dict()
        runs.write_json(out / runs.MANIFEST, manifest)
        interrupted = False
        try:
            manifest["trials_wall_seconds"] = _run_rounds(state)
        except KeyboardInterrupt:
            interrupted = True
        progress.close()
    if interrupted or not state.complete():
        raise KeyboardInterrupt

    return finish_run(
        settings,
        space,
        found,
        state.rows,
        state.confirmed,
        out,
        manifest,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
    )


def say_view(view: DataView, *, quiet: bool) -> None:
    """Before training: what the proxies see and why (stdout), and a note when r_base is far from the
    data's native size (stderr, even with --quiet: the answer would reflect the set-up)."""
    if not quiet:
        print(view.describe())
    note = view.note()
    if note:
        print(note, file=sys.stderr)


def _check_family_fits(settings: SearchSettings, space: SearchSpace) -> None:
    """UserError now, not after the trials, when a bad or absurd --family-phis could not be measured
    (the family sized with the centre's coefficients)."""

    centre = coefficients_from_shares(Shares(1 / 3, 1 / 3, 1 / 3), target=space.target)
    check_fits(space, centre, parse_phis(settings.family_phis))


def _plan_networks(settings: SearchSettings, space: SearchSpace, dataset: Any, progress: Progress) -> RealizableSet:
    """The realizable set the search trains (shown as planning); UserError when it is empty."""
    progress.show("planning", "measuring the realizable networks on the budget band")
    found = search_set(settings, space, dataset)
    if not found.networks:
        raise UserError(
            f"no network of {space.name}'s proxy meets {space.target:g}^{settings.phi:g} ± "
            f"{space.tolerance:.0%} of the base's {settings.constraint}"
        )
    return found


def _manifest(
    settings: SearchSettings, command: str, resume: bool, where: str, dataset: Any, found: RealizableSet
) -> dict[str, Any]:
    return {
        "command": command,
        "settings": settings.to_dict(),
        "versions": versions(),
        "machine": machine(),
        "seed": settings.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ended": None,
        "ray_address": where,
        "resumed": resume,
        "dataset": {"spec": settings.dataset, "classes": dataset.num_classes, "images": int(dataset.labels.shape[0])},
        "realizable": {
            "networks": len(found.networks),
            "coverage": found.coverage,
            "phi": found.phi,
            "goal": found.goal,
            "tolerance": found.tolerance,
        },
    }


def _run_rounds(state: SearchState) -> float:
    """Train the search's rounds and then its confirm stage in one Ray Tune run (its workers reused
    throughout); returns the wall seconds of that phase."""
    from ray import tune

    settings = state.settings

    searcher, scheduler, recorder = RoundSearcher(state), RoundStopper(state), Recorder(state)
    trainable = tune.with_resources(tune_trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    state.refresh("start")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scalesearch-ray-") as storage:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=-1,
                max_concurrent_trials=settings.concurrency,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="trials",
                storage_path=storage,
                verbose=2 if settings.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[recorder],
            ),
        )
        tuner.fit()
    if state.write_error is not None:
        raise state.write_error
    return round(time.monotonic() - start, 2)

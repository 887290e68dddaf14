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
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from scalesearch import runs
from scalesearch.cluster import absolute_dataset_spec, check_local_resources, machine, ray_session, versions
from scalesearch.errors import UserError
from scalesearch.planner import RealizableSet, realizable_set
from scalesearch.proposals import Proposer, make_proposer
from scalesearch.runner import Progress, TrainJob, tune_trainable
from scalesearch.scaling import Shares, share_distance
from scalesearch.settings import SearchSettings
from scalesearch.spaces import SearchSpace

REQUESTED_COLUMNS = ("requested_share_depth", "requested_share_width", "requested_share_resolution")


class SearchState:
    """The driver's view of a search: finished rows, the rounds planned, and what runs now."""

    def __init__(
        self,
        settings: SearchSettings,
        space: SearchSpace,
        found: RealizableSet,
        rows: dict[int, dict[str, Any]],
        out: Path,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.space = space
        self.found = found
        self.networks = {n.key: n for n in found.networks}
        self.rows = rows
        self.out = out
        self.progress = progress
        self.total = search_total(settings, found)
        self.running: dict[int, dict[str, Any]] = {}
        self.round = -1
        self.plan: list[dict[str, Any]] = []
        self.handed: set[int] = set()
        self.confirming = False  # the search's rounds are over; `plan` is the confirm stage's
        self.confirmed: list[str] = []  # the networks the confirm stage retrains, best first
        cost = settings.objective_cost()
        self.proposer: Proposer = make_proposer(
            settings.sampler,
            seed=settings.seed,
            trials=settings.trials,
            grid_points=[n.shares for n in found.spread(self.total)],
            directions=2 if cost else 1,
            verbose=settings.verbose,
        )
        self.inject = os.environ.get("SCALESEARCH_INJECT_FAULT", "")
        self.write_error: runs.RunWriteError | None = None

    # Rounds ------------------------------------------------------------------------------------

    def round_numbers(self, number: int) -> list[int]:
        start = number * self.settings.batch
        return list(range(start, min(self.total, start + self.settings.batch)))

    def round_finished(self) -> bool:
        return all(planned["trial"] in self.rows for planned in self.plan)

    def complete(self) -> bool:
        """Every round and the confirm stage finished (False after an interruption)."""
        return self.confirming and self.round_finished()

    def next_round(self) -> bool:
        """Plan the next round (telling the proposer the round before), after the last one the confirm
        stage; False when nothing is left."""
        if self.confirming:
            return False
        if self.round >= 0:
            for number in self.round_numbers(self.round):
                self._tell(self.rows[number])
        self.round += 1
        numbers = self.round_numbers(self.round)
        if not numbers:
            self.confirming = True
            self.plan = self._confirm_plan()
            return bool(self.plan)
        proposals = self.proposer.propose(self.round, len(numbers))
        self.plan = []
        for number, shares in zip(numbers, proposals):
            self.plan.append(self._planned(number, shares))  # in order: a repeated network takes the next seed
        return True

    def _planned(self, number: int, shares: Shares) -> dict[str, Any]:
        network = self.found.nearest(shares)
        earlier = [r for r in [*self.rows.values(), *self.plan] if r["network"] == network.key and r["trial"] < number]
        return {
            "trial": number,
            "stage": "search",
            "round": self.round,
            "seed": self.settings.seed + len(earlier),
            "requested_share_depth": shares.depth,
            "requested_share_width": shares.width,
            "requested_share_resolution": shares.resolution,
            "share_error": share_distance(shares, network.shares),
            **network.row(self.space.target),
        }

    def _tell(self, row: dict[str, Any]) -> None:
        shares = Shares(row["realized_share_depth"], row["realized_share_width"], row["realized_share_resolution"])
        accuracy = row.get("final_val_accuracy")
        if row["status"] == "failed" or accuracy is None:
            self.proposer.tell(shares, None)
            return
        cost = self.settings.objective_cost()
        if cost is None:
            self.proposer.tell(shares, [accuracy])
            return
        from scalesearch.cost import COSTS

        value = row.get(COSTS[cost].column)
        self.proposer.tell(shares, None if value is None else [accuracy, float(value)])

    def next_trial(self) -> dict[str, Any] | str | None:
        """The next planned row to train; None: wait for the round; "done": the search is over."""
        while True:
            for planned in self.plan:
                number = planned["trial"]
                if number not in self.rows and number not in self.handed:
                    self.handed.add(number)
                    return planned
            if not self.round_finished():
                return None
            if not self.next_round():
                return "done"

    def _confirm_plan(self) -> list[dict[str, Any]]:
        """The confirm stage's rows (stage "confirm"), planned from the search's rows alone and
        numbered on from the search's, so a resumed stage has the numbers an uninterrupted one has
        (rows already finished are skipped like a round's); also switches the progress line."""
        from scalesearch import confirm

        settings = self.settings
        if settings.confirm_top == 0:
            return []
        search_rows = {n: r for n, r in self.rows.items() if r["stage"] == "search"}
        self.confirmed = [score.network for score in confirm.scores(search_rows)][: settings.confirm_top]
        top, seeds = settings.confirm_top, settings.confirm_seeds
        wanted = confirm.plan(search_rows, top=top, seeds=seeds, base_seed=settings.seed)
        planned = []
        for number, (network_key, seed) in enumerate(wanted, start=self.total):
            template = next(r for r in search_rows.values() if r["network"] == network_key)
            row = {k: template.get(k) for k in self.networks[network_key].row(self.space.target)}
            unrequested = dict.fromkeys(("round", *REQUESTED_COLUMNS, "share_error"))
            planned.append({**row, **unrequested, "trial": number, "stage": "confirm", "seed": seed})
        if planned:
            done = sum(1 for row in planned if row["trial"] in self.rows)
            self.progress.title, self.progress.total, self.progress.done = "confirm", len(planned), done
            self.progress.start, self.progress.start_done = time.monotonic(), done
            self.refresh("confirm")
        return planned

    # Jobs and rows -----------------------------------------------------------------------------

    def job(self, planned: dict[str, Any]) -> TrainJob:
        network = self.networks[planned["network"]]
        measured = any(r["network"] == network.key and r.get("activations") is not None for r in self.rows.values())
        fault_kind, _, fault_trial = self.inject.partition(":")
        return TrainJob(
            space_path=self.space.path,
            dataset=self.settings.dataset,
            recipe=self.settings.training_recipe().to_dict(),
            spec=asdict(network.spec),
            seed=planned["seed"],
            threads=max(1, int(self.settings.cpus_per_trial)),
            device="cuda" if self.settings.gpus_per_trial > 0 else "cpu",
            measure_costs=not measured and planned["stage"] == "search",
            label=f"trial {planned['trial']}" if planned["stage"] == "search" else f"confirm {network.key}",
            inject_fault=fault_kind if fault_trial == str(planned["trial"]) else "",
        )

    def finish(self, number: int, row: dict[str, Any]) -> None:
        """Record a finished trial and rewrite trials.csv (a failed write stops the search)."""
        self.running.pop(number, None)
        merged = {**row}
        if merged.get("activations") is None:
            for other in self.rows.values():
                if other["network"] == merged["network"] and other.get("activations") is not None:
                    merged.update({k: other.get(k) for k in runs.WORKER_COST_KEYS})
                    break
        self.rows[number] = merged
        try:
            runs.write_trials(self.out / runs.TRIALS, self.rows, pareto_column=self.settings.pareto_column())
        except runs.RunWriteError as error:
            if self.write_error is None:
                self.write_error = error  # Tune swallows callback errors: the searcher ends the search
            return
        if row.get("stage") == "search":
            self.progress.done = sum(1 for n in self.rows if n < self.total)
            self.refresh(f"trial {number} {row['status']}")
        else:
            self.progress.done = sum(1 for planned in self.plan if planned["trial"] in self.rows)
            shown = f"{row['final_val_accuracy']:.4f}" if row["status"] == "completed" else row["status"]
            self.refresh(f"confirm {row['network']} seed {row['seed']}: {shown}")

    def refresh(self, event: str = "") -> None:
        if self.confirming:
            seeds, running = self.settings.confirm_seeds, len(self.running)
            self.progress.show(event, f"{len(self.confirmed)} networks, {seeds} seeds each · running {running}")
            return
        counts = {s: sum(1 for r in self.rows.values() if r["status"] == s) for s in runs.STATUSES}
        best = max(runs.trained(self.rows), key=lambda r: r["final_val_accuracy"], default=None)
        shown = f"{best['final_val_accuracy']:.4f} (trial {best['trial']})" if best else "-"
        detail = (
            f"round {max(self.round, 0) + 1} · running {len(self.running)} · completed {counts['completed']} · "
            f"stopped {counts['stopped']} · failed {counts['failed']} · best {shown}"
        )
        self.progress.show(event, detail)

    def rung_reference(self, round_number: int, epoch: int) -> list[float]:
        """Accuracies at `epoch` of the search trials of rounds before `round_number`."""
        values = []
        for row in self.rows.values():
            if row.get("stage") == "search" and row["round"] < round_number and row.get("val_accuracies"):
                curve = [float(v) for v in str(row["val_accuracies"]).split(";")]
                if len(curve) >= epoch:
                    values.append(curve[epoch - 1])
        return values


def search_set(settings: SearchSettings, space: SearchSpace, dataset: Any) -> RealizableSet:
    """The realizable networks a search with these settings trains on `dataset` (also `--dry-run`)."""
    return realizable_set(space, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                          phi=settings.phi, constraint=settings.constraint)  # fmt: skip


def search_total(settings: SearchSettings, found: RealizableSet) -> int:
    """Proposals of the search: --trials (grid: at most the realizable set)."""
    if settings.sampler == "grid":
        return min(settings.trials, len(found.networks))
    return settings.trials


# --------------------------------------------------------------------------------------------------
# The search


def run_search(settings: SearchSettings, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) a search and write its run folder; returns best.json's contents.

    Raises KeyboardInterrupt when interrupted: finished trials are already on disk, and the same
    command with --resume carries on from them.
    """
    from scalesearch.data import load_dataset
    from scalesearch.spaces import load_space

    settings.validate()
    settings = replace(settings, dataset=absolute_dataset_spec(settings.dataset))
    space = load_space(settings.space_path)
    out, done = runs.prepare(settings, resume=resume)
    runs.check_writable(out)
    _check_family_fits(settings, space)
    check_local_resources(settings)
    dataset = load_dataset(settings.dataset)  # fail on bad data here, not in every worker
    progress = Progress("search", 0, quiet=settings.quiet)
    found = _plan_networks(settings, space, dataset, progress)
    with ray_session(settings, space=space) as where, contextlib.ExitStack() as stack:
        if not resume:
            runs.start(out, settings)  # only now: a bad flag or a busy machine leaves no folder behind
        stack.enter_context(runs.locked(out))
        state = SearchState(settings, space, found, done, out, progress)
        progress.total = state.total
        progress.done = sum(1 for n in done if n < state.total)
        manifest = _manifest(settings, command, resume, where, dataset, found)
        runs.write_json(out / runs.MANIFEST, manifest)
        interrupted = False
        try:
            manifest["trials_wall_seconds"] = _run_rounds(state)
        except KeyboardInterrupt:
            interrupted = True
        progress.close()
    if interrupted or not state.complete():
        raise KeyboardInterrupt
    from scalesearch.finish import finish_run

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


def _check_family_fits(settings: SearchSettings, space: SearchSpace) -> None:
    """UserError now, not after the trials, when a bad or absurd --family-phis could not be measured
    (the family sized with the centre's coefficients)."""
    from scalesearch.planner import check_fits
    from scalesearch.scaling import coefficients_from_shares, parse_phis

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
    from scalesearch.tuning import Recorder, RoundSearcher, RoundStopper

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

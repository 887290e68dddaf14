"""A search's rounds and their state: the finished rows, the rounds planned from them, what runs now.

`SearchState` is the one object the driver (`search.driver`) and the Tune adapters (`search.tuning`)
share: it plans each round of proposals from the earlier rounds' results alone (mapped to the nearest
realizable network, a network proposed again trained with the next seed), decides the order-free early
stop, and plans the confirm stage as the last round.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scalesearch.config.settings import SearchSettings
from scalesearch.config.spaces import SearchSpace
from scalesearch.core.scaling import Shares, share_distance
from scalesearch.execution.runner import Progress, TrainJob
from scalesearch.outputs import runs
from scalesearch.planning.planner import RealizableSet
from scalesearch.search import confirm
from scalesearch.search.proposals import Proposer, make_proposer

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

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
        *,
        view: int | None = None,
    ) -> None:
        self.settings = settings
        self.view = view  # the side every trial's images are resized to first (planning.data_view), None: native
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
        from scalesearch.models.cost import COSTS

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
            view=self.view,
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


def search_total(settings: SearchSettings, found: RealizableSet) -> int:
    """Proposals of the search: --trials (grid: at most the realizable set)."""
    if settings.sampler == "grid":
        return min(settings.trials, len(found.networks))
    return settings.trials

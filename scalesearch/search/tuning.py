"""The thin Ray Tune adapter of a search: a Searcher that hands out a round's planned trials, a
scheduler with ASHA's rule made order-free, and a callback that turns results into trials.csv rows.
All three only read and update the search's `SearchState` (`search.rounds`); imported by the driver when trials run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from scalesearch.execution.runner import Outcome
from scalesearch.outputs import runs

if TYPE_CHECKING:
    from scalesearch.search.rounds import SearchState

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


class RoundSearcher(Searcher):
    """Hands out the planned trials of the current round; waits (None) until the round is done."""

    def __init__(self, state: SearchState) -> None:
        super().__init__(metric="val_accuracy", mode="max")
        self.state = state

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.state.write_error is not None:
            return Searcher.FINISHED  # type: ignore[return-value]
        planned = self.state.next_trial()
        if planned == "done":
            return Searcher.FINISHED  # type: ignore[return-value]
        if planned is None or isinstance(planned, str):
            return None
        self.state.running[planned["trial"]] = {**planned, "start": time.monotonic(), "accuracies": [], "costs": {}}
        self.state.refresh()
        return {"trial_number": planned["trial"], "job": asdict(self.state.job(planned))}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """The recorder writes the row; nothing to learn here before the round ends."""


class RoundStopper(FIFOScheduler):
    """ASHA's rule made order-free: at half the epochs, stop a trial below the top third of the
    earlier rounds' trials at that epoch (the first round and the confirm stage are never stopped)."""

    def __init__(self, state: SearchState) -> None:
        super().__init__()
        self.state = state

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self.state.write_error is not None:
            return TrialScheduler.STOP  # nothing more can be saved: stop at once
        if self.state.settings.scheduler != "asha" or "outcome" in result:
            return TrialScheduler.CONTINUE
        rung = max(1, self.state.settings.epochs // 2)
        number = trial.config.get("trial_number")
        if (
            number not in self.state.running
            or self.state.running[number]["stage"] != "search"  # the confirm stage trains every epoch
            or int(result.get("epoch", 0)) != rung
            or rung >= self.state.settings.epochs
        ):
            return TrialScheduler.CONTINUE
        reference = sorted(self.state.rung_reference(self.state.running[number]["round"], rung), reverse=True)
        if len(reference) < 3:
            return TrialScheduler.CONTINUE
        keep = reference[max(0, len(reference) // 3 - 1)]
        return TrialScheduler.STOP if float(result["val_accuracy"]) < keep else TrialScheduler.CONTINUE


class Recorder(Callback):
    """Turns Tune's results into trials.csv rows."""

    def __init__(self, state: SearchState) -> None:
        self.state = state

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        number = trial.config.get("trial_number")
        if number not in self.state.running:
            return
        if "outcome" in result:
            outcome = Outcome(**{**result["outcome"], "accuracies": tuple(result["outcome"]["accuracies"])})
            self._record(number, outcome)
            return
        running = self.state.running[number]
        running["accuracies"].append(float(result["val_accuracy"]))
        running["layout"] = result.get("layout", "")
        running["costs"].update({k: result[k] for k in runs.WORKER_COST_KEYS if k in result})
        self.state.refresh()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        number = trial.config.get("trial_number")
        if number in self.state.running:  # stopped early: no closing report
            running = self.state.running[number]
            outcome = Outcome(
                "stopped",
                tuple(running["accuracies"]),
                time.monotonic() - running["start"],
                running.get("layout", ""),
                running["costs"],
            )
            self._record(number, outcome)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        number = trial.config.get("trial_number")
        if number in self.state.running:
            running = self.state.running[number]
            reason = "worker lost (killed, e.g. for memory)"
            error = getattr(trial, "error_msg", None) or ""
            if "memory" in str(error).lower():
                reason = "worker killed: out of memory"
            self._record(number, Outcome("failed", (), time.monotonic() - running["start"], error=reason))

    def _record(self, number: int, outcome: Outcome) -> None:
        running = self.state.running[number]
        planned = {k: v for k, v in running.items() if k not in ("start", "accuracies", "costs", "layout")}
        row = {**planned, **outcome.row()}
        if outcome.status == "completed" and len(outcome.accuracies) < self.state.settings.epochs:
            row["status"] = "stopped"
        self.state.finish(number, row)

"""One way to train a candidate: `train_job` trains one network for one seed and returns a typed
outcome (a failure is an outcome too, never an exception). Used by the search (through the Tune
trainable below), the confirm stage, `validate` (`run_jobs` on Ray tasks) and `scalesearch train`.
Also the one progress display of long work.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from scalesearch.config.recipe import Recipe
from scalesearch.config.spaces import load_space
from scalesearch.execution.cluster import session_started_here
from scalesearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from scalesearch.config.settings import SearchSettings
    from scalesearch.models.spec import ModelSpec

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one network for one seed (picklable, no global state)."""

    space_path: str
    dataset: str
    recipe: Mapping[str, Any]
    spec: Mapping[str, Any]  # ModelSpec fields
    seed: int
    threads: int = 1
    device: str = "cpu"
    measure_costs: bool = True  # latency, activations, memory: once per network, not per seed
    # The side the images are resized to before the network's resolution (planning.data_view: the proxy
    # sees the data with the target base's headroom); None: straight from the stored images.
    view: int | None = None
    label: str = ""  # what progress shows
    # Testing hook, from $SCALESEARCH_INJECT_FAULT ("raise", "nan" or "exit"): this job fails that way, so the
    # failure path (a real exception in a real Ray worker) can be tested end to end.
    inject_fault: str = ""

    def model_spec(self) -> ModelSpec:

        return ModelSpec(**self.spec)


@dataclass(frozen=True)
class Outcome:
    """What training one network for one seed gave."""

    status: str  # "completed" or "failed" (the search marks early-stopped ones "stopped")
    accuracies: tuple[float, ...] = ()  # validation accuracy after each epoch
    seconds: float = 0.0
    layout: str = ""  # the memory layout the trainer chose
    costs: Mapping[str, Any] = field(default_factory=dict)  # runs.WORKER_COST_KEYS, when measured
    error: str = ""  # why it failed, one line

    def row(self) -> dict[str, Any]:
        """trials.csv columns of this outcome."""
        return {
            "status": self.status,
            "final_val_accuracy": self.accuracies[-1] if self.accuracies and self.status != "failed" else None,
            "best_val_accuracy": max(self.accuracies) if self.accuracies and self.status != "failed" else None,
            "val_accuracies": ";".join(repr(a) for a in self.accuracies),
            "epochs_run": len(self.accuracies),
            "seconds": round(self.seconds, 2),
            "layout": self.layout,
            "error": self.error,
            **dict(self.costs),
        }


def failure_reason(error: BaseException) -> str:
    """One line that says why a job failed."""
    from scalesearch.training.trainer import TrainingDiverged

    if isinstance(error, TrainingDiverged):
        return f"diverged: {error}"[:300]
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return "out of memory"
    text = str(error).strip()
    return (text.splitlines()[-1] if text else type(error).__name__)[:300]


def train_job(job: TrainJob, on_epoch: Callable[[float, Any, Mapping[str, Any]], None] | None = None) -> Outcome:
    """Train `job`'s network for its seed; `on_epoch(accuracy, metrics, costs)` after each epoch (Tune's
    early stopping ends the job there with SystemExit, which passes through). Failures come back as an
    Outcome, not an exception."""
    start = time.monotonic()
    accuracies: list[float] = []
    layout = ""
    try:
        from scalesearch.data.datasets import load_dataset
        from scalesearch.training.trainer import train_model

        family = load_space(job.space_path).proxy_family
        spec = job.model_spec()
        if job.inject_fault == "exit":
            os._exit(3)  # the worker process dies, as when the kernel or Ray's memory monitor kills it
        if job.inject_fault:
            raise RuntimeError("diverged: injected non-finite loss" if job.inject_fault == "nan" else "injected fault")
        costs = measure_job_costs(family.build(spec), spec, job) if job.measure_costs else {}

        def epoch_done(metrics: Any) -> None:
            nonlocal layout
            accuracies.append(float(metrics.val_accuracy))
            layout = str(getattr(metrics, "layout", "") or layout)
            if on_epoch is not None:
                on_epoch(float(metrics.val_accuracy), metrics, costs)

        train_model(
            lambda: family.build(spec),
            load_dataset(job.dataset),
            Recipe.from_mapping(job.recipe),
            resolution=spec.resolution,
            view=job.view,
            seed=job.seed,
            threads=job.threads,
            device=job.device,
            on_epoch=epoch_done,
        )
    except Exception as error:  # a job's failure is a row, never a lost search
        return Outcome("failed", tuple(accuracies), time.monotonic() - start, layout, {}, failure_reason(error))
    return Outcome("completed", tuple(accuracies), time.monotonic() - start, layout, costs, "")


def measure_job_costs(model: Any, spec: ModelSpec, job: TrainJob) -> dict[str, Any]:
    """Activations, latency at batch 1 and 32, and the peak memory of one training step at the
    recipe's batch size, on the job's device and threads. An untrained copy: weights do not change
    these."""
    from scalesearch.models.cost import measure_runtime_costs, torch_threads

    with torch_threads(job.threads):
        costs = measure_runtime_costs(
            model,
            resolution=spec.resolution,
            in_channels=spec.in_channels,
            device=job.device,
            latency_batch=32,
            memory_batch=int(job.recipe.get("batch_size", 32)),
        )
    return {**costs, "cost_device": job.device}


# --------------------------------------------------------------------------------------------------
# Ray: many jobs as tasks (confirm, validate), one job as a Tune trial (search)


def run_jobs(
    jobs: Sequence[TrainJob],
    *,
    concurrency: int,
    cpus: float,
    gpus: float,
    progress: Progress | None = None,
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Run `jobs` as Ray tasks, at most `concurrency` at once, in an already started Ray session;
    returns their outcomes in the order of `jobs`, and hands each to `on_done(index, outcome)` as it
    finishes (so it is saved at once). Ctrl-C propagates; what is running ends with the session.

    Running tasks are cancelled only in the caller's own Ray session: Ray 2.60's cancel can abort the
    driver when a task finishes at that instant (ray-project/ray#54846, "Tried to complete task that was
    not pending"), and a session ray_session started ends every task anyway when it shuts down."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_job)
    outcomes: dict[int, Outcome] = {}
    waiting = list(enumerate(jobs))
    running: dict[Any, int] = {}
    try:
        while waiting or running:
            while waiting and len(running) < concurrency:
                index, job = waiting.pop(0)
                running[task.remote(job)] = index
            ready, _ = ray.wait(list(running), num_returns=1)
            index = running.pop(ready[0])
            try:
                outcomes[index] = ray.get(ready[0])
            except Exception as error:  # the worker itself died (killed for memory, lost node)
                outcomes[index] = Outcome("failed", error=f"worker lost: {failure_reason(error)}")
            if progress is not None:
                progress.job_done(jobs[index], outcomes[index])
            if on_done is not None:
                on_done(index, outcomes[index])
    except KeyboardInterrupt:
        if not session_started_here():
            for ref in running:
                ray.cancel(ref, force=True)
        raise
    return [outcomes[i] for i in range(len(jobs))]


def tune_trainable(config: dict[str, Any]) -> None:
    """The Tune trainable: the job arrives in `config["job"]`. Every epoch is reported (the scheduler
    may stop the trial there), the first with the network's measured costs; a closing report carries
    the outcome, so a failure is a result with a reason rather than an exception to parse."""
    from ray import tune

    job = TrainJob(**config["job"])

    def on_epoch(accuracy: float, metrics: Any, costs: Mapping[str, Any]) -> None:
        layout = str(getattr(metrics, "layout", "") or "")
        first = costs if metrics.epoch == 1 else {}
        tune.report({"val_accuracy": accuracy, "epoch": int(metrics.epoch), "layout": layout, **first})

    outcome = train_job(job, on_epoch)
    tune.report(
        {"val_accuracy": outcome.accuracies[-1] if outcome.accuracies else 0.0, "epoch": -1, "outcome": asdict(outcome)}
    )


# --------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One compact line on stderr: what is done of the total, what runs, the best so far, elapsed and
    ETA. Redrawn in place on a terminal; one line per event in a log; nothing when quiet."""

    def __init__(self, title: str, total: int, *, done: int = 0, quiet: bool = False) -> None:
        self.title = title
        self.total = total
        self.done = done
        self.start_done = done
        self.start = time.monotonic()
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.detail = ""

    def show(self, event: str = "", detail: str | None = None) -> None:
        """Redraw (terminal) or print one line for `event` (log)."""
        if detail is not None:
            self.detail = detail
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        new = self.done - self.start_done
        eta = f"{(self.total - self.done) * elapsed / new:.0f}s" if new > 0 and self.done < self.total else "-"
        text = f"{self.title}: [{self.done}/{self.total}] {self.detail} · {elapsed:.0f}s elapsed, eta {eta}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif event:
            sys.stderr.write(f"{event}: {text}\n")

    def job_done(self, job: TrainJob, outcome: Outcome) -> None:
        """Count a finished job and show its result."""
        self.done += 1
        shown = f"{outcome.accuracies[-1]:.4f}" if outcome.status == "completed" and outcome.accuracies else "failed"
        self.show(f"{job.label or 'job'} seed {job.seed}: {shown}")

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def jobs_for(
    settings: SearchSettings,
    specs: Sequence[tuple[ModelSpec, int, str]],
    *,
    view: int | None = None,
    inject_fault: str = "",
) -> list[TrainJob]:
    """TrainJobs for (spec, seed, label) triples under a search's settings, seeing the data at `view`."""
    device = "cuda" if settings.gpus_per_trial > 0 else "cpu"
    return [
        TrainJob(
            space_path=settings.space_path,
            dataset=settings.dataset,
            recipe=settings.training_recipe().to_dict(),
            spec=asdict(spec),
            seed=seed,
            threads=max(1, int(settings.cpus_per_trial)),
            device=device,
            label=label,
            view=view,
            inject_fault=inject_fault,
        )
        for spec, seed, label in specs
    ]

"""The coefficient search: proposals on the constraint surface, proxies trained in parallel on Ray Tune.

Who does what:
- `Proposer` (driver): the next (α, β, γ): the grid's lattice in order, or an Optuna sampler (tpe, gp,
  random) over the compute shares on the simplex, which is an exact parameterization of
  α·β²·γ² = T. Each proposal n uses a sampler seeded with seed + n, so proposal n is a function of
  (seed, n, the trials finished before it): a resumed search proposes what an uninterrupted one would.
- `CoefficientSearcher` (driver, a Ray Tune Searcher): measures each proposal's proxy with fvcore
  (`plan_candidate`), records infeasible ones without training, hands feasible ones to Tune. It is our
  own Optuna bridge rather than Ray's OptunaSearch because resume is rebuilt from trials.csv (the run's
  source of truth) and infeasible points must be filtered before any worker is spent on them.
- `run_trial` (Ray worker): measures the candidate's activations, latency and training-step memory on
  the trial's device (`measure_trial_costs`), then trains it, reporting every epoch so ASHA can stop it.
- `RunRecorder` (driver, a Ray Tune Callback): writes trials.csv atomically as trials finish and draws
  the live progress line.

`--constraint COST` puts the budget on flops (default), latency, activations or params (see
candidates.py). `--objective accuracy,COST` makes the Optuna study multi-objective (maximize accuracy,
minimize COST; TPE, GP and random samplers all take two directions); trials.csv's `pareto` column
marks the non-dominated completed trials, and best.json takes the most accurate of them and lists
the front.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from scalesearch.cluster import absolute_dataset_spec, machine, ray_session, versions
from scalesearch.errors import UserError
from scalesearch.recipe import Recipe
from scalesearch.results import atomic_write_json, atomic_write_text
from scalesearch.scaling import Coefficients, Shares, coefficients_from_shares, grid_candidates
from scalesearch.spaces import SearchSpace

SAMPLERS = ("grid", "tpe", "gp", "random")
SCHEDULERS = ("none", "asha")
STATUSES = ("completed", "stopped", "infeasible", "failed")
TRIAL_COLUMNS = [
    "trial", "status", "alpha", "beta", "gamma", "product", "share_depth", "share_width", "share_resolution",
    "realized_depth", "realized_width", "realized_resolution", "depth_mult", "width_mult", "resolution",
    "corrected", "params", "flops", "flops_ratio", "final_val_accuracy", "best_val_accuracy",
    "epochs_run", "seconds", "error",
    # Costs beside FLOPs. constraint/constraint_ratio come from planning (every row); the measured
    # ones from the worker, on the trial's device (empty for infeasible rows, which never reach one).
    "constraint", "constraint_ratio", "activations", "latency_batch1_s", "latency_throughput_s",
    "throughput_batch", "peak_train_memory_bytes", "memory_batch", "cost_device", "pareto",
]  # fmt: skip
# What a cost named in --constraint / --objective is, as a trials.csv column (lower is better).
COST_COLUMNS = {
    "flops": "flops",
    "latency": "latency_batch1_s",
    "activations": "activations",
    "params": "params",
}
# Worker-measured costs: small batches and few repeats keep the overhead at a fraction of a second
# on a proxy. Latency is a median after warm-up on the trial's own threads and device.
THROUGHPUT_BATCH = 32
COST_WARMUP = 2
COST_REPEATS = 5
# Settings that define a search: a resumed run must match them all.
FINGERPRINT_KEYS = (
    "space_sha256",
    "dataset",
    "sampler",
    "trials",
    "epochs",
    "scheduler",
    "seed",
    "recipe",
    "grid",
    "constraint",
    "objective",
)
# Fingerprint values of keys that searches made before the key existed implicitly had.
FINGERPRINT_DEFAULTS = {"constraint": "flops", "objective": "accuracy"}


@dataclass(frozen=True)
class SearchSettings:
    """Everything one search needs, after merging the space's `search:` defaults with flags."""

    space_path: str
    dataset: str
    sampler: str = "tpe"
    trials: int = 16  # proposals, infeasible ones included; grid: at most this many lattice points
    epochs: int = 4
    scheduler: str = "asha"
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    seed: int = 0
    address: str | None = None
    out: str = ""
    max_failures: int = 0
    recipe: Mapping[str, Any] = field(default_factory=dict)  # Recipe fields (epochs set from `epochs`)
    grid: Mapping[str, Any] = field(default_factory=dict)  # grid bounds and step
    constraint: str = "flops"  # the cost whose ratio to the proxy base must be target^φ (COST_COLUMNS)
    objective: str = "accuracy"  # "accuracy", or "accuracy,COST": maximize accuracy, minimize COST
    family_phis: str = "0-7"  # the variants family.json lists (not part of the fingerprint)
    verbose: bool = False
    quiet: bool = False

    def validate(self) -> None:
        """Raise UserError for settings that cannot work, before anything starts."""
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r} (choose from {', '.join(SAMPLERS)})")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1, got {self.trials}")
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.concurrency < 1:
            raise UserError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise UserError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.max_failures < 0:
            raise UserError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.constraint not in COST_COLUMNS:
            raise UserError(f"unknown constraint {self.constraint!r} (choose from {', '.join(COST_COLUMNS)})")
        self.objective_cost()
        self.training_recipe()

    def objective_cost(self) -> str | None:
        """The cost a multi-objective search minimizes beside accuracy; None for accuracy alone."""
        parts = [part.strip() for part in str(self.objective).split(",")]
        if parts == ["accuracy"]:
            return None
        if len(parts) == 2 and parts[0] == "accuracy" and parts[1] in COST_COLUMNS:
            return parts[1]
        raise UserError(
            f"unknown objective {self.objective!r} (choose accuracy, or accuracy,COST with COST one of "
            f"{', '.join(COST_COLUMNS)})"
        )

    def pareto_cost(self) -> str:
        """The trials.csv column the Pareto front trades accuracy against (FLOPs for accuracy alone)."""
        cost = self.objective_cost()
        return COST_COLUMNS[cost] if cost else "flops"

    def training_recipe(self) -> Recipe:
        """The proxy recipe: the space's recipe with the search's epoch count."""
        return Recipe.from_mapping({**self.recipe, "epochs": self.epochs})


# --------------------------------------------------------------------------------------------------
# Proposals


class Proposer:
    """Proposes coefficients one at a time; told the outcome of each proposal."""

    def __init__(self, settings: SearchSettings, space: SearchSpace, done: Mapping[int, Mapping[str, Any]]):
        self.settings = settings
        self.space = space
        self.pending = [n for n in range(self.total(settings, space)) if n not in done]
        self.study: Any = None
        self.asked: dict[int, Any] = {}
        if settings.sampler != "grid":
            self._make_study(done)

    @staticmethod
    def grid(settings: SearchSettings, space: SearchSpace) -> list[Coefficients]:
        """The lattice the grid sampler walks, from the space's `search.grid` bounds and step."""
        bounds = dict(settings.grid)
        return grid_candidates(
            alpha_range=tuple(bounds.get("alpha", (1.0, 2.0))),
            beta_range=tuple(bounds.get("beta", (1.0, 1.5))),
            gamma_range=tuple(bounds.get("gamma", (1.0, 1.5))),
            step=float(bounds.get("step", 0.05)),
            target=space.target,
            tolerance=space.tolerance,
        )

    @classmethod
    def total(cls, settings: SearchSettings, space: SearchSpace) -> int:
        """How many proposals this search makes."""
        if settings.sampler == "grid":
            return min(settings.trials, len(cls.grid(settings, space)))
        return settings.trials

    def _grid_points(self) -> list[Coefficients]:
        points = self.grid(self.settings, self.space)
        if len(points) > self.settings.trials:
            # Fewer trials than lattice points: an evenly spaced, deterministic subset.
            step = len(points) / self.settings.trials
            points = [points[int(i * step)] for i in range(self.settings.trials)]
        return points

    def _sampler(self, number: int) -> Any:
        import optuna

        seed = self.settings.seed * 100_003 + number
        if self.settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.settings.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(6, max(2, self.settings.trials // 4)))
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(8, max(2, self.settings.trials // 3)),
            multivariate=True,
            constant_liar=True,  # concurrent trials: do not propose the same point twice
        )

    def _make_study(self, done: Mapping[int, Mapping[str, Any]]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.DEBUG if self.settings.verbose else optuna.logging.WARNING)
        cost = self.settings.objective_cost()
        directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"] if cost else ["maximize"]
        self.study = optuna.create_study(directions=directions, sampler=self._sampler(0))
        for number in sorted(done):
            row = done[number]
            shares = share_params(Coefficients(float(row["alpha"]), float(row["beta"]), float(row["gamma"])))
            values = objective_values(row, cost)
            state = optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.FAIL
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=shares,
                    distributions=share_distributions(),
                    values=values,
                    state=state,
                )
            )

    def next(self) -> tuple[int, Coefficients] | None:
        """(trial number, coefficients) of the next proposal, or None when the budget is spent."""
        if not self.pending:
            return None
        number = self.pending.pop(0)
        if self.study is None:
            return number, self._grid_points()[number]
        self.study.sampler = self._sampler(number)
        trial = self.study.ask(share_distributions())
        self.asked[number] = trial
        return number, shares_to_coefficients(trial.params, self.space.target)

    def tell(self, number: int, value: float | list[float] | None, epochs: list[float] | None = None) -> None:
        """Tell the sampler how proposal `number` did: its accuracy, or [accuracy, cost] for a
        multi-objective search (None: failed or infeasible)."""
        if self.study is None or number not in self.asked:
            return
        import optuna

        trial = self.asked.pop(number)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        self.study.tell(trial, value)


def objective_values(row: Mapping[str, Any], cost: str | None) -> list[float] | None:
    """[accuracy] or [accuracy, the objective cost] of a finished trial row; None when untrained."""
    accuracy = _float_or_none(row.get("final_val_accuracy"))
    if accuracy is None:
        return None
    if cost is None:
        return [accuracy]
    value = _float_or_none(row.get(COST_COLUMNS[cost]))
    return None if value is None else [accuracy, value]


def share_distributions() -> dict[str, Any]:
    """Two free coordinates of the shares simplex: the depth share, and width's part of the rest."""
    import optuna

    return {
        "share_depth": optuna.distributions.FloatDistribution(0.0, 1.0),
        "width_part": optuna.distributions.FloatDistribution(0.0, 1.0),
    }


def shares_to_coefficients(params: Mapping[str, float], target: float) -> Coefficients:
    """Stick-breaking: s_d, then s_w = (1 - s_d)·u, s_r = the rest; exactly on α·β²·γ² = target."""
    depth = float(params["share_depth"])
    width = (1.0 - depth) * float(params["width_part"])
    return coefficients_from_shares(Shares(depth, width, max(0.0, 1.0 - depth - width)), target=target)


def share_params(coefficients: Coefficients) -> dict[str, float]:
    """Inverse of shares_to_coefficients for a point (renormalized onto the simplex)."""
    alpha, beta, gamma = (math.log(v) for v in (coefficients.alpha, coefficients.beta, coefficients.gamma))
    total = alpha + 2 * beta + 2 * gamma
    if total <= 0:
        return {"share_depth": 0.0, "width_part": 0.0}
    depth = alpha / total
    rest = 1.0 - depth
    return {"share_depth": depth, "width_part": (2 * beta / total) / rest if rest > 1e-12 else 0.0}


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# The run folder


def fingerprint(settings: SearchSettings) -> dict[str, Any]:
    """What identifies a search, for --resume checks (the space by its content, not its path)."""
    space_sha = hashlib.sha256(Path(settings.space_path).read_bytes()).hexdigest()
    return {
        "space_sha256": space_sha,
        "dataset": settings.dataset,
        "sampler": settings.sampler,
        "trials": settings.trials,
        "epochs": settings.epochs,
        "scheduler": settings.scheduler,
        "seed": settings.seed,
        "recipe": settings.training_recipe().to_dict(),
        "grid": dict(settings.grid),
        "constraint": settings.constraint,
        "objective": settings.objective,
    }


def read_trials(path: Path) -> dict[int, dict[str, Any]]:
    """Finished trials from trials.csv, by trial number."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {int(row["trial"]): row for row in rows if row.get("status") in STATUSES}


def write_trials(path: Path, rows: Mapping[int, Mapping[str, Any]], *, pareto_cost: str = "flops") -> None:
    """All finished trials, sorted by number, atomically; `pareto` marks the completed trials on the
    accuracy-vs-`pareto_cost` Pareto front."""
    front = pareto_trials(rows, pareto_cost)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for number in sorted(rows):
        values = {key: _csv_value(rows[number].get(key)) for key in TRIAL_COLUMNS}
        values["pareto"] = number in front
        writer.writerow(values)
    atomic_write_text(path, buffer.getvalue())


def pareto_trials(rows: Mapping[int, Mapping[str, Any]], cost: str) -> set[int]:
    """Numbers of the completed trials not dominated in (final accuracy up, `cost` column down).

    ASHA-stopped trials trained fewer epochs and are left out, as in best_row. The front is
    plots.pareto_front's, so the column and the plots agree.
    """
    import pandas as pd

    from scalesearch.plots import pareto_front

    points = [
        {"trial": int(number), cost: _float_or_none(row.get(cost)),
         "final_val_accuracy": _float_or_none(row.get("final_val_accuracy"))}
        for number, row in rows.items()
        if row.get("status") == "completed"
    ]  # fmt: skip
    if not points:
        return set()
    front = pareto_front(pd.DataFrame(points), cost=cost)
    return {int(t) for t in front["trial"]}


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.8g}"
    return "" if value is None else value


def prepare_run_dir(settings: SearchSettings, resume: bool) -> tuple[Path, dict[int, dict[str, Any]]]:
    """Check the output folder against --resume; return it and the trials already finished there."""
    out = Path(settings.out)
    meta_path = out / "search.json"
    finished = (out / "best.json").is_file()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not resume:
        if finished:
            raise UserError(f"{out} holds a finished search; choose another --out, or add --resume to reuse it")
        if meta_path.is_file():
            raise UserError(f"{out} holds an unfinished search; add --resume to continue it")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta_path, {"fingerprint": fingerprint(settings), "settings": _settings_dict(settings)})
        return out, {}
    if not meta_path.is_file():
        raise UserError(f"nothing to resume in {out}: no search.json")
    try:
        saved = json.loads(meta_path.read_text(encoding="utf-8"))["fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{meta_path} is not a scalesearch search file") from None
    current = fingerprint(settings)
    differing = [key for key in FINGERPRINT_KEYS if saved.get(key, FINGERPRINT_DEFAULTS.get(key)) != current.get(key)]
    if differing:
        raise UserError(f"{out} holds a different search (differs in: {', '.join(differing)})")
    return out, read_trials(out / "trials.csv")


def _settings_dict(settings: SearchSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["recipe"] = settings.training_recipe().to_dict()
    return data


# --------------------------------------------------------------------------------------------------
# Ray


# --------------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker)


@dataclass(frozen=True)
class TrialSetup:
    """The parts of a trial that are the same for every trial of a search (picklable)."""

    space_path: str
    dataset: str
    recipe: Mapping[str, Any]
    seed: int
    threads: int
    device: str
    # Testing hook, from $SCALESEARCH_INJECT_FAULT ("raise:N" or "nan:N"): trial N fails that way, so
    # the failure path (a real exception in a real Ray worker) can be tested end to end.
    inject_fault: str = ""


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Train the candidate in `config`, reporting every epoch to Tune (ASHA may stop it there)."""
    from ray import tune

    from scalesearch.data import load_dataset
    from scalesearch.families import ModelSpec
    from scalesearch.spaces import load_space
    from scalesearch.train import TrainingDiverged, train_model

    space = load_space(setup.space_path)
    dataset = load_dataset(setup.dataset)
    spec = ModelSpec(**config["spec"])
    family = space.proxy_family

    kind, _, target = setup.inject_fault.partition(":")
    if target and target.isdigit() and int(target) == config["trial_number"]:
        if kind == "nan":
            raise RuntimeError("diverged: injected non-finite loss")
        raise RuntimeError("injected fault")

    costs = measure_trial_costs(family.build(spec), spec, setup)

    def report(metrics: Any) -> None:
        tune.report(
            {
                **costs,
                "val_accuracy": metrics.val_accuracy,
                "val_loss": metrics.val_loss,
                "train_loss": metrics.train_loss,
                "epoch": metrics.epoch,
                "epoch_seconds": metrics.epoch_seconds,
                "images_per_second": metrics.images_per_second,
            }
        )

    try:
        train_model(
            lambda: family.build(spec),
            dataset,
            Recipe.from_mapping(setup.recipe),
            resolution=spec.resolution,
            seed=setup.seed,
            threads=setup.threads,
            device=setup.device,
            on_epoch=report,
        )
    except TrainingDiverged as error:
        raise RuntimeError(f"diverged: {error}") from None
    except MemoryError:
        raise RuntimeError("out of memory") from None
    except RuntimeError as error:
        if "out of memory" in str(error).lower():
            raise RuntimeError("out of memory") from None
        raise


def measure_trial_costs(model: Any, spec: Any, setup: TrialSetup) -> dict[str, Any]:
    """The trials.csv cost columns measured in the worker: activations, latency at batch 1 and
    THROUGHPUT_BATCH, and the peak memory of one training step at the recipe's batch size, on the
    trial's device and thread count. Weights do not change these, so an untrained copy is measured."""
    import torch

    from scalesearch.cost import measure_activations, measure_latency, measure_train_memory

    image = {"resolution": spec.resolution, "in_channels": spec.in_channels}
    memory_batch = int(setup.recipe.get("batch_size", 32))
    previous = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        latency = {
            batch: measure_latency(model, **image, batch_size=batch, device=setup.device, warmup=COST_WARMUP,
                                   repeats=COST_REPEATS)
            for batch in (1, THROUGHPUT_BATCH)
        }  # fmt: skip
        memory = measure_train_memory(model, **image, batch_size=memory_batch, device=setup.device)
        activations = measure_activations(model, **image)
    finally:
        torch.set_num_threads(previous)
    return {
        "activations": activations,
        "latency_batch1_s": latency[1],
        "latency_throughput_s": latency[THROUGHPUT_BATCH],
        "throughput_batch": THROUGHPUT_BATCH,
        "peak_train_memory_bytes": memory,
        "memory_batch": memory_batch,
        "cost_device": setup.device,
    }


WORKER_COST_KEYS = ("activations", "latency_batch1_s", "latency_throughput_s", "throughput_batch",
                    "peak_train_memory_bytes", "memory_batch", "cost_device")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Driver side: searcher, recorder, progress


class Progress:
    """One compact live line: done, running, failed, infeasible, best so far, elapsed and ETA."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.total = total
        self.start = time.monotonic()
        self.start_done = done
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_text = ""

    def show(self, counts: Mapping[str, int], running: int, best: str, event: str | None = None) -> None:
        """Redraw the line (a tty), or print one line per event (a log file)."""
        if self.quiet:
            return
        done = sum(counts.values())
        elapsed = time.monotonic() - self.start
        new = done - self.start_done
        eta = f"{(self.total - done) * elapsed / new:.0f}s" if new > 0 and done < self.total else "-"
        text = (
            f"[{done}/{self.total}] running {running} · completed {counts.get('completed', 0)} · stopped "
            f"{counts.get('stopped', 0)} · failed {counts.get('failed', 0)} · infeasible "
            f"{counts.get('infeasible', 0)} · best {best} · {elapsed:.0f}s elapsed, eta {eta}"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif event and text != self.last_text:
            sys.stderr.write(f"{event}: {text}\n")
        self.last_text = text

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


class RunState:
    """The finished trials of the run, written to trials.csv each time one finishes."""

    def __init__(
        self, out: Path, total: int, rows: dict[int, dict[str, Any]], progress: Progress, pareto_cost: str = "flops"
    ):
        self.out = out
        self.pareto_cost = pareto_cost
        self.total = total
        self.rows = rows
        self.progress = progress
        self.running: dict[int, dict[str, Any]] = {}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows.values():
            counts[row["status"]] += 1
        return counts

    def best_text(self) -> str:
        best = best_row(self.rows)
        if best is None:
            return "-"
        accuracy, alpha, beta, gamma = (float(best[k]) for k in ("final_val_accuracy", "alpha", "beta", "gamma"))
        return f"{accuracy:.4f} (α={alpha:.3f} β={beta:.3f} γ={gamma:.3f})"

    def finish(self, number: int, row: dict[str, Any]) -> None:
        self.running.pop(number, None)
        self.rows[number] = {"trial": number, **row}
        write_trials(self.out / "trials.csv", self.rows, pareto_cost=self.pareto_cost)
        self.refresh(f"trial {number} {row['status']}")

    def refresh(self, event: str | None = None) -> None:
        self.progress.show(self.counts(), len(self.running), self.best_text(), event)


def best_row(rows: Mapping[int, Mapping[str, Any]], cost: str = "flops") -> Mapping[str, Any] | None:
    """The chosen trial: highest final accuracy among completed trials (then the lower `cost` column,
    FLOPs by default, then the lower number). The most accurate completed trial is always on the
    accuracy-vs-cost Pareto front, so this is also a multi-objective run's choice.

    ASHA-stopped trials trained fewer epochs, so they compete only when nothing completed.
    """
    scored = [
        r
        for r in rows.values()
        if r.get("status") == "completed" and _float_or_none(r.get("final_val_accuracy")) is not None
    ]
    if not scored:
        scored = [r for r in rows.values() if _float_or_none(r.get("final_val_accuracy")) is not None]
    if not scored:
        return None

    def key(r: Mapping[str, Any]) -> tuple[float, float, int]:
        spent = _float_or_none(r.get(cost))
        return float(r["final_val_accuracy"]), -(spent if spent is not None else math.inf), -int(r["trial"])

    return max(scored, key=key)


def make_searcher(
    settings: SearchSettings, space: SearchSpace, state: RunState, num_classes: int, in_channels: int
) -> Any:
    """A Ray Tune Searcher that proposes, measures and filters candidates, and tells the sampler."""
    from ray.tune.search import Searcher

    from scalesearch.candidates import plan_candidate

    class CoefficientSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__(metric="val_accuracy", mode="max")
            self.proposer = Proposer(settings, space, state.rows)
            self.numbers: dict[str, int] = {}

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            while True:
                proposal = self.proposer.next()
                if proposal is None:
                    # Tune's documented sentinel for "no more trials".
                    return Searcher.FINISHED  # type: ignore[return-value]
                number, coefficients = proposal
                candidate = plan_candidate(space, coefficients, num_classes=num_classes, in_channels=in_channels,
                                           constraint=settings.constraint)  # fmt: skip
                row = candidate.row(space.target)
                if not candidate.feasible:
                    self.proposer.tell(number, None)
                    state.finish(number, {**row, "status": "infeasible", "epochs_run": 0, "seconds": 0.0,
                                          "error": candidate.reason})  # fmt: skip
                    continue
                self.numbers[trial_id] = number
                state.running[number] = {**row, "start": time.monotonic(), "accuracies": []}
                state.refresh()
                return {"trial_number": number, "spec": asdict(candidate.spec)}

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            number = self.numbers.pop(trial_id, None)
            if number is None:
                return
            # The recorder may have moved the trial from running to rows already.
            row = {**state.rows.get(number, {}), **state.running.get(number, {}), **(result or {})}
            row["final_val_accuracy"] = None if error else row.get("val_accuracy")
            values = objective_values(row, settings.objective_cost())
            self.proposer.tell(number, values)

    return CoefficientSearcher()


def make_recorder(settings: SearchSettings, state: RunState) -> Any:
    """A Ray Tune Callback that turns finished trials into trials.csv rows."""
    from ray.tune import Callback

    class Recorder(Callback):
        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            number = trial.config.get("trial_number")
            if number in state.running:
                state.running[number].update({k: result[k] for k in WORKER_COST_KEYS if k in result})
                state.running[number]["accuracies"].append(float(result["val_accuracy"]))
                state.refresh()

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._finish(trial, error=None)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._finish(trial, error=_error_text(trial))

        def _finish(self, trial: Any, error: str | None) -> None:
            number = trial.config.get("trial_number")
            if number is None or number not in state.running:
                return
            running = state.running[number]
            accuracies = running.pop("accuracies")
            start = running.pop("start")
            status = "failed" if error else ("completed" if len(accuracies) >= settings.epochs else "stopped")
            state.finish(
                number,
                {
                    **running,
                    "status": status,
                    "final_val_accuracy": accuracies[-1] if accuracies and not error else None,
                    "best_val_accuracy": max(accuracies) if accuracies and not error else None,
                    "epochs_run": len(accuracies),
                    "seconds": round(time.monotonic() - start, 2),
                    "error": error or "",
                },
            )

    return Recorder()


def _error_text(trial: Any) -> str:
    """The last line of a failed trial's error: the reason, without the traceback."""
    text = ""
    with contextlib.suppress(Exception):
        error = trial.get_error()
        text = str(getattr(error, "cause", None) or error or "")
    if not text:
        with contextlib.suppress(Exception):
            text = Path(trial.error_file).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for prefix in ("RuntimeError: ", "ray.exceptions.RayTaskError: "):
        reason = reason.split(prefix, 1)[-1]
    return reason[:300]


def run_search(settings: SearchSettings, *, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) a search and write its run folder; returns best.json's contents.

    Raises KeyboardInterrupt when interrupted: finished trials are already on disk, and the same
    command with --resume carries on from them.
    """
    from ray import tune

    from scalesearch.data import load_dataset
    from scalesearch.spaces import load_space

    settings.validate()
    settings = replace(settings, dataset=absolute_dataset_spec(settings.dataset))
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset)  # fail on bad data here, not in every worker
    interrupted = False
    with ray_session(settings) as where:
        out, done = prepare_run_dir(settings, resume)
        total = Proposer.total(settings, space)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        progress = Progress(total, len(done), settings.quiet)
        state = RunState(out, total, done, progress, pareto_cost=settings.pareto_cost())
        device = "cuda" if settings.gpus_per_trial > 0 else "cpu"
        setup = TrialSetup(
            space_path=space.path,
            dataset=settings.dataset,
            recipe=settings.training_recipe().to_dict(),
            seed=settings.seed,
            threads=max(1, int(settings.cpus_per_trial)),
            device=device,
            inject_fault=os.environ.get("SCALESEARCH_INJECT_FAULT", ""),
        )
        manifest: dict[str, Any] = {
            "command": command,
            "settings": _settings_dict(settings),
            "versions": versions(),
            "machine": machine(),
            "seed": settings.seed,
            "started": started,
            "ended": None,
            "ray_address": None,
            "resumed": resume,
            "dataset": {
                "spec": settings.dataset,
                "classes": dataset.num_classes,
                "images": int(dataset.labels.shape[0]),
            },
        }
        manifest["ray_address"] = where
        atomic_write_json(out / "manifest.json", manifest)
        if len(done) < total:
            from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

            scheduler = (
                # Early epochs of a proxy are noisy: compare after half the epochs, keep the best third.
                ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=settings.epochs,
                    grace_period=max(1, settings.epochs // 2),
                    reduction_factor=3,
                )
                if settings.scheduler == "asha"
                else FIFOScheduler()
            )
            trainable = tune.with_resources(
                tune.with_parameters(run_trial, setup=setup),
                {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
            )
            state.refresh("start")
            with tempfile.TemporaryDirectory(prefix="scalesearch-ray-") as storage:
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric="val_accuracy",
                        mode="max",
                        search_alg=make_searcher(settings, space, state, dataset.num_classes, dataset.in_channels),
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
                        callbacks=[make_recorder(settings, state)],
                    ),
                )
                fit_start = time.monotonic()
                try:
                    tuner.fit()
                except KeyboardInterrupt:
                    interrupted = True
                # The trial phase alone (no Ray start-up, no family table): what parallelism speeds up.
                manifest["trials_wall_seconds"] = round(time.monotonic() - fit_start, 2)
        progress.close()
    if interrupted or len(state.rows) < total:
        raise KeyboardInterrupt
    return finish_run(settings, space, state.rows, out, manifest, dataset.num_classes, dataset.in_channels)


def finish_run(
    settings: SearchSettings,
    space: SearchSpace,
    rows: Mapping[int, Mapping[str, Any]],
    out: Path,
    manifest: dict[str, Any],
    num_classes: int,
    in_channels: int,
) -> dict[str, Any]:
    """Write best.json, family.json/.md, frontier.png and the final manifest."""
    from scalesearch.export import family_table, render_family
    from scalesearch.plots import plot_frontier

    cost = settings.pareto_cost()
    best = best_row(rows, cost)
    if best is None:
        raise UserError(f"no trial finished training (see {out / 'trials.csv'}); nothing to choose")
    front = sorted(pareto_trials(rows, cost))
    coefficients = Coefficients(float(best["alpha"]), float(best["beta"]), float(best["gamma"]))
    result = {
        "alpha": coefficients.alpha,
        "beta": coefficients.beta,
        "gamma": coefficients.gamma,
        "product": round(coefficients.product, 6),
        "target": space.target,
        "tolerance": space.tolerance,
        "metric": "final_val_accuracy",
        "value": float(best["final_val_accuracy"]),
        "trial": int(best["trial"]),
        "proxy_flops_ratio": float(best["flops_ratio"]),
        "constraint": settings.constraint,
        "proxy_constraint_ratio": _float_or_none(best.get("constraint_ratio")),
        "objective": settings.objective,
        "dataset": settings.dataset,
        "space": space.name,
        "space_path": space.path,
    }
    if settings.objective_cost():
        # A multi-objective run: the chosen point is the most accurate on the front; the rest of the
        # front are the cheaper trade-offs.
        result["pareto_cost"] = cost
        result["pareto_front"] = [
            {
                "trial": number,
                **{k: float(rows[number][k]) for k in ("alpha", "beta", "gamma", "final_val_accuracy")},
                cost: _float_or_none(rows[number].get(cost)),
            }
            for number in front
        ]
    from scalesearch.scaling import parse_phis

    phis = parse_phis(settings.family_phis)
    family = family_table(space, coefficients, phis, num_classes=1000, in_channels=3)
    atomic_write_json(out / "family.json", family)
    atomic_write_text(out / "family.md", render_family(family, "markdown"))
    # best.json marks the run as finished; the plot reads it to mark the chosen point.
    atomic_write_json(out / "best.json", result)
    plot_frontier([out], out / "frontier.png")
    manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(out / "manifest.json", manifest)
    return result

"""Check the paper's central claim on the user's own data: compound scaling beats scaling one dimension.

For each φ, the proxy family is scaled with the run's chosen coefficients and with each single-dimension
baseline that spends the same FLOPs budget (depth only: α = T; width only: β = √T; resolution only:
γ = √T, with T the run's target, 2 by default), so every strategy aims at the same target^φ. Candidates
are planned exactly as the search plans its trials (`plan_candidate`: measured with fvcore, resolution
then width corrected onto the measured FLOPs target), infeasible ones are reported rather than trained,
and the rest train with the run's dataset and recipe for several seeds in parallel on Ray.

Analysis returns DataFrames (`summarize`, `verdict`); `run_validation` writes validation.csv and
validation.png into the run folder.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalesearch.errors import UserError
from scalesearch.scaling import Coefficients

if TYPE_CHECKING:
    import pandas as pd

    from scalesearch.families import ModelSpec
    from scalesearch.runs import Run
    from scalesearch.search import SearchSettings

COMPOUND = "compound"
BASELINES = ("depth", "width", "resolution")
VALIDATION_COLUMNS = [
    "strategy", "phi", "seed", "alpha", "beta", "gamma", "depth_mult", "width_mult", "resolution", "corrected",
    "params", "flops", "flops_ratio", "final_val_accuracy", "seconds", "status", "error",
]  # fmt: skip
# Below this many seeds a standard deviation says little; the verdict says so.
FEW_SEEDS = 5


def baseline_coefficients(name: str, target: float) -> Coefficients:
    """The single-dimension rule that multiplies FLOPs by `target` per φ step (d·w²·r² = target)."""
    root = math.sqrt(target)
    table = {
        "depth": Coefficients(target, 1.0, 1.0),
        "width": Coefficients(1.0, root, 1.0),
        "resolution": Coefficients(1.0, 1.0, root),
    }
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


@dataclass(frozen=True)
class ValidationOptions:
    """What `scalesearch validate` was asked for; None fields fall back to the run's own settings."""

    phis: tuple[float, ...] = (0.0, 1.0, 2.0)
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
            baseline_coefficients(name, 2.0)


@dataclass(frozen=True)
class Planned:
    """One (strategy, φ) of the validation, planned like a search trial (trained or not)."""

    strategy: str
    phi: float
    row: dict[str, Any]  # the candidate's columns (coefficients, multipliers, measured cost)
    spec: ModelSpec | None  # what to train; None when infeasible
    reason: str  # why infeasible, else ""


def search_settings(run: Run, options: ValidationOptions) -> SearchSettings:
    """The run's SearchSettings (from search.json) with this validation's overrides applied."""
    from scalesearch.search import SearchSettings

    if not run.settings:
        raise UserError(f"{run.path / 'search.json'} is missing or has no settings; cannot retrain this run")
    known = {f.name for f in fields(SearchSettings)}
    try:
        settings = SearchSettings(**{k: v for k, v in run.settings.items() if k in known})
    except TypeError as error:
        raise UserError(f"{run.path / 'search.json'}: unreadable settings ({error})") from None
    from scalesearch.runs import run_space

    # The recorded path is absolute on the machine that searched; elsewhere, the shipped space of that name.
    changes: dict[str, Any] = {"quiet": options.quiet, "verbose": False, "space_path": run_space(run).path}
    for name in ("epochs", "concurrency", "cpus_per_trial", "address"):
        value = getattr(options, name)
        if value is not None:
            changes[name] = value
    settings = replace(settings, **changes)
    settings.validate()
    return settings


def plan_validation(
    space: Any,
    coefficients: Coefficients,
    *,
    phis: Sequence[float],
    baselines: Sequence[str],
    num_classes: int,
    in_channels: int,
) -> list[Planned]:
    """Plan compound and every baseline at every φ with the search's candidate planner.

    Returns one Planned per (strategy, φ), compound first. All aim at the same measured FLOPs target
    (target^φ times the proxy base), so accuracy differences are not budget differences.
    """
    from scalesearch.candidates import plan_candidate

    strategies = [(COMPOUND, coefficients)] + [(name, baseline_coefficients(name, space.target)) for name in baselines]
    planned = []
    for phi in phis:
        for strategy, chosen in strategies:
            candidate = plan_candidate(space, chosen, num_classes=num_classes, in_channels=in_channels, phi=phi)
            row = {key: value for key, value in candidate.row(space.target).items() if key in VALIDATION_COLUMNS}
            planned.append(
                Planned(
                    strategy=strategy,
                    phi=phi,
                    row=row,
                    spec=candidate.spec if candidate.feasible else None,
                    reason=candidate.reason,
                )
            )
    return planned


def train_job(
    space_path: str, dataset: str, recipe: Mapping[str, Any], spec: ModelSpec, seed: int, threads: int, device: str
) -> dict[str, Any]:
    """(Ray worker) Train one proxy; returns status, final accuracy, seconds and the error, never raises.

    A failure of one job (divergence, out of memory) is a row in validation.csv, not a lost validation.
    """
    from scalesearch.data import load_dataset
    from scalesearch.recipe import Recipe
    from scalesearch.spaces import load_space
    from scalesearch.train import train_model

    start = time.monotonic()
    try:
        family = load_space(space_path).proxy_family
        result = train_model(
            lambda: family.build(spec),
            load_dataset(dataset),
            Recipe.from_mapping(recipe),
            resolution=spec.resolution,
            seed=seed,
            threads=threads,
            device=device,
        )
    except Exception as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return {"status": "failed", "final_val_accuracy": None, "seconds": round(time.monotonic() - start, 2),
                "error": reason[:300]}  # fmt: skip
    return {"status": "completed", "final_val_accuracy": result.final_val_accuracy,
            "seconds": round(result.seconds, 2), "error": ""}  # fmt: skip


class _Progress:
    """One compact line on stderr: jobs done of total, the last result, elapsed time."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def show(self, event: str) -> None:
        if self.quiet:
            return
        text = f"validate: [{self.done}/{self.total}] {event} · {time.monotonic() - self.start:.0f}s elapsed"
        sys.stderr.write(("\r\033[K" + text) if self.tty else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def train_planned(
    planned: Sequence[Planned], settings: SearchSettings, seeds: Sequence[int], progress: _Progress
) -> dict[tuple[ModelSpec, int], dict[str, Any]]:
    """Train every distinct (spec, seed) on Ray, at most `settings.concurrency` at once.

    At φ = 0 every strategy is the same base model, so jobs are keyed by what is trained, not by
    strategy: each distinct model trains once per seed. Returns train_job's result per key.
    """
    import ray

    from scalesearch.cluster import ray_session

    jobs = list(dict.fromkeys((p.spec, seed) for p in planned if p.spec is not None for seed in seeds))
    labels: dict[ModelSpec, list[str]] = {}
    for item in planned:
        if item.spec is not None:
            labels.setdefault(item.spec, []).append(f"{item.strategy} φ={item.phi:g}")
    progress.total = len(jobs)
    results: dict[tuple[ModelSpec, int], dict[str, Any]] = {}
    if not jobs:
        return results
    device = "cuda" if settings.gpus_per_trial > 0 else "cpu"
    threads = max(1, int(settings.cpus_per_trial))
    recipe = settings.training_recipe().to_dict()
    with ray_session(settings):
        task = ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial)(train_job)
        waiting = list(jobs)
        running: dict[Any, tuple[ModelSpec, int]] = {}
        progress.show("starting")
        while waiting or running:
            while waiting and len(running) < settings.concurrency:
                spec, seed = waiting.pop(0)
                ref = task.remote(settings.space_path, settings.dataset, recipe, spec, seed, threads, device)
                running[ref] = (spec, seed)
            ready, _ = ray.wait(list(running), num_returns=1)
            key = running.pop(ready[0])
            results[key] = ray.get(ready[0])
            progress.done += 1
            outcome = results[key]
            accuracy = outcome["final_val_accuracy"]
            shown = f"{accuracy:.4f}" if accuracy is not None else outcome["status"]
            progress.show(f"{' = '.join(labels[key[0]])} seed {key[1]}: {shown}")
    return results


def validation_rows(
    planned: Sequence[Planned], seeds: Sequence[int], results: Mapping[tuple[ModelSpec, int], Mapping[str, Any]]
) -> pd.DataFrame:
    """validation.csv's rows: one per (strategy, φ, seed); infeasible ones carry the reason and no accuracy."""
    import pandas as pd

    rows = []
    for item in planned:
        for seed in seeds:
            row: dict[str, Any] = {"strategy": item.strategy, "phi": item.phi, "seed": seed, **item.row}
            if item.spec is None:
                row.update(status="infeasible", final_val_accuracy=None, seconds=0.0, error=item.reason)
            else:
                row.update(results[(item.spec, seed)])
            rows.append(row)
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, φ): seeds trained, mean / std / min / max accuracy and the measured FLOPs.

    std is the sample standard deviation over seeds (NaN with one seed). Strategies that were
    infeasible at a φ keep a row with n = 0 and status "infeasible", so tables can say so.
    """
    import pandas as pd

    out = []
    for (strategy, phi), group in rows.groupby(["strategy", "phi"], sort=False):
        trained = group[group["status"] == "completed"]
        accuracy = pd.to_numeric(trained["final_val_accuracy"])
        out.append(
            {
                "strategy": strategy,
                "phi": float(phi),
                "n": int(len(trained)),
                "mean": float(accuracy.mean()) if len(trained) else math.nan,
                "std": float(accuracy.std(ddof=1)) if len(trained) > 1 else math.nan,
                "min": float(accuracy.min()) if len(trained) else math.nan,
                "max": float(accuracy.max()) if len(trained) else math.nan,
                "flops": float(pd.to_numeric(group["flops"]).mean()),
                "flops_ratio": float(pd.to_numeric(group["flops_ratio"]).mean()),
                "status": "infeasible" if (group["status"] == "infeasible").all() else
                          ("completed" if len(trained) else "failed"),
            }
        )  # fmt: skip
    return pd.DataFrame(out)


def verdict(summary: pd.DataFrame) -> pd.DataFrame:
    """Per φ: compound's mean minus the best baseline's mean, the seed spread, and whether it exceeds it.

    The spread is √(s_c² + s_b²), with s the standard deviation over seeds of compound and of that
    baseline: how much one seed of each differs by chance. The difference "exceeds" the spread only
    when |difference| > spread; with one seed there is no spread and no call is made.
    """
    import pandas as pd

    rows = []
    for phi, group in summary.groupby("phi", sort=True):
        compound = group[(group["strategy"] == COMPOUND) & (group["n"] > 0)]
        baselines = group[(group["strategy"] != COMPOUND) & (group["n"] > 0)]
        infeasible = sorted(group[group["status"] == "infeasible"]["strategy"])
        row: dict[str, Any] = {"phi": float(phi), "compound": math.nan, "best_baseline": "", "baseline": math.nan,
                               "difference": math.nan, "spread": math.nan, "exceeds": False, "call": ""}  # fmt: skip
        if compound.empty or baselines.empty:
            row["call"] = "nothing to compare" + (f" (infeasible: {', '.join(infeasible)})" if infeasible else "")
            rows.append(row)
            continue
        best = baselines.sort_values("mean", ascending=False).iloc[0]
        c_mean, c_std = float(compound["mean"].iloc[0]), float(compound["std"].iloc[0])
        spread = math.sqrt(c_std**2 + float(best["std"]) ** 2)
        difference = c_mean - float(best["mean"])
        exceeds = bool(math.isfinite(spread) and abs(difference) > spread)
        if phi == 0:
            call = "phi 0 is the base model for every strategy"
        elif not math.isfinite(spread):
            call = "one seed: no spread, no call"
        elif exceeds:
            call = "compound better" if difference > 0 else f"{best['strategy']} better"
        else:
            call = "within seed noise"
        if infeasible:
            call += f"; infeasible: {', '.join(infeasible)}"
        row.update(compound=c_mean, best_baseline=str(best["strategy"]), baseline=float(best["mean"]),
                   difference=difference, spread=spread, exceeds=exceeds, call=call)  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_note(rows: pd.DataFrame) -> str:
    """One sentence on how the spread was computed and how far to trust it."""
    seeds = int(rows["seed"].nunique()) if len(rows) else 0
    note = (
        f"spread = sqrt(s_compound^2 + s_baseline^2), s the standard deviation over {seeds} seed(s); "
        "'exceeds' means |difference| > spread."
    )
    if seeds < FEW_SEEDS:
        note += f" With {seeds} seed(s) the spread itself is a rough estimate: read small differences as ties."
    return note


def verdict_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The verdict as rows for text/Markdown tables (accuracies as fixed decimals, NaN as blank)."""

    def number(value: Any, signed: bool = False) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return ""
        return f"{value:+.4f}" if signed else f"{value:.4f}"

    return [
        {
            "phi": f"{row['phi']:g}",
            "compound": number(row["compound"]),
            "best baseline": f"{row['best_baseline']} {number(row['baseline'])}".strip(),
            "difference": number(row["difference"], signed=True),
            "spread": number(row["spread"]),
            "exceeds": "yes" if row["exceeds"] else "no",
            "verdict": row["call"],
        }
        for row in table.to_dict("records")
    ]


VERDICT_COLUMNS = ["phi", "compound", "best baseline", "difference", "spread", "exceeds", "verdict"]


def load_validation(run_dir: str | Path) -> pd.DataFrame:
    """RUN_DIR/validation.csv as a DataFrame; UserError if validate has not run there."""
    import pandas as pd

    path = Path(run_dir) / "validation.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: run `scalesearch validate {run_dir}` first")
    return pd.read_csv(path)


def run_validation(run: Run, options: ValidationOptions) -> pd.DataFrame:
    """Plan, train and record the validation of a finished run; returns validation.csv's rows.

    Writes RUN_DIR/validation.csv (atomically) and RUN_DIR/validation.png.
    """
    from scalesearch.data import load_dataset
    from scalesearch.plots import plot_validation
    from scalesearch.results import atomic_write_text
    from scalesearch.spaces import load_space

    options.validate()
    settings = search_settings(run, options)
    space = load_space(settings.space_path)
    dataset = load_dataset(settings.dataset)
    coefficients = Coefficients(float(run.best["alpha"]), float(run.best["beta"]), float(run.best["gamma"]))
    seeds = [settings.seed + i for i in range(options.seeds)]
    progress = _Progress(0, options.quiet)
    progress.show("planning candidates (measuring FLOPs)")
    planned = plan_validation(
        space,
        coefficients,
        phis=options.phis,
        baselines=options.baselines,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
    )
    results = train_planned(planned, settings, seeds, progress)
    progress.close()
    rows = validation_rows(planned, seeds, results)
    buffer = io.StringIO()
    rows.to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_text(run.path / "validation.csv", buffer.getvalue())
    plot_validation(
        summarize(rows), run.path / "validation.png", title=f"Compound vs single-dimension: {run.path.name}"
    )
    return rows

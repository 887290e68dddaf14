"""The run folder: its files, typed trial rows at full precision, the lock, resume, and reading a
finished run back. The one owner of these files: everything else reads and writes runs through here.

    trials.csv     one row per trial (search rounds and the confirm stage), written as each finishes
    search.json    the settings and their fingerprint (a resume must match it)
    manifest.json  command, versions, machine, start/end, where it ran
    best.json      the chosen network's realized coefficients with their spread (marks a finished run)
    family.json / family.md, frontier.png, search.png, validation.csv / validation.png, report.md
    .lock          held while a search runs in the folder
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalesearch.config.settings import differing_keys
from scalesearch.config.spaces import load_space
from scalesearch.core.atomic import atomic_write_json, atomic_write_text
from scalesearch.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from scalesearch.config.settings import SearchSettings
    from scalesearch.config.spaces import SearchSpace

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

TRIALS = "trials.csv"
SEARCH = "search.json"
MANIFEST = "manifest.json"
BEST = "best.json"
FAMILY_JSON = "family.json"
FAMILY_MD = "family.md"
FRONTIER_PNG = "frontier.png"
SEARCH_PNG = "search.png"
VALIDATION_CSV = "validation.csv"
VALIDATION_PNG = "validation.png"
LOCK = ".lock"

# validation.csv (written by `scalesearch validate`): the strategies and the columns of its rows.
COMPOUND = "compound"
BASELINES = ("depth", "width", "resolution")
VALIDATION_COLUMNS = [
    "strategy", "phi", "seed", "network",
    # What the strategy asked for, and how far the trained network lies from it (L∞ on the simplex).
    "requested_share_depth", "requested_share_width", "requested_share_resolution", "share_error",
    # What was trained (planner.Network.row): realized shares, multipliers and coefficients, and its cost.
    "realized_share_depth", "realized_share_width", "realized_share_resolution",
    "realized_depth", "realized_width", "realized_resolution", "alpha", "beta", "gamma",
    "depth_mult", "width_mult", "resolution", "params", "flops", "flops_ratio", "constraint", "constraint_ratio",
    "final_val_accuracy", "seconds", "status", "error",
]  # fmt: skip


STATUSES = ("completed", "stopped", "failed")
WORKER_COST_KEYS = (
    "activations",
    "latency_batch1_s",
    "latency_throughput_s",
    "throughput_batch",
    "peak_train_memory_bytes",
    "memory_batch",
    "cost_device",
)
TRIAL_COLUMNS = [
    "trial",
    "stage",
    "round",
    "status",
    "network",
    "seed",
    # What the sampler asked for (shares on the simplex) and how far the trained network lies from it.
    "requested_share_depth",
    "requested_share_width",
    "requested_share_resolution",
    "share_error",
    # What was trained: realized multipliers, shares and coefficients (normalised onto the constraint).
    "realized_depth",
    "realized_width",
    "realized_resolution",
    "realized_share_depth",
    "realized_share_width",
    "realized_share_resolution",
    "alpha",
    "beta",
    "gamma",
    "depth_mult",
    "width_mult",
    "resolution",
    "params",
    "flops",
    "flops_ratio",
    "constraint",
    "constraint_ratio",
    # How it did.
    "final_val_accuracy",
    "best_val_accuracy",
    "val_accuracies",
    "epochs_run",
    "seconds",
    "layout",
    "error",
    # Costs measured in the worker, once per network (copied to its other seeds).
    *WORKER_COST_KEYS,
    "pareto",
]
INT_COLUMNS = {
    "trial",
    "round",
    "seed",
    "resolution",
    "params",
    "flops",
    "epochs_run",
    "activations",
    "throughput_batch",
    "peak_train_memory_bytes",
    "memory_batch",
}
TEXT_COLUMNS = {"stage", "status", "network", "constraint", "val_accuracies", "layout", "error", "cost_device"}
BOOL_COLUMNS = {"pareto"}


class RunWriteError(UserError):
    """A run file could not be written (disk full, permissions): the search stops at once."""


# --------------------------------------------------------------------------------------------------
# Trial rows


def _parse(column: str, text: str) -> Any:
    """One CSV cell back to its type; ValueError when it cannot be."""
    if text == "":
        return None
    if column in TEXT_COLUMNS:
        return text
    if column in BOOL_COLUMNS:
        return text == "True"
    if column in INT_COLUMNS:
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{column} is not finite")
    return value


def _cell(value: Any) -> str:
    """A value as a CSV cell; floats as repr, which round-trips exactly."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_trials(path: Path, *, report: bool = True) -> dict[int, dict[str, Any]]:
    """Finished trials from trials.csv, by number, typed. Damaged rows are named by line on stderr
    and left out, so a resume trains them again instead of trusting them."""
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: unreadable ({error})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "trial" not in reader.fieldnames or "status" not in reader.fieldnames:
        raise UserError(f"{path}: not a scalesearch trials.csv (no trial/status columns)")
    rows: dict[int, dict[str, Any]] = {}
    damaged: list[int] = []
    for row in reader:
        line = reader.line_num
        try:
            parsed = {column: _parse(column, row.get(column) or "") for column in TRIAL_COLUMNS if column in row}
            if parsed.get("trial") is None or parsed.get("status") not in STATUSES or not parsed.get("network"):
                raise ValueError("missing trial, status or network")
            if parsed["status"] != "failed" and parsed.get("final_val_accuracy") is None:
                raise ValueError("a trained row without accuracy")
            if None in row.values() or None in row:  # a short or long line
                raise ValueError("wrong number of cells")
        except (ValueError, TypeError):
            damaged.append(line)
            continue
        rows[int(parsed["trial"])] = parsed
    if damaged and report:
        lines = ", ".join(str(n) for n in damaged)
        print(
            f"scalesearch: {path}: damaged rows at line(s) {lines} are ignored and will be retrained", file=sys.stderr
        )
    return rows


def write_trials(path: Path, rows: Mapping[int, Mapping[str, Any]], *, pareto_column: str = "flops") -> None:
    """All finished trials, sorted by number, atomically and at full precision; `pareto` marks the
    networks on the accuracy-vs-cost front. RunWriteError when the disk refuses."""
    front = pareto_trials(rows, pareto_column)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRIAL_COLUMNS)
    for number in sorted(rows):
        values = {**rows[number], "pareto": number in front}
        writer.writerow([_cell(values.get(column)) for column in TRIAL_COLUMNS])
    write_text(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    """atomic_write_text, with a failure turned into one clear line."""
    _written(path, lambda: atomic_write_text(path, text))


def write_json(path: Path, data: Any) -> None:
    """atomic_write_json, with a failure turned into one clear line."""
    _written(path, lambda: atomic_write_json(path, data))


def _written(path: Path, write: Callable[[], Any]) -> None:
    try:
        write()
    except OSError as error:
        raise RunWriteError(
            f"cannot write {path}: {error.strerror or error}; what was written before is intact"
        ) from None


def trained(rows: Mapping[int, Mapping[str, Any]], *, completed_only: bool = True) -> list[Mapping[str, Any]]:
    """Rows with an accuracy: completed ones (all epochs), or also ASHA-stopped ones."""
    wanted = ("completed",) if completed_only else ("completed", "stopped")
    return [r for r in rows.values() if r.get("status") in wanted and r.get("final_val_accuracy") is not None]


def pareto_trials(rows: Mapping[int, Mapping[str, Any]], column: str) -> set[int]:
    """Trial numbers of the completed trials on the front of accuracy (up) and `column` (down), by
    `non_dominated`'s tie rule; one trial per network (its first) stands for it."""
    points: dict[str, tuple[float, float, int]] = {}
    for row in sorted(trained(rows), key=lambda r: int(r["trial"])):
        cost = row.get(column)
        if cost is None or row["network"] in points:
            continue
        points[row["network"]] = (float(row["final_val_accuracy"]), float(cost), int(row["trial"]))
    numbered = list(points.values())
    return {numbered[i][2] for i in non_dominated([(accuracy, cost) for accuracy, cost, _ in numbered])}


def non_dominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices, in order, of the (accuracy, cost) points on the Pareto front of accuracy up and cost
    down: the one front of trials.csv's `pareto` column, best.json's and the plots'.

    The tie rule, deliberately: a point is on the front unless another point is at least as good in
    both (accuracy >=, cost <=) and strictly better in one. Two exactly equal points therefore both
    stay (neither beats the other), while a point that only ties another's accuracy at a higher cost,
    or its cost at a lower accuracy, is off.
    """
    return [
        index
        for index, (accuracy, cost) in enumerate(points)
        if not any(a >= accuracy and c <= cost and (a > accuracy or c < cost) for a, c in points)
    ]


# --------------------------------------------------------------------------------------------------
# Preparing, locking and resuming a run folder


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the folder's lock for the duration; UserError when another search holds it."""
    import fcntl

    try:
        handle = open(out / LOCK, "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as error:
        raise RunWriteError(f"cannot create {out / LOCK}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{out} is in use by another running search; wait for it or choose another --out") from None
        yield
    finally:
        handle.close()


def prepare(settings: SearchSettings, *, resume: bool) -> tuple[Path, dict[int, dict[str, Any]]]:
    """Check the output folder against --resume; return it and the trials already finished there.

    Never overwrites: a finished run, an unfinished one (without --resume) and a folder holding
    trials of an unknown search are all refused with one line.
    """

    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    meta_path = out / SEARCH
    if not resume:
        if (out / BEST).is_file():
            raise UserError(f"{out} holds a finished search; choose another --out, or add --resume to reuse it")
        if meta_path.is_file():
            raise UserError(f"{out} holds an unfinished search; add --resume to continue it")
        if (out / TRIALS).is_file():
            raise UserError(f"{out} holds a trials.csv of an unknown search; choose another --out")
        return out, {}
    if not meta_path.is_file():
        raise UserError(f"nothing to resume in {out}: no {SEARCH}")
    try:
        saved = json.loads(meta_path.read_text(encoding="utf-8"))["fingerprint"]
        if not isinstance(saved, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{meta_path} is not a scalesearch search file") from None
    differing = differing_keys(saved, settings.fingerprint())
    if differing:
        raise UserError(f"{out} holds a different search (differs in: {', '.join(differing)})")
    return out, read_trials(out / TRIALS)


def start(out: Path, settings: SearchSettings) -> None:
    """Create the folder and write search.json (a new search)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunWriteError(f"cannot create {out}: {error.strerror or error}") from None
    write_json(out / SEARCH, {"fingerprint": settings.fingerprint(), "settings": settings.to_dict()})


def check_writable(out: Path) -> None:
    """UserError now, before any training, when `out` cannot be created or written."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")


# --------------------------------------------------------------------------------------------------
# Reading a finished run back


@dataclass(frozen=True)
class Run:
    """A finished search run folder, read once: what validate, report, plot and export start from."""

    path: Path
    best: dict[str, Any]  # best.json: the chosen coefficients and where they came from
    settings: dict[str, Any]  # search.json's "settings" ({} when the file is missing)
    family: dict[str, Any] | None  # family.json, when present

    def trials(self) -> dict[int, dict[str, Any]]:
        """trials.csv's rows, typed."""
        return read_trials(self.path / TRIALS, report=False)


def read_json(path: Path) -> Any:
    """A JSON file of a run; None when missing; UserError when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: unreadable ({error})") from None


def read_run(run_dir: str | Path) -> Run:
    """Read RUN_DIR; UserError when it is missing or not a finished run (no best.json)."""
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"run folder {str(run_dir)!r} not found")
    if not path.is_dir():
        raise UserError(f"{str(run_dir)!r} is not a folder")
    if not (path / BEST).is_file():
        raise UserError(f"{str(run_dir)!r} is not a finished search run (no best.json)")
    best = read_json(path / BEST)
    if not isinstance(best, dict) or not all(key in best for key in ("alpha", "beta", "gamma")):
        raise UserError(f"{path / BEST}: not a scalesearch best.json")
    # A hand-edited or damaged value would surface later as a traceback deep in a plot, the report or
    # an export. These keys of best.json and family.json hold a number (or a list of numbers) wherever
    # they appear; null is allowed (a single seed has no std). Unknown keys are left alone, so older
    # and newer runs still read.
    numeric = {"alpha", "beta", "gamma", "product", "measured_ratio", "constraint_ratio", "phi", "target",
               "tolerance", "value", "std", "seeds", "trial", "trials_of_network", "confidence", "pooled_std",
               "trials", "accuracies", "n", "mean", "share_depth", "share_width", "share_resolution", "flops",
               "margin", "depth", "width", "resolution", "final_val_accuracy", "coverage", "depth_mult",
               "width_mult", "dropout", "params", "flops_ratio", "target_ratio", "theoretical_ratio", "channels",
               "repeats", "num_classes", "in_channels"}  # fmt: skip

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    def check(node: Any, where: str, file: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            place = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
            if key in numeric and not (value is None or is_number(value)
                                       or (isinstance(value, list) and all(map(is_number, value)))):  # fmt: skip
                raise UserError(f"{path / file}: damaged: {place} should be a number, not {value!r}")
            check(value, place, file)

    check(best, "", BEST)
    search = read_json(path / SEARCH)
    settings = search.get("settings", {}) if isinstance(search, dict) else {}
    family = read_json(path / FAMILY_JSON)
    if family is not None and not (
        isinstance(family, dict)
        and isinstance(family.get("variants"), list)
        and family["variants"]
        and all(isinstance(v, dict) and isinstance(v.get("stages", []), list) for v in family["variants"])
    ):
        raise UserError(f"{path / FAMILY_JSON}: damaged: not a scalesearch family.json (no list of variants)")
    if family is not None:
        check(family, "", FAMILY_JSON)
    return Run(
        path=path,
        best=best,
        settings=settings if isinstance(settings, dict) else {},
        family=family if isinstance(family, dict) else None,
    )


def run_space(run: Run) -> SearchSpace:
    """The search space the run searched: its recorded path, else the shipped space of that name."""

    recorded = recorded_space(run.best, run.settings)
    if recorded is None:
        raise UserError(f"{run.path / BEST} names no search space that exists here")
    return load_space(recorded)


def recorded_space(best: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> str | None:
    """What to load as the space a run searched, from its best.json (and search.json's settings):
    the recorded path where that file exists here (the path is absolute on the machine that
    searched), else the space's name (a shipped space); None when neither is recorded."""
    recorded = best.get("space_path") or (settings or {}).get("space_path")
    if isinstance(recorded, str) and Path(recorded).is_file():
        return recorded
    name = best.get("space")
    return name if isinstance(name, str) else None


def load_validation(run_dir: str | Path) -> pd.DataFrame:
    """RUN_DIR/validation.csv as a DataFrame; UserError if validate has not run there."""
    import pandas as pd

    path = Path(run_dir) / VALIDATION_CSV
    if not path.is_file():
        raise UserError(f"{path} not found: run `scalesearch validate {run_dir}` first")
    return pd.read_csv(path)


def write_validation(path: Path, rows: pd.DataFrame) -> None:
    """validation.csv, atomically and at full precision (floats as repr)."""
    buffer = io.StringIO()
    rows.to_csv(buffer, index=False, lineterminator="\n")
    write_text(path, buffer.getvalue())

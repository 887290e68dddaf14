"""The settings of one search, in three kinds: what the search *is* (its identity, fingerprinted so a
resume can check it continues the same search), what it *runs on* (resources, free to change between
an interruption and its resume) and how it *talks* (output folder and verbosity).

Torch-free; `scalesearch search` builds SearchSettings from the space's `search:` defaults and flags.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalesearch.config.recipe import Recipe, as_recorded
from scalesearch.core.errors import UserError

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).

SCHEDULERS = ("none", "asha")
# base_resolution "off": the proxies see the stored images as they are (planning.data_view).
OFF = "off"
# The identity of a search: a resumed run must match every one of these.
IDENTITY_FIELDS = (
    "space_path",
    "dataset",
    "sampler",
    "trials",
    "epochs",
    "scheduler",
    "seed",
    "recipe",
    "constraint",
    "objective",
    "phi",
    "batch",
    "confirm_top",
    "confirm_seeds",
    "base_resolution",
)
RESOURCE_FIELDS = ("concurrency", "cpus_per_trial", "gpus_per_trial", "address", "max_failures")
INTERFACE_FIELDS = ("out", "family_phis", "verbose", "quiet")
# Fingerprint keys (space by content, not path), and the values older runs implicitly had.
FINGERPRINT_KEYS = ("space_sha256", *IDENTITY_FIELDS[1:])
FINGERPRINT_DEFAULTS = {"constraint": "flops", "objective": "accuracy", "base_resolution": "off"}


@dataclass(frozen=True)
class SearchSettings:
    """Everything one search needs, after merging the space's `search:` defaults with flags."""

    # Identity (fingerprinted).
    space_path: str
    dataset: str
    sampler: str = "tpe"  # proposals.SAMPLERS
    trials: int = 16  # proposals; grid: networks of the realizable set, at most this many
    epochs: int = 4  # training epochs of every proxy
    scheduler: str = "asha"  # "asha": stop a trial at half its epochs if below the earlier rounds' top third
    seed: int = 0  # proposals, and the first training seed of every network
    recipe: Mapping[str, Any] = field(default_factory=dict)  # Recipe fields (epochs set from `epochs`)
    constraint: str = "flops"  # the cost whose ratio to the proxy base must be target^phi (cost.COSTS)
    objective: str = "accuracy"  # "accuracy", or "accuracy,COST": maximize accuracy, minimize COST
    phi: float = 1.0  # the φ the proxies are trained at: budget target^phi over the proxy base
    batch: int = 4  # proposals per round; a round is proposed after the previous one finished
    confirm_top: int = 3  # the best networks retrained with more seeds after the search (0: off)
    confirm_seeds: int = 3  # seeds per confirmed network, the search's own included
    # r_base, the target base's resolution (B0 as deployed), from which the proxies' view of the data
    # follows (planning.data_view): None = the space's choice (its search: base_resolution for its own
    # dataset, else its base resolution); "off" = the stored images as they are (runs made before the
    # mapping existed read back as "off").
    base_resolution: int | str | None = None
    # Resources (may change on resume).
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    max_failures: int = 0
    # Interface.
    out: str = ""
    family_phis: str = "0-7"  # the variants family.json lists
    verbose: bool = False
    quiet: bool = False

    def validate(self) -> None:
        """Raise UserError for settings that cannot work, before anything starts (the sampler is the search's
        to check: `search.driver.check_settings`)."""
        from scalesearch.models.cost import cost_kind

        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
        for name, minimum in (
            ("trials", 1),
            ("epochs", 1),
            ("concurrency", 1),
            ("batch", 1),
            ("seed", 0),
            ("max_failures", 0),
            ("confirm_top", 0),
            ("confirm_seeds", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be a whole number >= {minimum}, got {value!r}")
        checks: tuple[tuple[str, Any, float], ...] = (
            ("--cpus-per-trial", self.cpus_per_trial, 1e-9),
            ("--gpus-per-trial", self.gpus_per_trial, 0.0),
            ("--phi", self.phi, 1e-9),
        )
        for label, value, limit in checks:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{label} must be a finite number, got {value!r}")
            if value < limit:
                raise UserError(f"{label} must be {'> 0' if limit else '>= 0'}, got {value:g}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise UserError(f"--gpus-per-trial above 1 must be whole, got {self.gpus_per_trial:g}")
        cost_kind(self.constraint)
        parse_base_resolution(self.base_resolution)
        self.objective_cost()
        self.training_recipe()

    def objective_cost(self) -> str | None:
        """The cost a multi-objective search minimizes beside accuracy; None for accuracy alone."""
        from scalesearch.models.cost import COSTS

        parts = [part.strip() for part in str(self.objective).split(",")]
        if parts == ["accuracy"]:
            return None
        if len(parts) == 2 and parts[0] == "accuracy" and parts[1] in COSTS:
            return parts[1]
        raise UserError(
            f"unknown objective {self.objective!r} (choose accuracy, or accuracy,COST with COST one of "
            f"{', '.join(COSTS)})"
        )

    def pareto_column(self) -> str:
        """The trials.csv column the Pareto front trades accuracy against (FLOPs for accuracy alone)."""
        from scalesearch.models.cost import COSTS

        cost = self.objective_cost()
        return COSTS[cost].column if cost else "flops"

    def training_recipe(self) -> Recipe:
        """The proxy recipe: the space's recipe with the search's epoch count."""
        return Recipe.from_mapping({**self.recipe, "epochs": self.epochs})

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this search, for --resume checks (the space by its content, not its path)."""
        try:
            space_sha = hashlib.sha256(Path(self.space_path).read_bytes()).hexdigest()
        except OSError as error:
            raise UserError(f"cannot read the search space {self.space_path}: {error.strerror}") from None
        identity = {name: getattr(self, name) for name in IDENTITY_FIELDS if name != "space_path"}
        identity["recipe"] = self.training_recipe().to_dict()
        return {"space_sha256": space_sha, **identity}

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (search.json and the manifest)."""
        data = asdict(self)
        data["recipe"] = self.training_recipe().to_dict()
        return data


def differing_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The fingerprint keys on which a saved search and the current settings disagree."""
    saved = {**saved, "recipe": as_recorded(saved["recipe"])} if isinstance(saved.get("recipe"), Mapping) else saved
    return [key for key in FINGERPRINT_KEYS if saved.get(key, FINGERPRINT_DEFAULTS.get(key)) != current.get(key)]


def parse_base_resolution(value: Any, *, what: str = "--base-resolution") -> int | str | None:
    """A base-resolution setting: None (the space's), a positive whole number of px, or "off"."""
    if value is None or value == OFF:
        return value
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise UserError(f"{what} must be a whole number of pixels or 'off', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
        raise UserError(f"{what} must be a whole number of pixels (1 to 16384) or 'off', got {value!r}")
    return value

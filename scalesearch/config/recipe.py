"""The training recipe for one proxy: a small frozen dataclass, validated from a YAML mapping.

Pure Python on purpose (no torch): search-space files are validated by `scalesearch.config.spaces`
before any heavy import, and a `Recipe` travels to Ray workers as plain data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from scalesearch.core.errors import UserError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")
INITS = ("official", "fan_in", "zero")


@dataclass(frozen=True)
class Recipe:
    """How a proxy is trained. Defaults suit tiny proxies (≈10-100k params) on `digits` in seconds."""

    # SGD with Nesterov momentum is the EfficientNet-style baseline and cheap per step; AdamW for ViTs.
    optimizer: str = "sgd"
    # Peak learning rate after warm-up; 0.1 is stable for batch-norm nets at batch 32 with SGD.
    lr: float = 0.1
    # L2 on conv/linear weights only (never on norms or biases); small nets underfit, so keep it light.
    weight_decay: float = 5e-4
    # SGD momentum (ignored by AdamW, whose betas stay at PyTorch's defaults).
    momentum: float = 0.9
    # Cosine decays smoothly to 0; one-cycle ramps up from lr/25 and decays linearly (Smith 2018).
    schedule: str = "cosine"
    # Epochs of linear warm-up; fractional values are fine (warm-up is applied per step).
    warmup_epochs: float = 1.0
    # Proxy training is short by design: rankings of (α, β, γ) settle long before accuracy converges.
    epochs: int = 10
    # Small batches give many steps per epoch on small datasets (digits: 44 steps per epoch); proxies
    # learn more in 2 epochs at 32 than at 64 (0.72 vs 0.52 mean val accuracy over 3 seeds).
    batch_size: int = 32
    # Mild smoothing regularizes tiny proxies; validation loss is reported without it.
    label_smoothing: float = 0.1
    # Random crop + flip; None means "the dataset's default" (off for digits and synthetic data).
    augment: bool | None = None
    # Share of each class held out for validation; the search ranks trials on this split.
    val_fraction: float = 0.2
    # Seed of the train/validation split, separate from the trial seed so all trials see one split.
    split_seed: int = 0
    # How a proxy starts (`models.initialization`). "official": the family's own initialization.
    # "fan_in": the same, but the classifier drawn uniform ±1/sqrt(its input features) (PyTorch's own
    # default for nn.Linear), so the first logits have one scale whatever the head's width. EfficientNet's
    # official classifier init is uniform ±1/sqrt(classes): with 10-16 classes a head twice as wide starts
    # with larger random logits, which a 4-epoch proxy spends its steps undoing; where only width helps
    # (results/known-answer/width) the width corner then won or lost by seed, and wins on every seed with
    # fan_in. "zero": the classifier and the last layer of every residual branch start at zero (Goyal et
    # al. 2017).
    init: str = "fan_in"

    def __post_init__(self) -> None:
        """Validate ranges so a bad recipe fails at load time, not in the middle of a search."""
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("init", self.init, INITS)
        _check_range("lr", self.lr, low=0.0, low_open=True, high=10.0)
        _check_range("weight_decay", self.weight_decay, low=0.0, high=1.0)
        _check_range("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_range("warmup_epochs", self.warmup_epochs, low=0.0, high=float(self.epochs))
        _check_range("epochs", self.epochs, low=1, high=10_000)
        _check_range("batch_size", self.batch_size, low=1, high=1_000_000)
        _check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        _check_range("val_fraction", self.val_fraction, low=0.0, low_open=True, high=1.0, high_open=True)
        _check_range("split_seed", self.split_seed, low=0, high=2**32 - 1)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> Recipe:
        """A validated Recipe from a YAML `recipe:` mapping; unknown keys and bad values raise UserError.

        Missing keys keep their defaults, so a search space only states what it changes.
        """
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise UserError(f"recipe: expected a mapping of settings, got {type(mapping).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in mapping if k not in fields)
        if unknown:
            raise UserError(f"recipe: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
        values = {name: _coerce(name, value, _field_kind(name)) for name, value in mapping.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated like from_mapping), e.g. `--epochs` on the CLI."""
        return Recipe.from_mapping({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML outputs and run manifests."""
        return dataclasses.asdict(self)


# The type each field accepts; `from __future__ import annotations` makes field.type a string,
# so the kinds are listed explicitly rather than parsed from annotations.
_KINDS: dict[str, str] = {
    "optimizer": "str",
    "lr": "float",
    "weight_decay": "float",
    "momentum": "float",
    "schedule": "str",
    "warmup_epochs": "float",
    "epochs": "int",
    "batch_size": "int",
    "label_smoothing": "float",
    "augment": "bool|None",
    "val_fraction": "float",
    "split_seed": "int",
    "init": "str",
}


def as_recorded(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recorded recipe with the fields it predates at what it was trained with: a run recorded
    before `init` existed trained with the official init (not today's default)."""
    return {"init": "official", **recipe}


def parse_override(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from the command line (`--recipe lr=0.05`): the key checked, the value read as YAML
    reads a scalar (so `augment=false` is a bool); Recipe.from_mapping then validates it like the file's."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--recipe {text!r}: expected KEY=VALUE, e.g. --recipe init=zero")
    if key not in _KINDS:
        raise UserError(f"--recipe {text!r}: unknown key {key!r}; known keys: {', '.join(_KINDS)}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value


def recipe_with_overrides(recipe: Mapping[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """A space's `recipe:` mapping with `--recipe KEY=VALUE` flags applied (later flags win), validated."""
    merged = {**recipe, **dict(parse_override(text) for text in overrides or [])}
    Recipe.from_mapping(merged)
    return merged


def _field_kind(name: str) -> str:
    """The accepted type of one field."""
    return _KINDS[name]


def _coerce(name: str, value: Any, kind: str) -> Any:
    """Value converted to the field's type, or UserError; YAML gives ints where floats are meant."""
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"recipe.{name}: expected a string, got {value!r}")
        return value.strip().lower()
    if kind == "bool|None":
        if value is None or isinstance(value, bool):
            return value
        raise UserError(f"recipe.{name}: expected true, false or null, got {value!r}")
    # bool is an int in Python; `epochs: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"recipe.{name}: expected a number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise UserError(f"recipe.{name}: expected a whole number, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise UserError(f"recipe.{name}: expected a finite number, got {value!r}")
    return float(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """UserError unless value is one of choices."""
    if value not in choices:
        raise UserError(f"recipe.{name}: expected one of {', '.join(choices)}, got {value!r}")


def _check_range(
    name: str,
    value: float,
    *,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """UserError unless low <= value <= high (strict where the bound is open)."""
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UserError(f"recipe.{name}: {value!r} is outside {interval}")

"""Recipe: defaults, validation of YAML mappings, and staying free of torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scalesearch.config.recipe import Recipe, parse_override, recipe_with_overrides
from scalesearch.core.errors import UserError


def test_defaults_are_valid_and_documented_values() -> None:
    recipe = Recipe()
    assert recipe.optimizer == "sgd"
    assert recipe.schedule == "cosine"
    assert recipe.augment is None  # "the dataset's default"
    assert recipe.val_fraction == 0.2
    assert recipe.split_seed == 0
    assert recipe.init == "fan_in"  # the classifier's first logits at one scale whatever the width


def test_from_mapping_keeps_defaults_for_missing_keys_and_coerces_yaml_numbers() -> None:
    recipe = Recipe.from_mapping({"optimizer": "AdamW", "lr": 1, "epochs": 3.0, "augment": True})
    assert recipe.optimizer == "adamw"
    assert recipe.lr == 1.0 and isinstance(recipe.lr, float)
    assert recipe.epochs == 3 and isinstance(recipe.epochs, int)
    assert recipe.augment is True
    assert recipe.batch_size == Recipe().batch_size
    assert Recipe.from_mapping(None) == Recipe()
    assert Recipe.from_mapping({}) == Recipe()


def test_replace_validates_like_from_mapping() -> None:
    assert Recipe().replace(epochs=2).epochs == 2
    with pytest.raises(UserError, match="epochs"):
        Recipe().replace(epochs=0)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key.*learning_rate"),
        ({"optimizer": "adam"}, "optimizer: expected one of sgd, adamw"),
        ({"schedule": "step"}, "schedule"),
        ({"lr": 0}, r"lr: 0.0 is outside \(0, 10\]"),
        ({"lr": "fast"}, "lr: expected a number"),
        ({"lr": float("nan")}, "finite"),
        ({"epochs": 2.5}, "whole number"),
        ({"epochs": True}, "expected a number"),
        ({"batch_size": 0}, "batch_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs"),
        ({"augment": "yes"}, "augment: expected true, false or null"),
        ({"split_seed": -1}, "split_seed"),
        ({"init": "xavier"}, "init: expected one of official, fan_in, zero"),
    ],
)
def test_bad_values_raise_user_error(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        Recipe.from_mapping(mapping)


def test_not_a_mapping() -> None:
    with pytest.raises(UserError, match="expected a mapping"):
        Recipe.from_mapping([1, 2])  # type: ignore[arg-type]


def test_recipe_module_does_not_import_torch() -> None:
    code = "import sys, scalesearch.config.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_command_line_overrides_read_values_as_yaml_scalars_and_validate_like_the_file() -> None:
    assert parse_override("init=zero") == ("init", "zero")
    assert parse_override("augment=false") == ("augment", False)
    assert parse_override("lr=0.05") == ("lr", 0.05)
    merged = recipe_with_overrides({"lr": 0.1, "batch_size": 64}, ["lr=0.05", "init=official", "lr=0.02"])
    assert merged == {"lr": 0.02, "batch_size": 64, "init": "official"}  # later flags win
    assert recipe_with_overrides({"lr": 0.1}, None) == {"lr": 0.1}


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("init", "expected KEY=VALUE"),
        ("=zero", "expected KEY=VALUE"),
        ("learning_rate=0.1", "unknown key 'learning_rate'"),
        ("init=xavier", "init: expected one of"),
        ("epochs=two", "epochs: expected a number"),
    ],
)
def test_bad_overrides_raise_user_error(flag: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        recipe_with_overrides({}, [flag])

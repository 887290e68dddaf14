"""The proxy trainer on real small data (digits): learning, determinism, callbacks, failures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from scalesearch.data import Dataset, load_dataset
from scalesearch.recipe import Recipe
from scalesearch.train import EpochMetrics, TrainingDiverged, _lr_at, _make_optimizer, train_model


def tiny_net(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Sequential:
    """A two-conv net with batch norm: small enough for sub-second epochs on digits."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _comparable(metrics: list[EpochMetrics]) -> list[tuple[float, ...]]:
    """Everything but the timings."""
    return [(m.epoch, m.train_loss, m.val_loss, m.val_accuracy, m.lr) for m in metrics]


def test_small_efficientnet_beats_chance_on_digits_in_two_epochs(digits: Dataset) -> None:
    spaces = pytest.importorskip("scalesearch.spaces")
    families = pytest.importorskip("scalesearch.families")
    space = spaces.load_space("efficientnet_b0")
    spec = families.ModelSpec(width_mult=0.25, depth_mult=0.25, resolution=12, num_classes=10, in_channels=1)
    reports: list[EpochMetrics] = []
    result = train_model(
        lambda: space.family.build(spec),
        digits,
        Recipe(epochs=2),
        resolution=12,
        seed=0,
        threads=1,
        on_epoch=reports.append,
    )
    assert result.final_val_accuracy > 0.4  # chance is 0.1
    assert [m.epoch for m in reports] == [1, 2] and result.epochs == reports
    assert result.best_val_accuracy == max(m.val_accuracy for m in reports)
    assert result.device == "cpu"
    for m in reports:
        assert m.epoch_seconds > 0 and m.images_per_second > 0
        assert math.isfinite(m.train_loss) and math.isfinite(m.val_loss)


def test_same_seed_same_metrics_and_other_seed_differs(digits: Dataset) -> None:
    recipe = Recipe(epochs=2, warmup_epochs=0.0)
    runs = [train_model(tiny_net, digits, recipe, resolution=8, seed=seed, threads=1).epochs for seed in (3, 3, 4)]
    assert _comparable(runs[0]) == _comparable(runs[1])
    assert _comparable(runs[0]) != _comparable(runs[2])
    assert runs[0][-1].val_accuracy > 0.3  # learned something even at 8×8 with 8 channels


def test_adamw_onecycle_and_augmentation_run_and_learn(digits: Dataset) -> None:
    recipe = Recipe(optimizer="adamw", lr=0.01, schedule="onecycle", epochs=2, augment=True, label_smoothing=0.0)
    result = train_model(lambda: tiny_net(width=16), digits, recipe, resolution=8, seed=0, threads=1)
    assert result.final_val_accuracy > 0.3


def test_exceptions_from_the_callback_stop_training(digits: Dataset) -> None:
    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_first(metrics: EpochMetrics) -> None:
        seen.append(metrics.epoch)
        raise Stop

    with pytest.raises(Stop):
        train_model(tiny_net, digits, Recipe(epochs=3), resolution=8, seed=0, threads=1, on_epoch=stop_after_first)
    assert seen == [1]


def test_non_finite_loss_raises_training_diverged(digits: Dataset) -> None:
    def broken() -> nn.Module:
        model = tiny_net()
        classifier = model[-1]
        assert isinstance(classifier, nn.Linear)
        with torch.no_grad():
            classifier.weight.fill_(float("inf"))
        return model

    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train_model(broken, digits, Recipe(epochs=2), resolution=8, seed=0, threads=1)


def test_threads_are_set_for_the_call_and_restored(digits: Dataset) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    train_model(
        tiny_net,
        digits,
        Recipe(epochs=1, warmup_epochs=0.0),
        resolution=8,
        seed=0,
        threads=1,
        on_epoch=lambda m: seen.append(torch.get_num_threads()),
    )
    assert seen == [1] and torch.get_num_threads() == before


def test_tiny_dataset_smaller_than_a_batch(tmp_path: object) -> None:
    dataset = load_dataset("synthetic:n=24,classes=2,size=8,channels=1")
    result = train_model(
        lambda: tiny_net(num_classes=2),
        dataset,
        Recipe(epochs=2, batch_size=64),
        resolution=8,
        seed=0,
        threads=1,
    )
    assert len(result.epochs) == 2


def test_learning_rate_schedules() -> None:
    cosine = Recipe(lr=0.1, epochs=10, warmup_epochs=1.0)
    steps, warmup = 100, 10
    assert _lr_at(0, steps, warmup, cosine) == pytest.approx(0.01)
    assert _lr_at(9, steps, warmup, cosine) == pytest.approx(0.1)
    assert _lr_at(10, steps, warmup, cosine) == pytest.approx(0.1)
    assert _lr_at(55, steps, warmup, cosine) == pytest.approx(0.05)
    assert _lr_at(99, steps, warmup, cosine) < 0.001

    onecycle = dataclasses.replace(cosine, schedule="onecycle")
    assert _lr_at(0, steps, warmup, onecycle) == pytest.approx(0.004 + 0.096 / 10)
    assert _lr_at(9, steps, warmup, onecycle) == pytest.approx(0.1)
    assert _lr_at(100, steps, warmup, onecycle) == pytest.approx(1e-5)
    # Without warm-up the first step already runs at the peak.
    assert _lr_at(0, steps, 0, Recipe(warmup_epochs=0.0)) == pytest.approx(0.1)


def test_weight_decay_skips_norms_and_biases() -> None:
    optimizer = _make_optimizer(tiny_net(), Recipe(weight_decay=0.01))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_mixed_precision_channels_last(digits: Dataset) -> None:
    result = train_model(lambda: tiny_net(width=16), digits, Recipe(epochs=3, augment=True), resolution=16, seed=0)
    assert result.device.startswith("cuda") and result.final_val_accuracy > 0.3

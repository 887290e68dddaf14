"""The proxy trainer on real small data (digits): learning, determinism, callbacks, failures,
memory layouts and memory use."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from scalesearch.config.recipe import Recipe
from scalesearch.data.datasets import Dataset, load_dataset
from scalesearch.training import trainer as train
from scalesearch.training.layout import LAYOUTS, _store_layout, clear_layout_cache
from scalesearch.training.optimizer import lr_at, make_optimizer
from scalesearch.training.trainer import EpochMetrics, TrainingDiverged, train_model


@pytest.fixture(autouse=True)
def _isolated_layout_decisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test measures layouts afresh and stores its decisions (and any dataset cache) in tmp_path."""
    monkeypatch.setenv("SCALESEARCH_CACHE", str(tmp_path / "cache"))
    clear_layout_cache()
    yield
    clear_layout_cache()


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


def dropout_net() -> nn.Sequential:
    """tiny_net with dropout, whose forward pass draws from torch's global random stream."""
    return nn.Sequential(*tiny_net()[:-1], nn.Dropout(0.3), nn.Linear(16, 10))


def _comparable(metrics: list[EpochMetrics]) -> list[tuple[float, ...]]:
    """Everything but the timings."""
    return [(m.epoch, m.train_loss, m.val_loss, m.val_accuracy, m.lr) for m in metrics]


def test_small_efficientnet_beats_chance_on_digits_in_two_epochs(digits: Dataset) -> None:
    spaces = pytest.importorskip("scalesearch.config.spaces")
    families = pytest.importorskip("scalesearch.models.families")
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
        train_model(broken, digits, Recipe(epochs=2, init="official"), resolution=8, seed=0, threads=1)


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
    assert lr_at(0, steps, warmup, cosine) == pytest.approx(0.01)
    assert lr_at(9, steps, warmup, cosine) == pytest.approx(0.1)
    assert lr_at(10, steps, warmup, cosine) == pytest.approx(0.1)
    assert lr_at(55, steps, warmup, cosine) == pytest.approx(0.05)
    assert lr_at(99, steps, warmup, cosine) < 0.001

    onecycle = dataclasses.replace(cosine, schedule="onecycle")
    assert lr_at(0, steps, warmup, onecycle) == pytest.approx(0.004 + 0.096 / 10)
    assert lr_at(9, steps, warmup, onecycle) == pytest.approx(0.1)
    assert lr_at(100, steps, warmup, onecycle) == pytest.approx(1e-5)
    # Without warm-up the first step already runs at the peak.
    assert lr_at(0, steps, 0, Recipe(warmup_epochs=0.0)) == pytest.approx(0.1)


def test_weight_decay_skips_norms_and_biases() -> None:
    optimizer = make_optimizer(tiny_net(), Recipe(weight_decay=0.01))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_mixed_precision_channels_last(digits: Dataset) -> None:
    result = train_model(lambda: tiny_net(width=16), digits, Recipe(epochs=3, augment=True), resolution=16, seed=0)
    assert result.device.startswith("cuda") and result.final_val_accuracy > 0.3


# --- memory layout ------------------------------------------------------------------------------


def test_layout_is_measured_recorded_in_every_epoch_and_remembered(digits: Dataset, tmp_path: Path) -> None:
    recipe = Recipe(epochs=2, warmup_epochs=0.0)
    first = train_model(tiny_net, digits, recipe, resolution=8, seed=0, threads=1)
    choice = first.layout_choice
    assert choice is not None and choice.source == "measured" and choice.seconds > 0
    assert set(choice.images_per_second) == set(LAYOUTS) and min(choice.images_per_second.values()) > 0
    assert choice.layout == max(LAYOUTS, key=lambda name: choice.images_per_second[name])  # the faster one
    assert [m.layout for m in first.epochs] == [choice.layout] * 2

    # The same network at the same batch, resolution and threads: decided once per process...
    again = train_model(tiny_net, digits, recipe, resolution=8, seed=1, threads=1)
    assert again.layout_choice is not None and again.layout_choice.source == "memo"
    assert again.layout_choice.layout == choice.layout
    # ... and once per machine: a new process reads the decision stored in the cache directory.
    clear_layout_cache()
    later = train_model(tiny_net, digits, recipe, resolution=8, seed=1, threads=1)
    assert later.layout_choice is not None and later.layout_choice.source == "disk"
    assert later.layout_choice.layout == choice.layout
    assert len(list((tmp_path / "cache" / "layouts").glob("layout-*.json"))) == 1

    # Another resolution is another decision.
    other = train_model(tiny_net, digits, recipe, resolution=6, seed=1, threads=1)
    assert other.layout_choice is not None and other.layout_choice.source == "measured"


def test_layout_probe_changes_neither_weights_nor_random_stream(digits: Dataset) -> None:
    """A run that probed gives exactly the metrics of a run forced into the layout the probe chose."""
    recipe = Recipe(epochs=2, warmup_epochs=0.0, augment=True)
    auto = train_model(dropout_net, digits, recipe, resolution=8, seed=5, threads=1)
    assert auto.layout_choice is not None and auto.layout_choice.source == "measured"
    forced = train_model(dropout_net, digits, recipe, resolution=8, seed=5, threads=1, layout=auto.layout_choice.layout)
    assert _comparable(auto.epochs) == _comparable(forced.epochs)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_forced_layout_is_used_and_reported(digits: Dataset, layout: str) -> None:
    built: list[nn.Module] = []

    def factory() -> nn.Module:
        built.append(tiny_net())
        return built[-1]

    result = train_model(factory, digits, Recipe(epochs=1), resolution=8, seed=0, threads=1, layout=layout)
    assert result.layout_choice is not None
    assert (result.layout_choice.layout, result.layout_choice.source) == (layout, "forced")
    assert result.layout_choice.images_per_second == {} and [m.layout for m in result.epochs] == [layout]
    assert len(built) == 1  # no probe
    conv = built[0][3]
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.is_contiguous(memory_format=LAYOUTS[layout])
    assert conv.weight.is_contiguous() == (layout == "contiguous")


def test_unknown_layout_is_refused(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="layout must be"):
        train_model(tiny_net, digits, Recipe(epochs=1), resolution=8, seed=0, threads=1, layout="nhwc")


def test_damaged_layout_decision_is_measured_again(digits: Dataset, tmp_path: Path) -> None:
    recipe = Recipe(epochs=1)
    train_model(tiny_net, digits, recipe, resolution=8, seed=0, threads=1)
    (stored,) = (tmp_path / "cache" / "layouts").glob("layout-*.json")
    stored.write_text('{"layout": "sideways"')
    clear_layout_cache()
    result = train_model(tiny_net, digits, recipe, resolution=8, seed=0, threads=1)
    assert result.layout_choice is not None and result.layout_choice.source == "measured"
    assert json.loads(stored.read_text())["layout"] == result.layout_choice.layout


def test_first_stored_layout_decision_stands(tmp_path: Path) -> None:
    """Workers probing one network at once all adopt the decision stored first."""
    path = str(tmp_path / "layouts" / "layout-x.json")
    first = _store_layout(path, "contiguous", {"contiguous": 2.0, "channels_last": 1.0}, {})
    second = _store_layout(path, "channels_last", {"contiguous": 1.0, "channels_last": 2.0}, {})
    assert (first.layout, first.source) == ("contiguous", "measured")
    assert (second.layout, second.source) == ("contiguous", "disk")
    assert second.images_per_second == {"contiguous": 2.0, "channels_last": 1.0}
    assert [p.name for p in (tmp_path / "layouts").iterdir()] == ["layout-x.json"]


# --- memory -------------------------------------------------------------------------------------


class LargestImageBatch(TorchDispatchMode):
    """Records the most images (leading dimension) of any 4-D float tensor that an operation makes."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 4:
                self.most = max(self.most, int(value.shape[0]))
        return out


def test_training_makes_float_images_one_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No float copy of the train or validation set: the largest float image tensor is one batch."""
    dataset = load_dataset("synthetic:n=600,classes=4,size=8,channels=1")
    monkeypatch.setattr(train, "_EVAL_BATCH", 48)
    recipe = Recipe(epochs=1, batch_size=32, augment=True)
    with LargestImageBatch() as watch:
        result = train_model(lambda: tiny_net(num_classes=4), dataset, recipe, resolution=8, seed=0, threads=1)
    assert len(result.epochs) == 1
    # 480 train and 120 validation images; batches of 32 (training) and 48 (evaluation).
    assert 32 <= watch.most <= 48


def test_evaluation_batches_shrink_with_resolution() -> None:
    assert train._eval_batch_size(18) == 256  # small images: the whole cap
    assert train._eval_batch_size(96) == 28  # ~256 images' worth of 32 px pixels
    assert train._eval_batch_size(2048) == 1


def test_capture_is_a_cuda_feature_and_ignored_on_cpu(digits: Dataset) -> None:
    result = train_model(tiny_net, digits, Recipe(epochs=1), resolution=8, seed=0, threads=1, capture=True)
    assert result.device == "cpu" and result.captured is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_layout_probe_and_captured_steps(digits: Dataset) -> None:
    recipe = Recipe(epochs=3, augment=True)
    eager = train_model(lambda: tiny_net(width=16), digits, recipe, resolution=16, seed=0, device="cuda")
    assert eager.layout_choice is not None and eager.layout_choice.source == "measured"
    captured = train_model(
        lambda: tiny_net(width=16),
        digits,
        recipe,
        resolution=16,
        seed=0,
        device="cuda",
        layout=eager.layout_choice.layout,
        capture=True,
    )
    assert captured.captured and captured.final_val_accuracy > 0.3
    # cuDNN picks kernels by timing, so the two runs agree closely but not to the bit.
    assert abs(captured.final_val_accuracy - eager.final_val_accuracy) < 0.1

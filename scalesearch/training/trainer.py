"""Train and evaluate one proxy model; report per-epoch metrics through a callback.

The hot loop slices batches by index out of the uint8 images at the trial's resolution and converts,
normalizes (and augments) one batch at a time (no DataLoader, no per-sample Python, no float copy of
the dataset), so a trial runs at the speed of a hand-written PyTorch loop in a bounded amount of
memory. The search calls `train_model` once per trial; ASHA stops a trial by raising inside
`on_epoch`, which propagates.

The memory layout (channels-last or NCHW) is chosen by measurement in `scalesearch.training.layout` and
reported with every epoch; the optimizer, schedule and step are `scalesearch.training.optimizer`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scalesearch.config.recipe import Recipe
from scalesearch.data.datasets import Dataset
from scalesearch.data.prep import augment_batch, resized_images, split_dataset
from scalesearch.models.cost import torch_threads
from scalesearch.models.initialization import initialize
from scalesearch.training.layout import LAYOUTS, LayoutChoice, choose_layout
from scalesearch.training.optimizer import lr_at, make_optimizer, train_step

# Evaluation has no backward pass, so it can use bigger batches than training, but its activations
# grow with the batch: at most _EVAL_BATCH images and _EVAL_PIXELS pixels per image plane per batch.
# On one CPU thread the 18 px default proxy evaluates 3,200 images/s at 256 and 2,100 at 1,024 (the
# old size; 1,273 against 559 at 32 px), so 256 is also the faster; the pixel cap keeps a 96 px
# trial's evaluation batch (28 images) from holding ~1 GB of activations.
_EVAL_BATCH = 256
_EVAL_PIXELS = 256 * 32 * 32


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the search records the trial as failed."""


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch reports."""

    epoch: int  # 1-based
    train_loss: float  # mean training loss (with label smoothing, as optimized)
    val_loss: float  # mean validation cross-entropy (without label smoothing)
    val_accuracy: float  # 0..1
    epoch_seconds: float  # training plus evaluation wall time
    images_per_second: float  # training images over training time only
    lr: float  # learning rate at the epoch's last step
    layout: str = ""  # memory layout of inputs and weights: "channels_last" or "contiguous"


@dataclass(frozen=True)
class TrainResult:
    """A finished training run."""

    epochs: list[EpochMetrics]
    final_val_accuracy: float
    best_val_accuracy: float
    seconds: float
    device: str
    layout_choice: LayoutChoice | None = None  # the layout every epoch used, and why
    captured: bool = False  # training steps replayed as a CUDA graph (`capture=True` on CUDA)


def train_model(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    *,
    resolution: int,
    seed: int,
    view: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    layout: str = "auto",
    capture: bool = False,
) -> TrainResult:
    """Train a fresh model from `model_factory` on `dataset` and return per-epoch validation metrics.

    Seeds torch before building the model, so weights, batch order and augmentation are functions of
    `seed`: on CPU the same seed gives the same losses and accuracies (for one layout; the layout
    changes the order of floating-point sums). `threads` sets torch's intra-op threads for this call
    (restored afterwards). `device` defaults to "cuda" when available, else "cpu"; on CUDA the uint8
    data lives on the device and is normalized there per batch, and the forward pass runs under bf16
    autocast (fp16 with a GradScaler where bf16 is unsupported).

    `view` (planning.data_view) is the side the stored images are resized to before `resolution`: the
    proxy sees the data with the target base's headroom; None resizes the stored images directly.

    `layout` is "auto" (the faster of channels-last and NCHW for this model, batch size, resolution,
    device and thread count, measured once per machine by `choose_layout`; the probe trains copies
    of the model under a saved RNG state, so it changes neither the weights nor the random stream),
    "channels_last" or "contiguous". Every EpochMetrics carries the layout; the result says how it
    was chosen. `capture=True` replays each training step's forward and backward pass as a CUDA graph
    (`torch.cuda.make_graphed_callables`), which removes the per-kernel launch cost that bounds tiny
    proxies on a GPU; it is ignored on CPU and off by default (not yet measured on a GPU).
    Raises TrainingDiverged on a non-finite loss, ValueError on an unknown layout; exceptions from
    `on_epoch` propagate.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto', {' or '.join(repr(name) for name in LAYOUTS)}, got {layout!r}")
    start = time.perf_counter()
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch_threads(threads):
        epochs, choice, captured = _train(
            model_factory, dataset, recipe, resolution, view, seed, run_device, on_epoch, layout, capture
        )
    accuracies = [m.val_accuracy for m in epochs]
    return TrainResult(
        epochs=epochs,
        final_val_accuracy=accuracies[-1],
        best_val_accuracy=max(accuracies),
        seconds=time.perf_counter() - start,
        device=str(run_device),
        layout_choice=choice,
        captured=captured,
    )


class _Batches:
    """Float batches made on demand from uint8 images: gather, normalize, augment, lay out."""

    def __init__(
        self,
        images: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        memory_format: torch.memory_format,
    ) -> None:
        self.images = images
        self.mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        self.memory_format = memory_format

    def __call__(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images `index`, normalized with the train statistics; augmented when a generator is given."""
        x = (self.images[index].float() / 255.0 - self.mean) / self.std
        if generator is not None:
            x = augment_batch(x, generator)
        return x.contiguous(memory_format=self.memory_format)


@dataclass(frozen=True)
class _TrialData:
    """A trial's data on its device, and how it is cut into batches."""

    images: torch.Tensor  # uint8 N×C×R×R at the trial's resolution
    labels: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor
    mean: tuple[float, ...]  # the train split's statistics, for normalization
    std: tuple[float, ...]
    augment: bool
    batch_size: int
    steps_per_epoch: int


def _trial_data(
    dataset: Dataset, recipe: Recipe, resolution: int, view: int | None, device: torch.device
) -> _TrialData:
    """The split, the images at `resolution` (resized to `view` first, see `data.prep.resized_images`) and
    the batch plan of a trial, on `device`."""
    split = split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    train_index = split.train_indices.to(device)
    batch_size = min(recipe.batch_size, len(train_index))
    return _TrialData(
        # uint8 at the trial's resolution (memory-mapped and shared on CPU; one device copy on CUDA, 4×
        # smaller than floats); batches are converted and normalized as they are drawn.
        images=resized_images(dataset, resolution, view=view).to(device),
        labels=dataset.labels.to(device),
        train_index=train_index,
        val_index=split.val_indices.to(device),
        mean=split.mean,
        std=split.std,
        augment=dataset.augment_default if recipe.augment is None else recipe.augment,
        batch_size=batch_size,
        # Drop the ragged last batch: a batch of one breaks batch norm, and equal steps keep timing honest.
        steps_per_epoch=len(train_index) // batch_size,
    )


def _precision(device: torch.device, capture: bool) -> tuple[Callable[[], AbstractContextManager[object]], bool]:
    """(autocast context factory, whether gradients need a GradScaler) for training on `device`."""
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    grad_scaling = cuda and amp_dtype == torch.float16  # fp16 gradients underflow without a GradScaler
    if cuda:
        # Fixed shapes every step: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = True

    def autocast() -> AbstractContextManager[object]:
        """Mixed precision on CUDA; full fp32 on CPU, where autocast only slows small convs.

        The autocast weight cache must be off while graphs are captured (torch's rule for
        make_graphed_callables); a proxy uses each weight once per pass, so the cache saves nothing.
        """
        return torch.autocast("cuda", dtype=amp_dtype, cache_enabled=not capture) if cuda else nullcontext()

    return autocast, grad_scaling


def _train(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    resolution: int,
    view: int | None,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] | None,
    layout: str,
    capture: bool,
) -> tuple[list[EpochMetrics], LayoutChoice, bool]:
    """The training loop proper; returns one EpochMetrics per epoch, the layout and whether it captured."""
    data = _trial_data(dataset, recipe, resolution, view, device)
    autocast, grad_scaling = _precision(device, capture)
    torch.manual_seed(seed)
    model = initialize(model_factory(), recipe.init).to(device)
    if layout == "auto":
        # The probe trains on the first batch of the split (no random draw) with copies of the model.
        probe_index = data.train_index[: data.batch_size]
        probe = _Batches(data.images, data.mean, data.std, torch.contiguous_format)(probe_index)
        labels = data.labels[probe_index]
        choice = choose_layout(model, probe, labels, recipe, autocast=autocast, grad_scaler=grad_scaling)
    else:
        choice = LayoutChoice(layout=layout, source="forced")
    memory_format = LAYOUTS[choice.layout]
    # Module.to accepts memory_format at run time; torch's type stubs do not list it.
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    batches = _Batches(data.images, data.mean, data.std, memory_format)
    loop = _Loop(model, recipe, data, batches, autocast, grad_scaling, layout=choice.layout, seed=seed)
    captured = capture and device.type == "cuda"
    if captured:
        loop.model = _graphed(model, batches(data.train_index[: data.batch_size]), autocast)
    history: list[EpochMetrics] = []
    for epoch in range(1, recipe.epochs + 1):
        history.append(loop.epoch(epoch))
        if on_epoch is not None:
            on_epoch(history[-1])  # may raise to stop the trial (ASHA); deliberately not caught
    return history, choice, captured


class _Loop:
    """A trial's training state (model, optimizer, scaler, step count, random stream); one epoch at a time."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        data: _TrialData,
        batches: _Batches,
        autocast: Callable[[], AbstractContextManager[object]],
        grad_scaling: bool,
        *,
        layout: str,
        seed: int,
    ) -> None:
        self.model = model
        self.recipe = recipe
        self.data = data
        self.batches = batches
        self.autocast = autocast
        self.layout = layout
        self.optimizer = make_optimizer(model, recipe)
        self.scaler = torch.amp.GradScaler("cuda") if grad_scaling else None
        # Batch order and augmentation draw from their own generator, independent of the model's code.
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.lr = recipe.lr
        self.total_steps = data.steps_per_epoch * recipe.epochs
        self.warmup_steps = round(recipe.warmup_epochs * data.steps_per_epoch)

    def epoch(self, epoch: int) -> EpochMetrics:
        """Train one epoch, then evaluate; TrainingDiverged on a non-finite training loss."""
        start = time.perf_counter()
        train_loss = self._train_epoch()
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch} (lr {self.lr:.3g})")
        data = self.data
        val_loss, val_accuracy = _evaluate(self.model, self.batches, data.val_index, data.labels, self.autocast)
        return EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=time.perf_counter() - start,
            images_per_second=data.steps_per_epoch * data.batch_size / train_seconds,
            lr=self.lr,
            layout=self.layout,
        )

    def _train_epoch(self) -> float:
        """One pass over the train split in a fresh random order; the mean training loss."""
        data, recipe = self.data, self.recipe
        self.model.train()
        order = data.train_index[
            torch.randperm(len(data.train_index), generator=self.generator).to(data.train_index.device)
        ]
        loss_sum = torch.zeros((), device=data.train_index.device)
        for i in range(data.steps_per_epoch):
            self.lr = lr_at(self.step, self.total_steps, self.warmup_steps, recipe)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            index = order[i * data.batch_size : (i + 1) * data.batch_size]
            inputs = self.batches(index, self.generator if data.augment else None)
            targets = data.labels[index]
            loss = train_step(
                self.model, self.optimizer, self.scaler, inputs, targets, recipe.label_smoothing, self.autocast
            )
            # Accumulate on the device; one sync per epoch instead of one per step.
            loss_sum += loss.float()
            self.step += 1
        return float(loss_sum) / data.steps_per_epoch  # float() waits for the device


def _graphed(
    model: nn.Module, sample: torch.Tensor, autocast: Callable[[], AbstractContextManager[object]]
) -> nn.Module:
    """The model with its training-mode forward and backward captured as CUDA graphs.

    make_graphed_callables warms up on a side stream with a few forward passes, which would move
    batch-norm running statistics; they are restored, so capture does not change what is trained.
    Evaluation (eval mode) runs the original forward, as make_graphed_callables does for a mode
    other than the captured one.
    """
    model.train()
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    with autocast():
        graphed = torch.cuda.make_graphed_callables(model, (sample,))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    assert isinstance(graphed, nn.Module)
    return graphed


# --- evaluation ---------------------------------------------------------------------------------


def _evaluate(
    model: nn.Module,
    batches: _Batches,
    index: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[object]],
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the held-out images `index`, in eval mode without autograd."""
    model.eval()
    loss_sum = torch.zeros((), device=index.device)
    correct = torch.zeros((), device=index.device, dtype=torch.int64)
    size = _eval_batch_size(batches.images.shape[-1])
    with torch.inference_mode(), autocast():
        for start in range(0, len(index), size):
            part = index[start : start + size]
            logits = model(batches(part)).float()
            targets = labels[part]
            loss_sum += F.cross_entropy(logits, targets, reduction="sum")
            correct += (logits.argmax(dim=1) == targets).sum()
    n = len(index)
    return float(loss_sum) / n, float(correct) / n


def _eval_batch_size(resolution: int) -> int:
    """Images per evaluation batch at `resolution`: _EVAL_BATCH, fewer for big images."""
    return max(1, min(_EVAL_BATCH, _EVAL_PIXELS // (resolution * resolution)))

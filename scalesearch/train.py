"""Train and evaluate one proxy model; report per-epoch metrics through a callback.

The hot loop works on pre-resized, normalized float tensors sliced by index (no DataLoader, no
per-sample Python), so a trial runs at the speed of a hand-written PyTorch loop. The search calls
`train_model` once per trial; ASHA stops a trial by raising inside `on_epoch`, which propagates.
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

from scalesearch.data import Dataset, Split, augment_batch, resized_images, split_dataset
from scalesearch.recipe import Recipe

# Evaluation has no backward pass, so it can use bigger batches than training.
_EVAL_BATCH = 1024


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


@dataclass(frozen=True)
class TrainResult:
    """A finished training run."""

    epochs: list[EpochMetrics]
    final_val_accuracy: float
    best_val_accuracy: float
    seconds: float
    device: str


def train_model(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    *,
    resolution: int,
    seed: int,
    threads: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train a fresh model from `model_factory` on `dataset` and return per-epoch validation metrics.

    Seeds torch before building the model, so weights, batch order and augmentation are functions of
    `seed`: on CPU the same seed gives the same losses and accuracies. `threads` sets torch's intra-op
    threads for this call (restored afterwards). `device` defaults to "cuda" when available, else
    "cpu"; on CUDA the data lives on the device, inputs and model are channels-last, and the forward
    pass runs under bf16 autocast (fp16 with a GradScaler where bf16 is unsupported).
    Raises TrainingDiverged on a non-finite loss; exceptions from `on_epoch` propagate.
    """
    start = time.perf_counter()
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        epochs = _train(model_factory, dataset, recipe, resolution, seed, run_device, on_epoch)
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)
    accuracies = [m.val_accuracy for m in epochs]
    return TrainResult(
        epochs=epochs,
        final_val_accuracy=accuracies[-1],
        best_val_accuracy=max(accuracies),
        seconds=time.perf_counter() - start,
        device=str(run_device),
    )


def _train(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    resolution: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> list[EpochMetrics]:
    """The training loop proper; returns one EpochMetrics per epoch."""
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    split = split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    train_x, train_y, val_x, val_y = _prepare_tensors(dataset, split, resolution, device, memory_format)
    augment = dataset.augment_default if recipe.augment is None else recipe.augment

    torch.manual_seed(seed)
    model = model_factory().to(device)
    if cuda:
        # Module.to accepts memory_format at run time; torch's type stubs do not list it.
        model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    optimizer = _make_optimizer(model, recipe)
    # Batch order and augmentation draw from their own generator, independent of the model's code.
    generator = torch.Generator().manual_seed(seed)

    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if cuda and amp_dtype == torch.float16 else None
    if cuda:
        # Fixed shapes every step: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = True

    def autocast() -> AbstractContextManager[object]:
        """Mixed precision on CUDA; full fp32 on CPU, where autocast only slows small convs."""
        return torch.autocast("cuda", dtype=amp_dtype) if cuda else nullcontext()

    n_train = len(train_y)
    batch_size = min(recipe.batch_size, n_train)
    # Drop the ragged last batch: a batch of one breaks batch norm, and equal steps keep timing honest.
    steps_per_epoch = n_train // batch_size
    total_steps = steps_per_epoch * recipe.epochs
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)

    history: list[EpochMetrics] = []
    step = 0
    lr = recipe.lr
    for epoch in range(1, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            lr = _lr_at(step, total_steps, warmup_steps, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[i * batch_size : (i + 1) * batch_size]
            inputs = train_x[index]
            if augment:
                inputs = augment_batch(inputs, generator)
            targets = train_y[index]
            with autocast():
                loss = F.cross_entropy(model(inputs), targets, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            # Accumulate on the device; one sync per epoch instead of one per step.
            loss_sum += loss.detach().float()
            step += 1
        train_loss = float(loss_sum) / steps_per_epoch  # float() waits for the device
        train_seconds = time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch} (lr {lr:.3g})")

        val_loss, val_accuracy = _evaluate(model, val_x, val_y, autocast)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=time.perf_counter() - epoch_start,
            images_per_second=steps_per_epoch * batch_size / train_seconds,
            lr=lr,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)  # may raise to stop the trial (ASHA); deliberately not caught
    return history


def _prepare_tensors(
    dataset: Dataset,
    split: Split,
    resolution: int,
    device: torch.device,
    memory_format: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized float train/val images at `resolution` and their labels, on `device`, made once."""
    # Move uint8 to the device first (4× less to copy), then convert and normalize there.
    images = resized_images(dataset, resolution).to(device)
    mean = torch.tensor(split.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(split.std, device=device).view(1, -1, 1, 1)

    def normalized(indices: torch.Tensor) -> torch.Tensor:
        """Float images of one subset, normalized with the train statistics."""
        x = (images[indices.to(device)].float() / 255.0 - mean) / std
        return x.contiguous(memory_format=memory_format)

    labels = dataset.labels.to(device)
    return (
        normalized(split.train_indices),
        labels[split.train_indices.to(device)],
        normalized(split.val_indices),
        labels[split.val_indices.to(device)],
    )


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW with weight decay on conv/linear weights only.

    Decaying batch-norm scales and biases only fights the normalization in small nets (as in timm's
    `param_groups_weight_decay`), so parameters with fewer than 2 dimensions are not decayed.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)


def _lr_at(step: int, total_steps: int, warmup_steps: int, recipe: Recipe) -> float:
    """The learning rate at `step` (0-based) under the recipe's schedule.

    cosine: linear warm-up from 0 to lr, then a half cosine down to 0.
    onecycle: linear warm-up from lr/25 to lr, then linear decay to lr/10⁴ (Smith's one-cycle, with
    PyTorch OneCycleLR's default start and end factors).
    """
    peak = recipe.lr
    if recipe.schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if step < warmup_steps:
            return start + (peak - start) * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return peak + (end - peak) * progress
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def _evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[object]],
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a held-out set, in eval mode without autograd."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    with torch.inference_mode(), autocast():
        for start in range(0, len(labels), _EVAL_BATCH):
            logits = model(images[start : start + _EVAL_BATCH]).float()
            targets = labels[start : start + _EVAL_BATCH]
            loss_sum += F.cross_entropy(logits, targets, reduction="sum")
            correct += (logits.argmax(dim=1) == targets).sum()
    n = len(labels)
    return float(loss_sum) / n, float(correct) / n

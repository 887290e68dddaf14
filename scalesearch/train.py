"""Train and evaluate one proxy model; report per-epoch metrics through a callback.

The hot loop slices batches by index out of the uint8 images at the trial's resolution and converts,
normalizes (and augments) one batch at a time (no DataLoader, no per-sample Python, no float copy of
the dataset), so a trial runs at the speed of a hand-written PyTorch loop in a bounded amount of
memory. The search calls `train_model` once per trial; ASHA stops a trial by raising inside
`on_epoch`, which propagates.

Memory layout: small proxies on CPU run up to 1.4× faster channels-last than in the NCHW layout
(oneDNN's NHWC kernels), but not every network or device gains, so the layout is chosen by
measuring a few training steps of the actual model at the actual batch size and resolution (see
`choose_layout`), and reported with every epoch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from scalesearch.data import Dataset, augment_batch, default_cache_dir, resized_images, split_dataset
from scalesearch.recipe import Recipe

# Evaluation has no backward pass, so it can use bigger batches than training, but its activations
# grow with the batch: at most _EVAL_BATCH images and _EVAL_PIXELS pixels per image plane per batch.
# On one CPU thread the 18 px default proxy evaluates 3,200 images/s at 256 and 2,100 at 1,024 (the
# old size; 1,273 against 559 at 32 px), so 256 is also the faster; the pixel cap keeps a 96 px
# trial's evaluation batch (28 images) from holding ~1 GB of activations.
_EVAL_BATCH = 256
_EVAL_PIXELS = 256 * 32 * 32
# The layouts `train_model` can use, by the name reported in the metrics.
LAYOUTS: dict[str, torch.memory_format] = {
    "channels_last": torch.channels_last,
    "contiguous": torch.contiguous_format,
}
# Layout probe: the first steps of a layout build its oneDNN/cuDNN kernels (3-10× slower than later
# ones), so each layout first takes _PROBE_WARMUP steps; then rounds of _PROBE_STEPS steps alternate
# between the layouts (both meet the same background load) and each keeps its fastest round, the
# figure least disturbed by other processes. The rounds stop early once one layout is _PROBE_CLEAR×
# faster (the default proxy's 1.4× is decided after one round, ~0.5 s at 18 px) or after
# _PROBE_BUDGET_S on slow networks.
_PROBE_WARMUP = 2
_PROBE_ROUNDS = 3
_PROBE_STEPS = 2
_PROBE_CLEAR = 1.25
_PROBE_BUDGET_S = 8.0
# Bump when the probe changes, so layout decisions stored on disk are measured again.
_PROBE_VERSION = 1


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
class LayoutChoice:
    """The memory layout a run used, and how it was decided."""

    layout: str  # "channels_last" or "contiguous"
    # "forced" (layout= given), "measured" (probed by this call), "memo" (probed earlier in this
    # process) or "disk" (probed earlier on this machine, read back from the cache directory).
    source: str
    # Training images/s per layout measured by the probe that decided; empty when forced.
    images_per_second: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time this call spent deciding (probing or looking up)


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
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        epochs, choice, captured = _train(
            model_factory, dataset, recipe, resolution, seed, run_device, on_epoch, layout, capture
        )
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


def _train(
    model_factory: Callable[[], nn.Module],
    dataset: Dataset,
    recipe: Recipe,
    resolution: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] | None,
    layout: str,
    capture: bool,
) -> tuple[list[EpochMetrics], LayoutChoice, bool]:
    """The training loop proper; returns one EpochMetrics per epoch, the layout and whether it captured."""
    cuda = device.type == "cuda"
    split = split_dataset(dataset, val_fraction=recipe.val_fraction, seed=recipe.split_seed)
    # uint8 at the trial's resolution (memory-mapped and shared on CPU; one device copy on CUDA, 4×
    # smaller than floats); batches are converted and normalized as they are drawn.
    images = resized_images(dataset, resolution).to(device)
    labels = dataset.labels.to(device)
    train_index = split.train_indices.to(device)
    val_index = split.val_indices.to(device)
    augment = dataset.augment_default if recipe.augment is None else recipe.augment

    n_train = len(train_index)
    batch_size = min(recipe.batch_size, n_train)
    # Drop the ragged last batch: a batch of one breaks batch norm, and equal steps keep timing honest.
    steps_per_epoch = n_train // batch_size
    total_steps = steps_per_epoch * recipe.epochs
    warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)

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

    torch.manual_seed(seed)
    model = model_factory().to(device)
    if layout == "auto":
        # The probe trains on the first batch of the split (no random draw) with copies of the model.
        probe_index = train_index[:batch_size]
        probe = _Batches(images, split.mean, split.std, torch.contiguous_format)(probe_index)
        choice = choose_layout(model, probe, labels[probe_index], recipe, autocast=autocast, grad_scaler=grad_scaling)
    else:
        choice = LayoutChoice(layout=layout, source="forced")
    memory_format = LAYOUTS[choice.layout]
    # Module.to accepts memory_format at run time; torch's type stubs do not list it.
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    batches = _Batches(images, split.mean, split.std, memory_format)
    optimizer = _make_optimizer(model, recipe)
    scaler = torch.amp.GradScaler("cuda") if grad_scaling else None
    captured = False
    if capture and cuda:
        model = _graphed(model, batches(train_index[:batch_size]), autocast)
        captured = True
    # Batch order and augmentation draw from their own generator, independent of the model's code.
    generator = torch.Generator().manual_seed(seed)

    history: list[EpochMetrics] = []
    step = 0
    lr = recipe.lr
    for epoch in range(1, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = train_index[torch.randperm(n_train, generator=generator).to(device)]
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            lr = _lr_at(step, total_steps, warmup_steps, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[i * batch_size : (i + 1) * batch_size]
            inputs = batches(index, generator if augment else None)
            loss = _step(model, optimizer, scaler, inputs, labels[index], recipe.label_smoothing, autocast)
            # Accumulate on the device; one sync per epoch instead of one per step.
            loss_sum += loss.float()
            step += 1
        train_loss = float(loss_sum) / steps_per_epoch  # float() waits for the device
        train_seconds = time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch} (lr {lr:.3g})")

        val_loss, val_accuracy = _evaluate(model, batches, val_index, labels, autocast)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_seconds=time.perf_counter() - epoch_start,
            images_per_second=steps_per_epoch * batch_size / train_seconds,
            lr=lr,
            layout=choice.layout,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)  # may raise to stop the trial (ASHA); deliberately not caught
    return history, choice, captured


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float,
    autocast: Callable[[], AbstractContextManager[object]],
) -> torch.Tensor:
    """One optimizer step on one batch; returns the (detached) loss. Shared by training and the probe."""
    with autocast():
        loss = F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


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


# --- memory layout ------------------------------------------------------------------------------

# Decisions made in this process, by probe key: trials of one network do not measure twice.
_LAYOUT_MEMO: dict[str, LayoutChoice] = {}


def clear_layout_cache() -> None:
    """Forget this process's layout decisions (tests; the decisions on disk stay)."""
    _LAYOUT_MEMO.clear()


def choose_layout(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    recipe: Recipe,
    *,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    grad_scaler: bool = False,
    cache_dir: str | None = None,
) -> LayoutChoice:
    """The faster memory layout for training `model` on batches like `inputs`, by measurement.

    Times a few training steps of copies of `model` in each layout (see _PROBE_*), at the batch size,
    resolution, device and thread count of the call. The probe runs under a forked RNG state and on
    copies, so the caller's weights and random stream are untouched; `autocast` and `grad_scaler`
    (fp16 on CUDA) make its steps the training loop's. Decisions are remembered per
    (model structure, input shape, device, threads) in the process, and on disk in
    `cache_dir`/layouts (default: the dataset cache directory) keyed by the machine too: layouts
    round floating-point sums differently, so a decision that flipped between runs on near-equal
    timings would break "same seed, same machine, same metrics"; the first measurement stands.
    """
    start = time.perf_counter()
    key, description = _probe_key(model, inputs)
    if key in _LAYOUT_MEMO:
        known = _LAYOUT_MEMO[key]
        return LayoutChoice(known.layout, "memo", known.images_per_second, time.perf_counter() - start)
    path = os.path.join(cache_dir or default_cache_dir(), "layouts", f"layout-{key}.json")
    stored = _read_layout(path)
    if stored is None:
        measured = _probe(model, inputs, targets, recipe, autocast, grad_scaler)
        best = max(LAYOUTS, key=lambda name: measured[name])
        stored = _store_layout(path, best, measured, description)
    choice = LayoutChoice(stored.layout, stored.source, stored.images_per_second, time.perf_counter() - start)
    _LAYOUT_MEMO[key] = choice
    return choice


def _probe(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    recipe: Recipe,
    autocast: Callable[[], AbstractContextManager[object]],
    grad_scaler: bool,
) -> dict[str, float]:
    """Training images/s per layout: warm-up steps, then alternating timed rounds, best round kept."""
    device = inputs.device
    cuda = device.type == "cuda"
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []

    def sync() -> None:
        """Wait for queued kernels, so wall time measures them."""
        if cuda:
            torch.cuda.synchronize(device)

    with torch.random.fork_rng(devices=fork_devices):
        runs = {}
        for name, memory_format in LAYOUTS.items():
            # Module.to accepts memory_format at run time; torch's type stubs do not list it.
            twin = copy.deepcopy(model).to(memory_format=memory_format)  # type: ignore[call-overload]
            twin.train()
            scaler = torch.amp.GradScaler("cuda") if grad_scaler else None
            runs[name] = (twin, _make_optimizer(twin, recipe), scaler, inputs.contiguous(memory_format=memory_format))
            for _ in range(_PROBE_WARMUP):
                _step(twin, runs[name][1], scaler, runs[name][3], targets, recipe.label_smoothing, autocast)
        best = dict.fromkeys(LAYOUTS, math.inf)
        began = time.perf_counter()
        for round_number in range(_PROBE_ROUNDS):
            names = list(LAYOUTS) if round_number % 2 == 0 else list(reversed(LAYOUTS))
            for name in names:
                twin, optimizer, scaler, x = runs[name]
                sync()
                tick = time.perf_counter()
                for _ in range(_PROBE_STEPS):
                    _step(twin, optimizer, scaler, x, targets, recipe.label_smoothing, autocast)
                sync()
                best[name] = min(best[name], (time.perf_counter() - tick) / _PROBE_STEPS)
            if max(best.values()) >= _PROBE_CLEAR * min(best.values()):
                break
            if time.perf_counter() - began > _PROBE_BUDGET_S:
                break
    return {name: len(inputs) / seconds for name, seconds in best.items()}


def _probe_key(model: nn.Module, inputs: torch.Tensor) -> tuple[str, dict[str, object]]:
    """(digest, readable description) of what a layout decision depends on.

    The module tree's repr names every layer with its kernel sizes, strides and channels; parameter
    and buffer shapes cover modules whose repr does not. The machine (CPU model, torch build, GPU
    name) makes decisions stored on a shared disk safe across hosts.
    """
    structure = repr(model) + repr(
        [(name, tuple(t.shape), str(t.dtype)) for name, t in [*model.named_parameters(), *model.named_buffers()]]
    )
    device = inputs.device
    description: dict[str, object] = {
        "model": hashlib.sha256(structure.encode()).hexdigest()[:16],
        "model_class": type(model).__name__,
        "input": list(inputs.shape),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "probe": _PROBE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
    return digest, description


def _cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is often empty on Linux)."""
    with suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _read_layout(path: str) -> LayoutChoice | None:
    """A layout decision stored on disk, or None when absent or unreadable (then it is measured again)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        layout = record["layout"]
        rates = {str(k): float(v) for k, v in record["images_per_second"].items()}
        if layout not in LAYOUTS:
            raise ValueError(layout)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged decision is only a cache: measure again and replace it
        with suppress(OSError):
            os.unlink(path)
        return None
    return LayoutChoice(layout, "disk", rates)


def _store_layout(path: str, layout: str, rates: dict[str, float], description: dict[str, object]) -> LayoutChoice:
    """Store a decision unless one is already there; returns the decision that stands ("measured"
    when it is this one, "disk" when another process stored one first).

    The file is created by a hard link from a complete temp file, which fails when the name exists:
    of several workers probing the same network at once, the first to finish wins and the others
    adopt its decision, so all of them train in one layout.
    """
    record = {"layout": layout, "images_per_second": rates, "key": description, "measured_at": time.time()}
    with suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.link(tmp, path)
        except FileExistsError:
            existing = _read_layout(path)
            if existing is not None:
                return existing
        finally:
            with suppress(OSError):
                os.unlink(tmp)
    return LayoutChoice(layout, "measured", rates)


# --- optimizer, schedule, evaluation ------------------------------------------------------------


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

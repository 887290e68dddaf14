"""Which memory layout a network trains faster in, channels-last or NCHW, by measurement.

Small proxies on CPU run up to 1.4× faster channels-last (oneDNN's NHWC kernels), but not every
network or device gains, so `choose_layout` times a few training steps of copies of the actual model
at the actual batch size and resolution, and remembers the decision in the process and on disk
(`<cache dir>/layouts`), keyed by the model's structure, the input, the device, threads and machine.
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
from torch import nn

from scalesearch.config.recipe import Recipe
from scalesearch.core.machine import default_cache_dir
from scalesearch.training.optimizer import make_optimizer, train_step

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
            runs[name] = (twin, make_optimizer(twin, recipe), scaler, inputs.contiguous(memory_format=memory_format))
            for _ in range(_PROBE_WARMUP):
                train_step(twin, runs[name][1], scaler, runs[name][3], targets, recipe.label_smoothing, autocast)
        best = dict.fromkeys(LAYOUTS, math.inf)
        began = time.perf_counter()
        for round_number in range(_PROBE_ROUNDS):
            names = list(LAYOUTS) if round_number % 2 == 0 else list(reversed(LAYOUTS))
            for name in names:
                twin, optimizer, scaler, x = runs[name]
                sync()
                tick = time.perf_counter()
                for _ in range(_PROBE_STEPS):
                    train_step(twin, optimizer, scaler, x, targets, recipe.label_smoothing, autocast)
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

"""What a model costs: parameters and FLOPs (fvcore), activations, latency and training memory.

FLOPs convention (the paper's, and fvcore's): one fused multiply-add counts as one flop, at batch
size 1, at the variant's own resolution. fvcore counts convolutions, matmuls, batch/layer norm and
pooling, and counts elementwise ops (SiLU, GELU, softmax, mul, add) as zero; those are recorded as
`uncounted_ops` instead of being printed as warnings.

FLOPs alone mislead (REFERENCE.md: B1 vs ResNet-152 latency; pycls: activations drive GPU
runtime), so the other measurements sit beside them:

- `measure_activations`: output elements of every conv and linear layer at batch 1 (pycls's
  definition), a proxy for memory traffic.
- `measure_latency`: median wall time of a forward pass at a given batch on a given device.
- `measure_train_memory`: peak bytes of one training step (forward, backward, SGD step).
- `measure_runtime_costs`: activations, latency and memory at once (a family's, a trial's);
  `measure_all_costs`: with params and FLOPs, as a `FullCost`.

Each is cheap on a tiny proxy (tens of milliseconds), so a search can measure every trial.
Latency and memory depend on the machine, its load and torch's thread count; FLOPs, params and
activations do not.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from scalesearch.core.errors import UserError
from scalesearch.models.train_memory import measure_train_memory

FLOPS_CONVENTION = "fvcore: 1 multiply-add = 1 flop, batch 1, at the variant's resolution"
ACTIVATIONS_CONVENTION = "output elements of every Conv2d and Linear layer, batch 1"
MEMORY_CONVENTION = (
    "peak bytes of live tensors in one SGD (momentum) training step: parameters, buffers, "
    "optimizer state, the batch, activations and gradients"
)


# Timing: few repeats keep a proxy's measurement to a fraction of a second; the median after
# warm-up (allocator, oneDNN algorithm choice) resists the noise of a shared machine.
TIMING_WARMUP = 2
TIMING_REPEATS = 5
# Latency *ratios* (a latency budget) decide feasibility, so they take more repeats, on one thread
# (a trial's share of the machine and the least noisy on a shared box).
LATENCY_THREADS = 1
LATENCY_WARMUP = 3
LATENCY_REPEATS = 15


@dataclass(frozen=True)
class CostKind:
    """One cost the tool can constrain or trade accuracy against (lower is better)."""

    name: str  # as written in --constraint / --objective
    column: str  # its trials.csv column
    label: str  # axis label of plots
    exact: bool  # a count (same on every machine) rather than a timing
    scale: float = 1.0  # plots divide the column by this


# The one vocabulary of costs: adding a cost means an entry here, its measurement in this module,
# and its ratio function in planner._ratio_functions (CONTRIBUTING.md).
COSTS: dict[str, CostKind] = {
    "flops": CostKind("flops", "flops", "MFLOPs (fvcore, batch 1)", True, 1e6),
    "params": CostKind("params", "params", "parameters (millions)", True, 1e6),
    "activations": CostKind("activations", "activations", "activations (millions, batch 1)", True, 1e6),
    "latency": CostKind("latency", "latency_batch1_s", "latency at batch 1 (ms)", False, 1e-3),
}


def constraint_names() -> tuple[str, ...]:
    """The names --constraint and --objective accept."""
    return tuple(COSTS)


def cost_kind(name: str) -> CostKind:
    """The registered cost `name`; UserError listing the known ones otherwise."""

    if name not in COSTS:
        raise UserError(f"unknown cost {name!r} (choose from {', '.join(COSTS)})")
    return COSTS[name]


@dataclass(frozen=True)
class Cost:
    """Measured cost of one model variant."""

    params: int  # trainable and frozen parameters
    flops: int  # multiply-adds at batch 1 (fvcore convention)
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # op name -> occurrences fvcore skipped


@dataclass(frozen=True)
class FullCost:
    """Every cost of one model variant: the static counts and the measured ones."""

    params: int  # trainable and frozen parameters
    flops: int  # multiply-adds at batch 1 (fvcore convention)
    activations: int  # conv/linear output elements at batch 1
    latency_batch1_s: float  # median forward time of one image, seconds
    latency_throughput_s: float  # median forward time of `throughput_batch` images, seconds
    throughput_batch: int  # the batch size of latency_throughput_s
    peak_train_memory_bytes: int  # peak bytes of one training step at `memory_batch`
    memory_batch: int  # the batch size of peak_train_memory_bytes
    device: str  # where latency and memory were measured ("cpu", "cuda", "cuda:1", ...)
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # op name -> occurrences fvcore skipped

    @property
    def images_per_second(self) -> float:
        """Inference throughput at `throughput_batch`."""
        return self.throughput_batch / self.latency_throughput_s

    def as_dict(self) -> dict[str, Any]:
        """The cost as a plain JSON-ready mapping."""
        return {**asdict(self), "images_per_second": self.images_per_second}


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def count_flops(model: nn.Module, *, resolution: int, in_channels: int) -> tuple[int, dict[str, int]]:
    """fvcore FLOPs of one image at `resolution`, and the ops it left uncounted."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    image = torch.zeros(1, in_channels, resolution, resolution, device=_model_device(model))
    analysis = FlopCountAnalysis(model, image)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # fvcore also logs through the "fvcore" logger while tracing; keep it off the terminal.
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            flops = int(analysis.total())
            uncounted = {str(op): int(n) for op, n in sorted(analysis.unsupported_ops().items())}
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return flops, uncounted


def measure_cost(model: nn.Module, *, resolution: int, in_channels: int) -> Cost:
    """Parameters and FLOPs of `model` for one `in_channels` x `resolution`² image."""
    flops, uncounted = count_flops(model, resolution=resolution, in_channels=in_channels)
    return Cost(params=count_params(model), flops=flops, uncounted_ops=uncounted)


@contextlib.contextmanager
def _evaluating_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`model` in eval mode on `device`; its mode and device are restored afterwards."""
    was_training = model.training
    home = _model_device(model)
    model.to(device).eval()
    try:
        yield model
    finally:
        model.to(home).train(was_training)


def measure_activations(model: nn.Module, *, resolution: int, in_channels: int) -> int:
    """Output elements of every nn.Conv2d and nn.Linear for one image: the model's activations.

    This is pycls's definition ("Fast and Accurate Model Scaling": activations, not FLOPs, track
    GPU runtime). Forward hooks rather than fvcore's ActivationCountAnalysis: hooks need no JIT
    trace (faster, no tracer warnings) and count exactly the layers named, while fvcore also counts
    the outputs of bare matmuls (a ViT's attention maps). For a CNN the two agree (tested).
    """
    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel()

    handles = [
        module.register_forward_hook(count) for module in model.modules() if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    try:
        with _evaluating_on(model, _model_device(model)), torch.inference_mode():
            model(torch.zeros(1, in_channels, resolution, resolution, device=_model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return total


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall time measures the work and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    *,
    resolution: int,
    in_channels: int,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = TIMING_WARMUP,
    repeats: int = TIMING_REPEATS,
) -> float:
    """Median seconds of one inference forward pass of `batch_size` images on `device`.

    Runs `warmup` untimed passes (allocator, oneDNN/cuDNN algorithm choice, lazy init), then
    `repeats` timed ones under torch.inference_mode; the median resists outliers from other work
    on the machine. CPU timings use torch's current thread count (set per trial by the caller).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be >= 1 and warmup >= 0")
    device = torch.device(device)
    times = []
    with _evaluating_on(model, device), torch.inference_mode():
        images = torch.randn(batch_size, in_channels, resolution, resolution, device=device)
        for _ in range(warmup):
            model(images)
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(images)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_runtime_costs(
    model: nn.Module,
    *,
    resolution: int,
    in_channels: int,
    device: str | torch.device = "cpu",
    latency_batch: int = 32,
    memory_batch: int = 32,
    num_classes: int | None = None,
    warmup: int = TIMING_WARMUP,
    repeats: int = TIMING_REPEATS,
) -> dict[str, Any]:
    """Activations (batch 1), latency at batch 1 and `latency_batch`, and the peak memory of one
    training step at `memory_batch` on `device`: the costs beside params and FLOPs, keyed as
    FullCost's fields (and trials.csv's columns), with the batch sizes they were measured at."""
    image = {"resolution": resolution, "in_channels": in_channels}

    def latency(batch_size: int) -> float:
        return measure_latency(model, **image, batch_size=batch_size, device=device, warmup=warmup, repeats=repeats)

    return {
        "activations": measure_activations(model, **image),
        "latency_batch1_s": latency(1),
        "latency_throughput_s": latency(latency_batch),
        "throughput_batch": latency_batch,
        "peak_train_memory_bytes": measure_train_memory(
            model, **image, batch_size=memory_batch, device=device, num_classes=num_classes
        ),
        "memory_batch": memory_batch,
    }


def measure_all_costs(
    model: nn.Module,
    *,
    resolution: int,
    in_channels: int,
    device: str | torch.device = "cpu",
    latency_batch: int = 32,
    memory_batch: int = 32,
    warmup: int = TIMING_WARMUP,
    repeats: int = TIMING_REPEATS,
) -> FullCost:
    """Params, FLOPs, activations, latency at batch 1 and `latency_batch`, and training memory.

    FLOPs and activations are device-free counts at batch 1; latency and memory are measured on
    `device`. Returns a FullCost whose `as_dict()` is ready for a trials table or JSON.
    """
    flops, uncounted = count_flops(model, resolution=resolution, in_channels=in_channels)
    measured = measure_runtime_costs(
        model,
        resolution=resolution,
        in_channels=in_channels,
        device=device,
        latency_batch=latency_batch,
        memory_batch=memory_batch,
        warmup=warmup,
        repeats=repeats,
    )
    return FullCost(
        params=count_params(model),
        flops=flops,
        **measured,
        device=str(torch.device(device)),
        uncounted_ops=uncounted,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to `threads` (None: left as it is) for the block, then
    restored; yields the count in use. Timings and layout decisions depend on it."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def measure_latency_ratio(
    model: nn.Module,
    reference: nn.Module,
    *,
    resolutions: tuple[int, int],
    in_channels: int,
    threads: int = LATENCY_THREADS,
    warmup: int = LATENCY_WARMUP,
    repeats: int = LATENCY_REPEATS,
) -> float:
    """Median batch-1 CPU latency of `model` over that of `reference`, timed in alternation.

    Alternating the two (rather than timing one, then the other) makes a change of load on a shared
    machine hit both alike, so the ratio is steadier than either time. `threads` fixes torch's
    intra-op threads for the measurement (restored afterwards): thread count changes latency more
    than most candidates differ. `resolutions` are (model's, reference's).
    """
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError("repeats and threads must be >= 1 and warmup >= 0")
    pairs = [
        (net, torch.randn(1, in_channels, resolution, resolution))
        for net, resolution in ((model, resolutions[0]), (reference, resolutions[1]))
    ]
    times: tuple[list[float], list[float]] = ([], [])
    cpu = torch.device("cpu")
    with torch_threads(threads), _evaluating_on(model, cpu), _evaluating_on(reference, cpu), torch.inference_mode():
        for _ in range(warmup):
            for net, images in pairs:
                net(images)
        for _ in range(repeats):
            for index, (net, images) in enumerate(pairs):
                start = time.perf_counter()
                net(images)
                times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])

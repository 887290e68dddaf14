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
- `measure_all_costs`: all of them at once, as a `FullCost`.

Each is cheap on a tiny proxy (tens of milliseconds), so a search can measure every trial.
Latency and memory depend on the machine, its load and torch's thread count; FLOPs, params and
activations do not.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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
    from scalesearch.errors import UserError

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
    warmup: int = 2,
    repeats: int = 5,
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


def _storage_key(storage: torch.UntypedStorage) -> int:
    """Identity of a storage: its data address (empty storages have none, so their object id)."""
    return storage.data_ptr() if storage.nbytes() else id(storage)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (tied or viewed tensors counted once)."""
    seen = {_storage_key(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


class _PeakTensorBytes(TorchDispatchMode):
    """A dispatch mode tracking the bytes of live tensor storages, and their peak.

    A TorchDispatchMode sees every op below autograd (forward, backward and the optimizer's
    updates alike). Each new output storage is counted until Python's weak reference to it dies,
    which, as PyTorch keeps a storage's Python object alive with the storage, happens when the
    storage itself is freed. Views and in-place results share a storage already counted.
    """

    def __init__(self, resident: list[torch.Tensor]) -> None:
        super().__init__()
        # Resident storages are counted once, up front; ops that return views of them (a Linear's
        # weight.t(), the optimizer's in-place updates) must not count them again.
        self.live: dict[int, int] = {_storage_key(t.untyped_storage()): 0 for t in resident}
        self.current = _storage_bytes(resident)
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        """Count `storage` if it is new, and forget it when it is freed."""
        key = _storage_key(storage)
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        """Storage `key` was released."""
        self.current -= self.live.pop(key, 0)


def measure_train_memory(
    model: nn.Module,
    *,
    resolution: int,
    in_channels: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
) -> int:
    """Peak bytes of one training step (forward, cross-entropy backward, SGD-momentum step).

    The measurement runs on a deep copy of `model` (the step changes weights and batch-norm
    statistics), after one warm-up step so the momentum buffers exist as they do in steady state;
    gradients start as None, as after `zero_grad(set_to_none=True)`.

    - CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what the process
      held before the step, plus the step's own resident tensors: the caching allocator's
      exact peak, without memory of unrelated tensors in the process.
    - CPU: the CPU allocator keeps no statistics, so a dispatch mode tracks every tensor storage
      that ops create and free, and reports the peak of resident + new bytes: what the model's
      tensors need. On an H100 it read 0.5-8% below CUDA's figure for the same step (ResNet-18/50
      and EfficientNet-B0 at 224 px, proxies at 32 px). It leaves out scratch that CPU kernels
      allocate internally (im2col columns), a backend detail: torch.profiler with
      profile_memory=True would include it (1-2% more at 32 px, up to 40% more on 16 px maps
      with many channels), but needs a second of kineto start-up per process, reads a private
      results API, and prints kineto lines on stderr at every start and stop.

    `num_classes` defaults to the output width of the model.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    device = torch.device(device)
    net = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch_size, in_channels, resolution, resolution, device=device)
    if num_classes is None:
        with torch.no_grad():  # eval mode: batch norm refuses a single image per channel in training
            num_classes = int(net.eval()(images[:1]).shape[-1])
        net.train()
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step(batch: slice = slice(None)) -> None:
        loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Warm-up on two images (the fewest batch norm accepts): creates the momentum buffers, which
    # every later step finds resident, at a fraction of a full step's time.
    step(slice(0, 2))
    resident = [*net.parameters(), *net.buffers(), images, labels]
    resident += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return _storage_bytes(resident) + torch.cuda.max_memory_allocated(device) - before
    with _PeakTensorBytes(resident) as tracker:
        step()
    return tracker.peak


def measure_all_costs(
    model: nn.Module,
    *,
    resolution: int,
    in_channels: int,
    device: str | torch.device = "cpu",
    latency_batch: int = 32,
    memory_batch: int = 32,
    warmup: int = 2,
    repeats: int = 5,
) -> FullCost:
    """Params, FLOPs, activations, latency at batch 1 and `latency_batch`, and training memory.

    FLOPs and activations are device-free counts at batch 1; latency and memory are measured on
    `device`. Returns a FullCost whose `as_dict()` is ready for a trials table or JSON.
    """
    flops, uncounted = count_flops(model, resolution=resolution, in_channels=in_channels)
    image = {"resolution": resolution, "in_channels": in_channels}

    def latency(batch_size: int) -> float:
        return measure_latency(model, **image, batch_size=batch_size, device=device, warmup=warmup, repeats=repeats)

    return FullCost(
        params=count_params(model),
        flops=flops,
        activations=measure_activations(model, **image),
        latency_batch1_s=latency(1),
        latency_throughput_s=latency(latency_batch),
        throughput_batch=latency_batch,
        peak_train_memory_bytes=measure_train_memory(model, **image, batch_size=memory_batch, device=device),
        memory_batch=memory_batch,
        device=str(torch.device(device)),
        uncounted_ops=uncounted,
    )


def measure_latency_ratio(
    model: nn.Module,
    reference: nn.Module,
    *,
    resolutions: tuple[int, int],
    in_channels: int,
    threads: int = 1,
    warmup: int = 3,
    repeats: int = 15,
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
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cpu = torch.device("cpu")
        with _evaluating_on(model, cpu), _evaluating_on(reference, cpu), torch.inference_mode():
            for _ in range(warmup):
                for net, images in pairs:
                    net(images)
            for _ in range(repeats):
                for index, (net, images) in enumerate(pairs):
                    start = time.perf_counter()
                    net(images)
                    times[index].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times[0]) / statistics.median(times[1])

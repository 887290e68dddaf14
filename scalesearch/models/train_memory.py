"""The peak memory of one training step, measured (`measure_train_memory`).

A job of its own because the CPU has no allocator statistics: a dispatch mode follows every tensor
storage that ops create and free (`_PeakTensorBytes`), on a private copy of the model taking one
SGD-momentum step (`_TrainingStep`). `scalesearch.models.cost` lists it among the costs (MEMORY_CONVENTION).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
    step = _TrainingStep(model, resolution=resolution, in_channels=in_channels, batch_size=batch_size,
                         device=device, num_classes=num_classes)  # fmt: skip
    # Warm-up on two images (the fewest batch norm accepts): creates the momentum buffers, which
    # every later step finds resident, at a fraction of a full step's time.
    step(slice(0, 2))
    resident = step.resident()
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


class _TrainingStep:
    """One SGD-momentum training step on a private copy of a model and a fixed random batch."""

    def __init__(
        self,
        model: nn.Module,
        *,
        resolution: int,
        in_channels: int,
        batch_size: int,
        device: torch.device,
        num_classes: int | None,
    ) -> None:
        self.net = copy.deepcopy(model).to(device).train()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9)
        self.images = torch.randn(batch_size, in_channels, resolution, resolution, device=device)
        if num_classes is None:
            with torch.no_grad():  # eval mode: batch norm refuses a single image per channel in training
                num_classes = int(self.net.eval()(self.images[:1]).shape[-1])
            self.net.train()
        self.labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def __call__(self, batch: slice = slice(None)) -> None:
        """Forward, backward and update on `batch` of the images."""
        loss = nn.functional.cross_entropy(self.net(self.images[batch]), self.labels[batch])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def resident(self) -> list[torch.Tensor]:
        """The tensors that live across steps: parameters, buffers, the batch, the optimizer's state."""
        state = [t for entry in self.optimizer.state.values() for t in entry.values() if isinstance(t, torch.Tensor)]
        return [*self.net.parameters(), *self.net.buffers(), self.images, self.labels, *state]

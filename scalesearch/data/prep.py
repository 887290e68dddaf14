"""What training reads from a dataset: a stratified split with train-only statistics, resized copies
per resolution, and batch augmentation.

Images stay uint8: statistics are summed chunk by chunk in exact integer arithmetic, resizing works
in chunks of about `datacache.CHUNK_BYTES`, and a resized copy of at least SHARE_MIN_BYTES is made
once per machine in the shared cache and memory-mapped. Splits and resized copies are kept on the
Dataset, since every trial of a search asks for them again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from scalesearch.core.errors import UserError
from scalesearch.data import cache as datacache
from scalesearch.data.datasets import Dataset


@dataclass(frozen=True)
class Split:
    """A stratified train/validation split and the train split's per-channel statistics (0..1 scale)."""

    train_indices: torch.Tensor
    val_indices: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


def split_dataset(dataset: Dataset, *, val_fraction: float, seed: int) -> Split:
    """A stratified, deterministic train/validation split with train-only normalization statistics.

    Each class contributes round(val_fraction × count) images to validation (at least one when the
    class has two or more), chosen by a permutation seeded with `seed`, so every trial of a search
    sees the same split. Mean and std per channel (0..1 scale) come from the train split only, so
    validation images never leak into preprocessing. Cached on the dataset per (val_fraction, seed).
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    return dataset.derived(("split", float(val_fraction), int(seed)), lambda: _split(dataset, val_fraction, seed))


def _split(dataset: Dataset, val_fraction: float, seed: int) -> Split:
    """The split `split_dataset` caches."""
    labels = dataset.labels.numpy()
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in range(dataset.num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = len(members)
        n_val = min(count - 1, max(1, round(val_fraction * count))) if count >= 2 else 0
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train = torch.from_numpy(np.sort(np.concatenate(train_parts)))
    val = torch.from_numpy(np.sort(np.concatenate(val_parts)))
    if len(val) == 0:
        raise UserError(f"{dataset.spec}: too few images for a validation split")
    mean, std = channel_statistics(dataset.images, train)
    return Split(train_indices=train, val_indices=val, mean=mean, std=std)


def channel_statistics(images: torch.Tensor, indices: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (n - 1 denominator, at least 1e-3) of uint8
    `images[indices]` on a 0..1 scale.

    Each chunk of images becomes a 256-bin histogram per channel; the sums of values and of squares
    taken from the histograms are exact integers, so the result does not depend on the chunking and no
    float copy of the images is made (the float64 copy of a whole train split this replaces was 8× its
    size). A constant channel gets std 1e-3, so normalization never divides by zero.
    """
    _, channels, height, width = images.shape
    counts = torch.zeros((channels, 256), dtype=torch.int64)
    step = max(1, datacache.CHUNK_BYTES // (channels * height * width))
    for start in range(0, len(indices), step):
        chunk = images[indices[start : start + step]]
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    pixels = len(indices) * height * width
    means, stds = [], []
    for histogram in counts.tolist():
        total = sum(value * count for value, count in enumerate(histogram))
        squares = sum(value * value * count for value, count in enumerate(histogram))
        means.append(total / (255 * pixels) if pixels else 0.0)
        # n·Σx² - (Σx)² is an exact integer; one rounding when it is divided.
        variance = (pixels * squares - total * total) / (pixels * (pixels - 1)) / 255**2 if pixels > 1 else 0.0
        stds.append(max(math.sqrt(variance), 1e-3))
    return tuple(means), tuple(stds)


def resized_images(dataset: Dataset, resolution: int, *, view: int | None = None) -> torch.Tensor:
    """uint8 N×C×R×R copies of the images at `resolution`, antialiased, cached on the dataset.

    With `view` below the native size, the images are first resized to `view` px (that copy cached
    too) and resampled from there: what a proxy sees of data whose target base has headroom
    native / r_base (`planning.data_view`); a resolution above `view` is then upsampling.

    A worker runs many trials at a handful of resolutions; each is resized once per process, and a
    copy of at least SHARE_MIN_BYTES once per machine: it is written to the shared cache in chunks and
    memory-mapped, so concurrent workers share it. UserError when the copy would not fit in memory.
    """
    if resolution < 1:
        raise UserError(f"resolution must be a positive number of pixels, got {resolution}")
    if view is None or view >= dataset.native_size:
        source, view = dataset.images, None
    else:
        source = resized_images(dataset, view)
    if resolution == source.shape[-1]:
        return source
    return dataset.derived(("resized", view, resolution), lambda: _resized(dataset, source, resolution, view))


def _resized(dataset: Dataset, source: torch.Tensor, resolution: int, view: int | None) -> torch.Tensor:
    """The copy `resized_images` caches (`source` resized): from the shared cache when big enough, else made here."""
    shape = (len(source), dataset.in_channels, resolution, resolution)
    nbytes = math.prod(shape)
    datacache.check_memory(
        nbytes,
        f"{dataset.spec} at {resolution} px: {shape[0]:,} images of {shape[1]}×{resolution}×{resolution} pixels",
        "train at a lower resolution or on fewer images",
    )
    path = None
    if dataset.cache_name is not None and dataset.cache_dir is not None and nbytes >= datacache.SHARE_MIN_BYTES:
        step = "" if view is None else f".v{view}"
        path = os.path.join(dataset.cache_dir, f"{dataset.cache_name}{step}.r{resolution}.npy")
    array = datacache.materialize(path, shape, lambda: _resize_chunks(source, resolution))
    return torch.from_numpy(array)


def _resize_chunks(images: torch.Tensor, resolution: int) -> Iterator[np.ndarray]:
    """Antialiased bilinear resizes of consecutive chunks of uint8 images, as uint8 arrays.

    Chunks keep the float temporaries within datacache.CHUNK_BYTES; each image is resized on its own, so
    chunking does not change a pixel.
    """
    _, channels, height, width = images.shape
    step = max(1, datacache.CHUNK_BYTES // (4 * channels * max(height * width, resolution * resolution)))
    for start in range(0, len(images), step):
        scaled = torch.nn.functional.interpolate(
            images[start : start + step].float(),
            size=(resolution, resolution),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        yield scaled.round_().clamp_(0, 255).to(torch.uint8).numpy()


def augment_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random crop (zero-padded by 1/8 of the side, then cropped back) and horizontal flip per image.

    Works on a whole float batch at once (no per-sample Python), on whatever device it lives on.
    """
    n, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)[None, :]
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)[None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing gives N×H×W×C; move channels back into place.
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)[:, None, None, None]
    return torch.where(flip, cropped.flip(3), cropped).contiguous(memory_format=_memory_format(images))


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    """channels_last when the input is, so augmentation keeps the CUDA layout."""
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format

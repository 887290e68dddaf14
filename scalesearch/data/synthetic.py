"""The `synthetic[:key=value,...]` dataset: generated images whose class is a pair (global layout,
fine texture), so resolution, width and depth all matter.

Keys: ``n`` (samples, 2000), ``classes`` (10, at most 32), ``size`` (native side, 32), ``channels``
(1 or 3, 3), ``seed`` (0), ``noise`` (pixel noise std on a 0..1 scale, 0.1). Generation works in
chunks of about `datacache.CHUNK_BYTES`, so no float copy of the whole set is ever held; the same
seed gives the same pixels whatever the chunking. `data.load_dataset` turns the arrays into a Dataset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

import numpy as np

from scalesearch.core.errors import UserError
from scalesearch.data import cache as datacache

_SYNTHETIC_DEFAULTS: dict[str, float] = {
    "n": 2000,
    "classes": 10,
    "size": 32,
    "channels": 3,
    "seed": 0,
    "noise": 0.1,
}
# Global layouts (which region is bright) and fine textures (period-2 patterns, invisible once an
# image is downscaled by 2 or more). A class is one (layout, texture) pair.
_LAYOUTS = ("left", "top", "disk", "diagonal", "ring", "checker-quadrants", "corner", "band")
_TEXTURES = ("h-stripes", "v-stripes", "checkerboard", "flat")


def parse_synthetic(spec: str, options: str) -> dict[str, float]:
    """The synthetic generator's options from 'key=value,...'; UserError on anything unknown or too big."""
    values = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in values:
            raise UserError(f"{spec}: unknown option {item!r}; known: {', '.join(_SYNTHETIC_DEFAULTS)}")
        try:
            values[key] = float(raw) if key == "noise" else int(raw)
        except ValueError:
            raise UserError(f"{spec}: option {key} expects a number, got {raw!r}") from None
    limits = {
        "n": (4, 1_000_000),
        "classes": (2, len(_LAYOUTS) * len(_TEXTURES)),
        "size": (4, 512),
        # numpy seeds must be non-negative; 32 bits, like the recipe's split_seed.
        "seed": (0, 2**32 - 1),
    }
    for key, (low, high) in limits.items():
        if not low <= values[key] <= high:
            raise UserError(f"{spec}: {key}={values[key]:g} is outside [{low}, {high}]")
    if values["channels"] not in (1, 3):
        raise UserError(f"{spec}: channels must be 1 or 3")
    if not 0 <= values["noise"] <= 1:
        raise UserError(f"{spec}: noise must be in [0, 1]")
    n, channels, size = int(values["n"]), int(values["channels"]), int(values["size"])
    datacache.check_memory(
        n * channels * size * size,
        f"{spec}: {n:,} images of {channels}×{size}×{size} pixels",
        "ask for fewer or smaller images (n=..., size=...)",
    )
    return values


def synthetic_arrays(spec: str, options: str, cache_dir: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(images, labels, class names, cache name) of `synthetic:OPTIONS`, deterministic by seed; see
    `_synthetic_draw` for what the classes mean. A set of at least SHARE_MIN_BYTES is generated once
    into the shared cache and memory-mapped."""
    values = parse_synthetic(spec, options)
    n, classes, size = int(values["n"]), int(values["classes"]), int(values["size"])
    channels, seed, noise = int(values["channels"]), int(values["seed"]), float(values["noise"])
    draw = _synthetic_draw(n=n, classes=classes, channels=channels, rng=np.random.default_rng(seed))
    name = "synthetic-" + datacache.digest(sorted(values.items()))
    shape = (n, channels, size, size)
    big = math.prod(shape) >= datacache.SHARE_MIN_BYTES
    path = os.path.join(cache_dir, f"{name}.images.npy") if big else None
    images = datacache.materialize(
        path,
        shape,
        lambda: synthetic_chunks(n=n, classes=classes, size=size, channels=channels, seed=seed, noise=noise),
    )
    return images, draw.labels, draw.names, name


@dataclass(frozen=True)
class _SyntheticDraw:
    """The per-image parameters of a synthetic set (O(n) numbers); pixels are made chunk by chunk."""

    labels: np.ndarray  # N class indices, balanced
    names: list[str]  # "layout/texture" per class
    layout: np.ndarray  # N layout indices
    texture: np.ndarray  # N texture indices
    cx: np.ndarray  # N×1×1 layout centres, 0..1 scale
    cy: np.ndarray
    phase: np.ndarray  # N×1×1 texture phase, 0 or 1
    base: np.ndarray  # N×1×1 brightness, lift of the bright region, texture contrast
    lift: np.ndarray
    contrast: np.ndarray
    tint: np.ndarray  # N×C×1×1 per-channel tint


def _synthetic_draw(*, n: int, classes: int, channels: int, rng: np.random.Generator) -> _SyntheticDraw:
    """Labels and per-image parameters, drawn from `rng` in a fixed order (pixel noise comes after).

    Class c is a pair (layout, texture). The layout is a jittered bright region over the whole image
    (telling layouts apart needs a receptive field covering the image: depth); the texture is a
    period-2 pattern of random phase inside every pixel (it needs full resolution: downscaling by 2
    averages it away). Pairs are ordered so that even 2-4 classes vary in both, and learning all
    pairs takes capacity (width). Brightness, contrast, tint and noise vary per image and carry no
    class information.
    """
    pairs = sorted(product(range(len(_LAYOUTS)), range(len(_TEXTURES))), key=lambda p: (max(p), p))[:classes]
    labels = rng.permutation(np.arange(n) % classes)
    # Jitter every boundary by up to ±15% of the image so layouts are shapes, not fixed pixels.
    cx, cy = rng.uniform(0.35, 0.65, size=(2, n, 1, 1))
    phase = rng.integers(0, 2, size=(n, 1, 1))
    base = rng.uniform(0.15, 0.35, size=(n, 1, 1))
    lift = rng.uniform(0.25, 0.4, size=(n, 1, 1))
    contrast = rng.uniform(0.2, 0.3, size=(n, 1, 1))
    tint = rng.uniform(0.7, 1.0, size=(n, channels, 1, 1)) if channels == 3 else np.ones((n, 1, 1, 1))
    return _SyntheticDraw(
        labels=labels.astype(np.int64),
        names=[f"{_LAYOUTS[g]}/{_TEXTURES[t]}" for g, t in pairs],
        layout=np.array([pairs[c][0] for c in labels], dtype=np.int64),
        texture=np.array([pairs[c][1] for c in labels], dtype=np.int64),
        cx=cx,
        cy=cy,
        phase=phase,
        base=base,
        lift=lift,
        contrast=contrast,
        tint=tint,
    )


def synthetic_chunks(
    *, n: int, classes: int, size: int, channels: int, seed: int, noise: float
) -> Iterator[np.ndarray]:
    """The N×C×S×S uint8 images in consecutive chunks along N.

    numpy draws the pixel noise value by value, so chunked draws give exactly the images one big draw
    gives, while the float64 temporaries stay within datacache.CHUNK_BYTES instead of ~40× the uint8 size.
    """
    rng = np.random.default_rng(seed)
    draw = _synthetic_draw(n=n, classes=classes, channels=channels, rng=rng)
    step = max(1, datacache.CHUNK_BYTES // (channels * size * size * 8))
    for start in range(0, n, step):
        part = slice(start, min(n, start + step))
        layout, texture = draw.layout[part], draw.texture[part]
        count = len(layout)
        bright = np.zeros((count, size, size))
        fine = np.zeros((count, size, size))
        for g in range(len(_LAYOUTS)):
            members = layout == g
            bright[members] = _layout_mask(g, size, draw.cx[part][members], draw.cy[part][members])
        for t in range(len(_TEXTURES)):
            members = texture == t
            fine[members] = _texture(t, size, draw.phase[part][members])
        gray = draw.base[part] + draw.lift[part] * bright + draw.contrast[part] * fine
        pixels = gray[:, None] * draw.tint[part] + rng.normal(0.0, noise, size=(count, channels, size, size))
        yield np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _layout_mask(layout: int, size: int, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """M×S×S 0/1 masks of one global layout around per-image centres cx, cy (each M×1×1, 0..1 scale)."""
    coords = (np.arange(size) + 0.5) / size
    x = coords[None, None, :] - cx
    y = coords[None, :, None] - cy
    radius = np.hypot(x, y)
    shape = (len(cx), size, size)
    masks = {
        "left": lambda: x < 0,
        "top": lambda: y < 0,
        "disk": lambda: radius < 0.3,
        "diagonal": lambda: x > y,
        "ring": lambda: (radius > 0.22) & (radius < 0.42),
        "checker-quadrants": lambda: (x < 0) == (y < 0),
        "corner": lambda: (x > 0) & (y > 0),
        "band": lambda: np.abs(y) < 0.15,
    }
    return np.broadcast_to(masks[_LAYOUTS[layout]](), shape).astype(np.float64)


def _texture(texture: int, size: int, phase: np.ndarray) -> np.ndarray:
    """M×S×S period-2 pattern in -0.5..0.5 (or flat 0) with a per-image phase (M×1×1)."""
    iy = np.arange(size)[None, :, None]
    ix = np.arange(size)[None, None, :]
    shape = (len(phase), size, size)
    patterns = {
        "h-stripes": lambda: (iy + phase) % 2,
        "v-stripes": lambda: (ix + phase) % 2,
        "checkerboard": lambda: (ix + iy + phase) % 2,
        "flat": lambda: np.full(shape, 0.5),
    }
    return np.broadcast_to(patterns[_TEXTURES[texture]](), shape) - 0.5

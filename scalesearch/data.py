"""Dataset specs → uint8 image tensors at a common native size; splits; per-resolution resizing.

A dataset spec is one string, the same on the command line and in YAML:

- ``digits``: scikit-learn's shipped 8×8 handwritten digits (1,797 images, 10 classes).
- ``synthetic[:key=value,...]``: generated images whose class is a pair (global layout, fine
  texture), so resolution, width and depth all matter. Keys: ``n`` (samples, 2000), ``classes``
  (10, at most 32), ``size`` (native side, 32), ``channels`` (1 or 3, 3), ``seed`` (0),
  ``noise`` (pixel noise std on a 0..1 scale, 0.1).
- ``imagefolder:PATH`` or a bare directory path: one sub-folder per class holding PNG, JPEG,
  BMP or WebP files of any size and mode. Decoded once and cached on disk (below).
- ``npz:PATH``: arrays ``x`` (N×H×W or N×H×W×C uint8, C = 1 or 3) and ``y`` (N integer labels),
  optionally ``classes`` (K strings naming the sorted labels). Loaded with ``allow_pickle=False``.

Memory: images stay uint8 everywhere (the trainer converts and normalizes one batch at a time), the
split statistics are summed chunk by chunk in exact integer arithmetic, and resizing and generation
work in chunks, so no process ever holds a float copy of a whole dataset. A process loads a dataset
once (`load_dataset` keeps a module-level cache) and keeps one resized copy per resolution.

Sharing: decoded folders, and any other image array of at least SHARE_MIN_BYTES (big npz files,
big synthetic sets, resized copies), are written once to the cache directory as plain .npy files
(temp file + os.replace, so no reader sees half a file) and memory-mapped by every process that
needs them (`np.load(mmap_mode="c")`): the Ray workers of one node share one copy through the OS
page cache instead of holding one each. Entries are named by a digest of what they were made from
(file names, sizes and modification times; generator options; the format version), so a changed
dataset never reads a stale entry. An entry that cannot be read back is deleted and rebuilt: a
damaged cache costs time, never a refusal of a valid dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import product
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from scalesearch.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Proxies train at small resolutions; decoding folders to at most 128 px keeps the on-disk cache and
# the shared copies small (10k RGB images ≈ 0.5 GB) while leaving room to scale resolution up ~2×.
MAX_NATIVE_SIZE = 128
# Image arrays at least this big are shared between processes through the memory-mapped disk cache;
# smaller ones (digits, test-sized synthetic sets) cost less to rebuild than a file on disk.
SHARE_MIN_BYTES = 16 * 2**20
# Chunked work (generation, resizing, statistics) handles about this many bytes of temporaries at a
# time: per-chunk overhead is negligible at this size, and it is small next to any dataset worth chunking.
_CHUNK_BYTES = 16 * 2**20
# A dataset or a resized copy may need at most this share of the memory available when it is made:
# the model, the framework and other workers need the rest.
MEMORY_FRACTION = 0.5
# Bump when the cache layout, the folder decoding or the synthetic generator changes, so stale
# cache entries are not reused (1 was the single-.npz folder cache).
_CACHE_FORMAT = 2
# PIL image modes that hold one intensity channel; everything else decodes to RGB.
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Dataset:
    """Decoded images and labels of one dataset, at its native size.

    `images` is uint8 N×C×H×W (H == W), `labels` int64 N with values 0..K-1 naming `class_names`.
    `images` may be memory-mapped from the shared cache (copy-on-write: writing to it changes only
    this process's pages, never the file); treat it as read-only, since splits are cached per dataset.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    spec: str
    # Image files that could not be decoded and were left out (only with skip_bad_images).
    skipped: list[str] = field(default_factory=list)
    # Light augmentation (crop + flip) suits natural photos; it changes a digit's or a synthetic
    # layout's meaning, so those datasets default to off.
    augment_default: bool = False
    # Name of this dataset's entries in the shared cache (a digest of what it was made from) and the
    # cache directory; None for a Dataset built by hand, whose resized copies then stay in memory.
    cache_name: str | None = field(default=None, repr=False, compare=False)
    cache_dir: str | None = field(default=None, repr=False, compare=False)
    # Resized uint8 copies per resolution, filled by `resized_images` (one per trial resolution).
    _resized: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    # Splits per (val_fraction, seed), filled by `split_dataset`: every trial of a search asks for one.
    _splits: dict[tuple[float, int], Split] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Channels per image (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def native_size(self) -> int:
        """Side of the (square) native images in pixels."""
        return int(self.images.shape[-1])

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))


@dataclass(frozen=True)
class Split:
    """A stratified train/validation split and the train split's per-channel statistics (0..1 scale)."""

    train_indices: torch.Tensor
    val_indices: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Per-process cache: a Ray worker running many trials loads each dataset once.
_DATASETS: dict[tuple[str, bool], Dataset] = {}


def load_dataset(spec: str, *, skip_bad_images: bool = False, cache_dir: str | None = None) -> Dataset:
    """The dataset named by `spec`, decoded to uint8 tensors; UserError for any bad input.

    Results are cached per process (keyed by spec); decoded image folders and big arrays also on
    disk in `cache_dir` (default `$SCALESEARCH_CACHE` or `~/.cache/scalesearch`), memory-mapped so
    that the processes of one machine share them.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("dataset spec is empty; try 'digits', 'synthetic', 'imagefolder:PATH' or 'npz:PATH'")
    spec = spec.strip()
    key = (spec, skip_bad_images)
    if key not in _DATASETS:
        directory = cache_dir or default_cache_dir()
        _DATASETS[key] = _load_uncached(spec, skip_bad_images=skip_bad_images, cache_dir=directory)
    return _DATASETS[key]


def clear_dataset_cache() -> None:
    """Forget the per-process datasets (tests, or a long-lived process whose files changed)."""
    _DATASETS.clear()


def default_cache_dir() -> str:
    """Where decoded folders and shared arrays are cached: $SCALESEARCH_CACHE, else ~/.cache/scalesearch."""
    return os.environ.get("SCALESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scalesearch")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (MemAvailable, capped by a cgroup limit), or None."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    # In a container MemAvailable describes the host; the cgroup's own limit can be far lower.
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/memory.max") as handle:
        limit = handle.read().strip()
        if limit != "max":
            found.append(int(limit))
    if not found:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


def _check_fits(nbytes: int, what: str, hint: str) -> None:
    """UserError when an array of `nbytes` would take more than MEMORY_FRACTION of the available memory."""
    available = available_memory()
    if available is not None and nbytes > MEMORY_FRACTION * available:
        raise UserError(
            f"{what} take {_human_bytes(nbytes)} as uint8, more than {MEMORY_FRACTION:.0%} of the "
            f"{_human_bytes(available)} of memory available; {hint}"
        )


def _human_bytes(nbytes: float) -> str:
    """1.5 GB, 820 MB, 12 kB: decimal units, as `free -h` and disk vendors print them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


def _load_uncached(spec: str, *, skip_bad_images: bool, cache_dir: str) -> Dataset:
    """Dispatch on the spec's kind."""
    kind, _, rest = spec.partition(":")
    if spec == "digits":
        return _load_digits(cache_dir)
    if kind == "synthetic":
        return _load_synthetic(spec, rest, cache_dir)
    if kind == "imagefolder":
        return _load_folder(spec, rest, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    if kind == "npz":
        return _load_npz(spec, rest, cache_dir)
    if os.path.isdir(spec):
        return _load_folder(spec, spec, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    if os.path.exists(spec):
        raise UserError(f"{spec}: not a directory; a folder of class sub-folders or 'npz:FILE' was expected")
    if os.sep in spec or spec.startswith("."):
        raise UserError(f"{spec}: no such directory")
    raise UserError(
        f"unknown dataset {spec!r}; expected 'digits', 'synthetic[:key=value,...]', "
        "'imagefolder:PATH', 'npz:PATH' or an existing directory"
    )


def _finish(
    spec: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    skipped: list[str] | None = None,
    augment_default: bool,
    cache_name: str,
    cache_dir: str,
) -> Dataset:
    """A Dataset from N×C×H×W uint8 and N labels in 0..K-1, after the checks every kind shares."""
    if len(class_names) < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise UserError(f"{spec}: found a single class{only}; classification needs at least 2")
    return Dataset(
        # A memory-mapped array is already contiguous uint8: from_numpy shares its pages, no copy.
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        class_names=class_names,
        spec=spec,
        skipped=list(skipped or []),
        augment_default=augment_default,
        cache_name=cache_name,
        cache_dir=cache_dir,
    )


def _digest(*parts: object) -> str:
    """A short stable name for what a cache entry was made from."""
    return hashlib.sha256(repr((_CACHE_FORMAT, *parts)).encode()).hexdigest()[:24]


# --- digits ------------------------------------------------------------------------------------


def _load_digits(cache_dir: str) -> Dataset:
    """scikit-learn's 8×8 digits (pixel values 0..16) scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    names = [str(name) for name in bunch.target_names]
    # 115 kB: kept in memory; only big resized copies (say 224 px) go to the shared cache.
    name = "digits-" + _digest("digits")
    return _finish("digits", images, bunch.target, names, augment_default=False, cache_name=name, cache_dir=cache_dir)


# --- synthetic ---------------------------------------------------------------------------------

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


def _parse_synthetic(spec: str, options: str) -> dict[str, float]:
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
    _check_fits(
        n * channels * size * size,
        f"{spec}: {n:,} images of {channels}×{size}×{size} pixels",
        "ask for fewer or smaller images (n=..., size=...)",
    )
    return values


def _load_synthetic(spec: str, options: str, cache_dir: str) -> Dataset:
    """Generated images, deterministic by seed; see `_synthetic_draw` for what the classes mean."""
    values = _parse_synthetic(spec, options)
    n, classes, size = int(values["n"]), int(values["classes"]), int(values["size"])
    channels, seed, noise = int(values["channels"]), int(values["seed"]), float(values["noise"])
    draw = _synthetic_draw(n=n, classes=classes, channels=channels, rng=np.random.default_rng(seed))
    name = "synthetic-" + _digest(sorted(values.items()))
    shape = (n, channels, size, size)
    path = os.path.join(cache_dir, f"{name}.images.npy") if math.prod(shape) >= SHARE_MIN_BYTES else None
    images = _materialize(
        path,
        shape,
        lambda: _synthetic_chunks(n=n, classes=classes, size=size, channels=channels, seed=seed, noise=noise),
    )
    return _finish(spec, images, draw.labels, draw.names, augment_default=False, cache_name=name, cache_dir=cache_dir)


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


def _synthetic_chunks(
    *, n: int, classes: int, size: int, channels: int, seed: int, noise: float
) -> Iterator[np.ndarray]:
    """The N×C×S×S uint8 images in consecutive chunks along N.

    numpy draws the pixel noise value by value, so chunked draws give exactly the images one big draw
    gives, while the float64 temporaries stay within _CHUNK_BYTES instead of ~40× the uint8 size.
    """
    rng = np.random.default_rng(seed)
    draw = _synthetic_draw(n=n, classes=classes, channels=channels, rng=rng)
    step = max(1, _CHUNK_BYTES // (channels * size * size * 8))
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


# --- npz ---------------------------------------------------------------------------------------


def _load_npz(spec: str, path: str, cache_dir: str) -> Dataset:
    """Arrays x (uint8 images) and y (integer labels) from an .npz file, never unpickling anything."""
    if not path:
        raise UserError(f"{spec}: expected 'npz:PATH'")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not an .npz archive (write one with numpy.savez)")
    stat = os.stat(path)
    name = "npz-" + _digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    entry = _read_entry(cache_dir, name)
    if entry is not None:
        images, labels, meta = entry
        return _finish(
            spec, images, labels, meta["class_names"], augment_default=True, cache_name=name, cache_dir=cache_dir
        )

    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; expected 'x' and 'y'")
            x = archive["x"]
            y = archive["y"]
            names = archive["classes"] if "classes" in archive.files else None
    except UserError:
        raise
    except ValueError as error:
        # numpy refuses object arrays without allow_pickle: say so instead of quoting numpy.
        if "pickle" in str(error).lower():
            raise UserError(f"{path}: holds pickled Python objects, which are never loaded") from None
        raise UserError(f"{path}: not a readable .npz file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: not a readable .npz file ({error})") from None

    if x.dtype != np.uint8:
        raise UserError(f"{path}: x must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"{path}: x must be N×H×W or N×H×W×C with C = 1 or 3, got shape {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: y must be a 1-D integer array, got {y.dtype} with shape {y.shape}")
    if len(x) != len(y):
        raise UserError(f"{path}: x has {len(x)} images but y has {len(y)} labels")
    if min(x.shape[2:]) < 1 or len(x) == 0:
        raise UserError(f"{path}: x holds no images")
    # Non-square arrays are centre-cropped to a square: the model families take square inputs.
    h, w = x.shape[2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = np.ascontiguousarray(x[:, :, top : top + side, left : left + side])

    values, labels = np.unique(y, return_inverse=True)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) != len(values):
            raise UserError(f"{path}: classes must be {len(values)} strings, one per distinct label")
        class_names = [str(name) for name in names]
    else:
        class_names = [str(value) for value in values]
    labels = labels.astype(np.int64)
    if x.nbytes >= SHARE_MIN_BYTES and len(class_names) >= 2:
        # Later processes map the cached copy instead of each unpacking the archive into memory.
        stored = _write_entry(cache_dir, name, x, labels, {"class_names": class_names, "bad": []})
        if stored is not None:
            x, labels, _ = stored
    return _finish(spec, x, labels, class_names, augment_default=True, cache_name=name, cache_dir=cache_dir)


# --- image folders -----------------------------------------------------------------------------


def _load_folder(spec: str, path: str, *, skip_bad_images: bool, cache_dir: str) -> Dataset:
    """A folder of class sub-folders, decoded once and cached on disk keyed by the folder's content."""
    if not path:
        raise UserError(f"{spec}: expected 'imagefolder:PATH'")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise UserError(f"{path}: not a directory")
    root = os.path.realpath(path)
    files = _list_folder(root)

    stats = [(rel, os.stat(os.path.join(root, rel))) for _, rels in files for rel in rels]
    name = "imagefolder-" + _digest(MAX_NATIVE_SIZE, [(r, s.st_size, s.st_mtime_ns) for r, s in stats])

    entry = _read_entry(cache_dir, name)
    if entry is not None:
        images, labels, meta = entry
        class_names, bad = meta["class_names"], meta["bad"]
    else:
        images, labels, class_names, bad = _decode_folder(root, files)
        if not bad or skip_bad_images:
            # Only complete decodes are cached (with the list of bad files, so a later run without
            # --skip-bad-images still refuses them); the mapped copy replaces the decoded one.
            stored = _write_entry(cache_dir, name, images, labels, {"class_names": class_names, "bad": bad})
            if stored is not None:
                images, labels, _ = stored
    if bad and not skip_bad_images:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"{path}: {len(bad)} unreadable image file(s): {shown} (use --skip-bad-images to leave them out)"
        )
    counts = np.bincount(labels, minlength=len(class_names))
    for class_name, count in zip(class_names, counts):
        if count == 0:
            raise UserError(f"{os.path.join(path, class_name)}: no readable images left in this class folder")
    return _finish(
        spec, images, labels, class_names, skipped=bad, augment_default=True, cache_name=name, cache_dir=cache_dir
    )


def _list_folder(root: str) -> list[tuple[str, list[str]]]:
    """(class name, sorted image paths relative to root) per class sub-folder; UserError if unusable."""
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not classes:
        loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
        hint = " (images lie directly in it; put them in one sub-folder per class)" if loose else ""
        raise UserError(f"{root}: no class sub-folders found{hint}")
    result = []
    for name in classes:
        rels: list[str] = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rels.extend(
                os.path.relpath(os.path.join(dirpath, f), root)
                for f in filenames
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            )
        if not rels:
            raise UserError(f"{os.path.join(root, name)}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        result.append((name, sorted(rels)))
    if len(result) < 2:
        raise UserError(f"{root}: found a single class ({result[0][0]!r}); classification needs at least 2")
    return result


def _decode_folder(
    root: str, files: list[tuple[str, list[str]]]
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Every image decoded to a common square size and channel count; also the list of bad files.

    Each image is first shrunk (aspect kept) so its shorter side is at most MAX_NATIVE_SIZE, which bounds
    memory in one decoding pass; the common size is the median shorter side. Then every image is resized
    so its shorter side matches it (antialiased) and centre-cropped to a square.
    """
    from PIL import Image

    thumbs: list[Image.Image] = []
    labels: list[int] = []
    bad: list[str] = []
    gray = True
    for label, (_, rels) in enumerate(files):
        for rel in rels:
            try:
                image, is_gray = _decode_one(os.path.join(root, rel))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                bad.append(f"{rel} ({_short_reason(error)})")
                continue
            thumbs.append(image)
            labels.append(label)
            gray = gray and is_gray
    if not thumbs:
        return (np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64), [n for n, _ in files], bad)

    side = int(statistics.median_low(min(im.size) for im in thumbs))
    mode = "L" if gray else "RGB"
    channels = 1 if gray else 3
    images = np.empty((len(thumbs), channels, side, side), dtype=np.uint8)
    for i, image in enumerate(thumbs):
        square = _resize_crop(image.convert(mode), side)
        array = np.asarray(square, dtype=np.uint8)
        images[i] = array[None] if gray else array.transpose(2, 0, 1)
    return images, np.asarray(labels, dtype=np.int64), [name for name, _ in files], bad


def _decode_one(path: str) -> tuple[Image.Image, bool]:
    """(image, is_gray): fully decoded, transparency composited on black, shrunk to ≤ MAX_NATIVE_SIZE."""
    from PIL import Image

    with Image.open(path) as opened:
        # JPEG can decode at 1/2..1/8 scale directly, which makes big photos cheap.
        opened.draft("RGB" if opened.mode not in _GRAY_MODES else "L", (MAX_NATIVE_SIZE, MAX_NATIVE_SIZE))
        opened.load()
        image: Image.Image = opened
        is_gray = image.mode in _GRAY_MODES
        if image.mode.startswith("I;16"):
            # 16-bit grayscale: keep the top 8 bits instead of PIL's clipping to 255.
            image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
        elif image.mode in ("I", "F"):
            image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        image = image.convert("L" if is_gray else "RGB")
    scale = MAX_NATIVE_SIZE / min(image.size)
    if scale < 1:
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return image, is_gray


def _resize_crop(image: Image.Image, side: int) -> Image.Image:
    """The image resized (antialiased) so its shorter side is `side`, then centre-cropped to side×side."""
    from PIL import Image

    width, height = image.size
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def _short_reason(error: BaseException) -> str:
    """A few words on why an image failed to decode."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "truncated" in text.lower():
        return "truncated"
    if "cannot identify" in text.lower():
        return "not a readable image"
    return text[:80]


# --- the shared on-disk cache -------------------------------------------------------------------
#
# An entry NAME is NAME.images.npy (N×C×H×W uint8), NAME.labels.npy (N int64) and NAME.json (class
# names, bad files, shape), written in that order, so the JSON marks a complete entry; resized copies
# are NAME.rR.npy. Readers validate shapes and dtypes against the JSON. Memory maps are copy-on-write
# (mode "c"): read pages are the page cache's and shared by every process, while an accidental write
# copies one page privately instead of changing the file (mode "r" would kill the process with a
# segmentation fault instead, since torch cannot mark a tensor read-only).


def _entry_paths(cache_dir: str, name: str) -> tuple[str, str, str]:
    """(images, labels, metadata) file paths of a cache entry."""
    stem = os.path.join(cache_dir, name)
    return f"{stem}.images.npy", f"{stem}.labels.npy", f"{stem}.json"


def _read_entry(cache_dir: str, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(mapped images, labels, metadata) of a complete cache entry; None when absent or damaged.

    A damaged entry (any error reading it back) is deleted so that the caller rebuilds it.
    """
    images_path, labels_path, meta_path = _entry_paths(cache_dir, name)
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta["format"] != _CACHE_FORMAT:
            raise ValueError("other format")
        shape = tuple(int(s) for s in meta["shape"])
        images = _open_npy(images_path, shape)
        if images is None:
            raise ValueError("images missing or damaged")
        labels = np.load(labels_path, allow_pickle=False)
        class_names = [str(s) for s in meta["class_names"]]
        bad = [str(s) for s in meta["bad"]]
        if labels.dtype != np.int64 or labels.shape != shape[:1]:
            raise ValueError("labels do not match the images")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
            raise ValueError("labels out of range")
    # Anything at all that goes wrong reading a cache means "rebuild it", never "refuse the dataset".
    except Exception:
        _remove(images_path, labels_path, meta_path)
        return None
    return images, labels, {"class_names": class_names, "bad": bad}


def _write_entry(
    cache_dir: str, name: str, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Store a decoded dataset as a cache entry and read it back mapped; None if the cache is unwritable."""
    images_path, labels_path, meta_path = _entry_paths(cache_dir, name)
    record = {"format": _CACHE_FORMAT, "shape": list(images.shape), **meta}
    try:
        _write_npy(images_path, images.shape, [images])
        _write_npy(labels_path, labels.shape, [labels], dtype=np.dtype(np.int64))
        _atomic_write(meta_path, lambda handle: handle.write(json.dumps(record).encode("utf-8")))
    except OSError:
        return None  # an unwritable cache directory costs memory and time, not correctness
    return _read_entry(cache_dir, name)


def _materialize(path: str | None, shape: tuple[int, ...], chunks: Callable[[], Iterable[np.ndarray]]) -> np.ndarray:
    """The uint8 array of `shape` made by `chunks()`: memory-mapped from `path`, else in memory.

    With a `path`, a valid file there is mapped as is; otherwise the chunks are streamed to it (never
    all in memory) and the result mapped. Processes that ask at once (the workers of a search start
    together) take turns on a lock file: the first builds, the others map its file. Without a path,
    or when the file cannot be written, the array is assembled in memory.
    """
    if path is not None:
        array = _open_npy(path, shape)
        if array is not None:
            return array
        with contextlib.suppress(OSError), _build_lock(path):
            array = _open_npy(path, shape)  # built while this process waited for the lock
            if array is None:
                _write_npy(path, shape, chunks())
                array = _open_npy(path, shape)
            if array is not None:
                return array
    out = np.empty(shape, dtype=np.uint8)
    start = 0
    for chunk in chunks():
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


@contextlib.contextmanager
def _build_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`.lock while building `path` (no lock where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds each write a whole file; os.replace keeps one
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "ab") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _open_npy(path: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The uint8 array of `shape` in the .npy file at `path`, memory-mapped; None (file deleted) if unusable."""
    if not os.path.isfile(path):
        return None
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != tuple(shape):
            raise ValueError(f"expected uint8 {shape}")
        if not array.flags.c_contiguous:
            raise ValueError("not C-contiguous")
    except Exception:  # a damaged or foreign file: delete it so that it is rebuilt
        _remove(path)
        return None
    return array


def _write_npy(
    path: str, shape: tuple[int, ...], chunks: Iterable[np.ndarray], *, dtype: np.dtype[Any] | None = None
) -> None:
    """Write consecutive blocks along axis 0 as one .npy file of `shape`, atomically, without joining them."""
    dtype = dtype if dtype is not None else np.dtype(np.uint8)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}

    def write(handle: IO[bytes]) -> None:
        """The header, then each block's bytes as they come."""
        np.lib.format.write_array_header_1_0(handle, header)
        rows = 0
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=dtype)
            handle.write(block.data)
            rows += len(block)
        if rows != shape[0]:
            raise ValueError(f"{path}: wrote {rows} of {shape[0]} rows")

    _atomic_write(path, write)


def _atomic_write(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Create `path` through `write(handle)` so readers see the old file or the whole new one, never a part."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates 0600; every process of the user (and a shared cache's group) reads the entry.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(*paths: str) -> None:
    """Delete files that may not exist (or may not be deletable: then a later run tries again)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


# --- splits, statistics, resizing, augmentation -------------------------------------------------


def split_dataset(dataset: Dataset, *, val_fraction: float, seed: int) -> Split:
    """A stratified, deterministic train/validation split with train-only normalization statistics.

    Each class contributes round(val_fraction × count) images to validation (at least one when the
    class has two or more), chosen by a permutation seeded with `seed`, so every trial of a search
    sees the same split. Mean and std per channel (0..1 scale) come from the train split only, so
    validation images never leak into preprocessing. Cached on the dataset per (val_fraction, seed).
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    key = (float(val_fraction), int(seed))
    if key in dataset._splits:
        return dataset._splits[key]
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
    split = Split(train_indices=train, val_indices=val, mean=mean, std=std)
    dataset._splits[key] = split
    return split


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
    step = max(1, _CHUNK_BYTES // (channels * height * width))
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


def resized_images(dataset: Dataset, resolution: int) -> torch.Tensor:
    """uint8 N×C×R×R copies of the images at `resolution`, antialiased, cached on the dataset.

    A worker runs many trials at a handful of resolutions; each is resized once per process, and a
    copy of at least SHARE_MIN_BYTES once per machine: it is written to the shared cache in chunks and
    memory-mapped, so concurrent workers share it. UserError when the copy would not fit in memory.
    """
    if resolution < 1:
        raise UserError(f"resolution must be a positive number of pixels, got {resolution}")
    if resolution == dataset.native_size:
        return dataset.images
    if resolution not in dataset._resized:
        shape = (len(dataset.images), dataset.in_channels, resolution, resolution)
        nbytes = math.prod(shape)
        _check_fits(
            nbytes,
            f"{dataset.spec} at {resolution} px: {shape[0]:,} images of {shape[1]}×{resolution}×{resolution} pixels",
            "train at a lower resolution or on fewer images",
        )
        path = None
        if dataset.cache_name is not None and dataset.cache_dir is not None and nbytes >= SHARE_MIN_BYTES:
            path = os.path.join(dataset.cache_dir, f"{dataset.cache_name}.r{resolution}.npy")
        array = _materialize(path, shape, lambda: _resize_chunks(dataset.images, resolution))
        dataset._resized[resolution] = torch.from_numpy(array)
    return dataset._resized[resolution]


def _resize_chunks(images: torch.Tensor, resolution: int) -> Iterator[np.ndarray]:
    """Antialiased bilinear resizes of consecutive chunks of uint8 images, as uint8 arrays.

    Chunks keep the float temporaries within _CHUNK_BYTES; each image is resized on its own, so
    chunking does not change a pixel.
    """
    _, channels, height, width = images.shape
    step = max(1, _CHUNK_BYTES // (4 * channels * max(height * width, resolution * resolution)))
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

"""Dataset specs → uint8 image tensors at a common native size; splits; per-resolution resizing.

A dataset spec is one string, the same on the command line and in YAML:

- ``digits``: scikit-learn's shipped 8×8 handwritten digits (1,797 images, 10 classes).
- ``synthetic[:key=value,...]``: generated images whose class is a pair (global layout, fine
  texture), so resolution, width and depth all matter. Keys: ``n`` (samples, 2000), ``classes``
  (10, at most 32), ``size`` (native side, 32), ``channels`` (1 or 3, 3), ``seed`` (0),
  ``noise`` (pixel noise std on a 0..1 scale, 0.1).
- ``imagefolder:PATH`` or a bare directory path: one sub-folder per class holding PNG, JPEG,
  BMP or WebP files of any size and mode. Decoded once and cached on disk as .npz.
- ``npz:PATH``: arrays ``x`` (N×H×W or N×H×W×C uint8, C = 1 or 3) and ``y`` (N integer labels),
  optionally ``classes`` (K strings naming the sorted labels). Loaded with ``allow_pickle=False``.

Everything a trial needs is plain tensors, so a Ray worker loads a dataset once per process
(`load_dataset` keeps a module-level cache) and keeps one resized copy per resolution.
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import tempfile
import zipfile
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING

import numpy as np
import torch

from scalesearch.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Proxies train at small resolutions; decoding folders to at most 128 px keeps the on-disk cache and
# the per-worker copies small (10k RGB images ≈ 0.5 GB) while leaving room to scale resolution up ~2×.
MAX_NATIVE_SIZE = 128
# Bump when the decoding changes, so stale folder caches are not reused.
_FOLDER_CACHE_VERSION = 1
# PIL image modes that hold one intensity channel; everything else decodes to RGB.
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Dataset:
    """Decoded images and labels of one dataset, at its native size.

    `images` is uint8 N×C×H×W (H == W), `labels` int64 N with values 0..K-1 naming `class_names`.
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
    # Resized uint8 copies per resolution, filled by `resized_images` (one per trial resolution).
    _resized: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

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


# Per-process cache: a Ray worker running many trials decodes each dataset once.
_DATASETS: dict[tuple[str, bool], Dataset] = {}


def load_dataset(spec: str, *, skip_bad_images: bool = False, cache_dir: str | None = None) -> Dataset:
    """The dataset named by `spec`, decoded to uint8 tensors; UserError for any bad input.

    Results are cached per process (keyed by spec), and decoded image folders also on disk in
    `cache_dir` (default `$SCALESEARCH_CACHE` or `~/.cache/scalesearch`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("dataset spec is empty; try 'digits', 'synthetic', 'imagefolder:PATH' or 'npz:PATH'")
    spec = spec.strip()
    key = (spec, skip_bad_images)
    if key not in _DATASETS:
        _DATASETS[key] = _load_uncached(spec, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    return _DATASETS[key]


def clear_dataset_cache() -> None:
    """Forget the per-process datasets (tests, or a long-lived process whose files changed)."""
    _DATASETS.clear()


def default_cache_dir() -> str:
    """Where decoded folders are cached: $SCALESEARCH_CACHE, else ~/.cache/scalesearch."""
    return os.environ.get("SCALESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scalesearch")


def _load_uncached(spec: str, *, skip_bad_images: bool, cache_dir: str | None) -> Dataset:
    """Dispatch on the spec's kind."""
    kind, _, rest = spec.partition(":")
    if spec == "digits":
        return _load_digits()
    if kind == "synthetic":
        return _load_synthetic(spec, rest)
    if kind == "imagefolder":
        return _load_folder(spec, rest, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    if kind == "npz":
        return _load_npz(spec, rest)
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
) -> Dataset:
    """A Dataset from N×C×H×W uint8 and N labels in 0..K-1, after the checks every kind shares."""
    if len(class_names) < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise UserError(f"{spec}: found a single class{only}; classification needs at least 2")
    return Dataset(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        class_names=class_names,
        spec=spec,
        skipped=list(skipped or []),
        augment_default=augment_default,
    )


# --- digits ------------------------------------------------------------------------------------


def _load_digits() -> Dataset:
    """scikit-learn's 8×8 digits (pixel values 0..16) scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    names = [str(name) for name in bunch.target_names]
    return _finish("digits", images, bunch.target, names, augment_default=False)


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
    """The synthetic generator's options from 'key=value,...'; UserError on anything unknown."""
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
    limits = {"n": (4, 1_000_000), "classes": (2, len(_LAYOUTS) * len(_TEXTURES)), "size": (4, 512)}
    for key, (low, high) in limits.items():
        if not low <= values[key] <= high:
            raise UserError(f"{spec}: {key}={values[key]:g} is outside [{low}, {high}]")
    if values["channels"] not in (1, 3):
        raise UserError(f"{spec}: channels must be 1 or 3")
    if not 0 <= values["noise"] <= 1:
        raise UserError(f"{spec}: noise must be in [0, 1]")
    return values


def _load_synthetic(spec: str, options: str) -> Dataset:
    """Generated images, deterministic by seed; see `_synthetic_images` for what the classes mean."""
    values = _parse_synthetic(spec, options)
    images, labels, names = _synthetic_images(
        n=int(values["n"]),
        classes=int(values["classes"]),
        size=int(values["size"]),
        channels=int(values["channels"]),
        seed=int(values["seed"]),
        noise=float(values["noise"]),
    )
    return _finish(spec, images, labels, names, augment_default=False)


def _synthetic_images(
    *, n: int, classes: int, size: int, channels: int, seed: int, noise: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """N×C×S×S uint8 images, balanced labels and class names.

    Class c is a pair (layout, texture). The layout is a jittered bright region over the whole image
    (telling layouts apart needs a receptive field covering the image: depth); the texture is a
    period-2 pattern of random phase inside every pixel (it needs full resolution: downscaling by 2
    averages it away). Pairs are ordered so that even 2-4 classes vary in both, and learning all
    pairs takes capacity (width). Brightness, contrast, tint and noise vary per image and carry no
    class information.
    """
    rng = np.random.default_rng(seed)
    pairs = sorted(product(range(len(_LAYOUTS)), range(len(_TEXTURES))), key=lambda p: (max(p), p))[:classes]
    names = [f"{_LAYOUTS[g]}/{_TEXTURES[t]}" for g, t in pairs]
    labels = rng.permutation(np.arange(n) % classes)
    layout = np.array([pairs[c][0] for c in labels])
    texture = np.array([pairs[c][1] for c in labels])

    # Jitter every boundary by up to ±15% of the image so layouts are shapes, not fixed pixels.
    cx, cy = rng.uniform(0.35, 0.65, size=(2, n, 1, 1))
    phase = rng.integers(0, 2, size=(n, 1, 1))
    bright = np.zeros((n, size, size))
    fine = np.zeros((n, size, size))
    for g in range(len(_LAYOUTS)):
        members = layout == g
        bright[members] = _layout_mask(g, size, cx[members], cy[members])
    for t in range(len(_TEXTURES)):
        members = texture == t
        fine[members] = _texture(t, size, phase[members])

    base = rng.uniform(0.15, 0.35, size=(n, 1, 1))
    lift = rng.uniform(0.25, 0.4, size=(n, 1, 1))
    contrast = rng.uniform(0.2, 0.3, size=(n, 1, 1))
    gray = base + lift * bright + contrast * fine
    tint = rng.uniform(0.7, 1.0, size=(n, channels, 1, 1)) if channels == 3 else np.ones((n, 1, 1, 1))
    pixels = gray[:, None] * tint + rng.normal(0.0, noise, size=(n, channels, size, size))
    images = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64), names


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


def _load_npz(spec: str, path: str) -> Dataset:
    """Arrays x (uint8 images) and y (integer labels) from an .npz file, never unpickling anything."""
    if not path:
        raise UserError(f"{spec}: expected 'npz:PATH'")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not an .npz archive (write one with numpy.savez)")
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
    x = x[:, :, top : top + side, left : left + side]

    values, labels = np.unique(y, return_inverse=True)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) != len(values):
            raise UserError(f"{path}: classes must be {len(values)} strings, one per distinct label")
        class_names = [str(name) for name in names]
    else:
        class_names = [str(value) for value in values]
    return _finish(spec, x, labels, class_names, augment_default=True)


# --- image folders -----------------------------------------------------------------------------


def _load_folder(spec: str, path: str, *, skip_bad_images: bool, cache_dir: str | None) -> Dataset:
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
    key = hashlib.sha256(
        repr((_FOLDER_CACHE_VERSION, MAX_NATIVE_SIZE, [(r, s.st_size, s.st_mtime_ns) for r, s in stats])).encode()
    ).hexdigest()[:24]
    cache_path = os.path.join(cache_dir or default_cache_dir(), f"imagefolder-{key}.npz")

    cached = _read_folder_cache(cache_path)
    if cached is None:
        images, labels, class_names, bad = _decode_folder(root, files)
        cached = (images, labels, class_names, bad)
        if not bad or skip_bad_images:
            # Only complete decodes are cached (with the list of bad files, so a later run without
            # --skip-bad-images still refuses them).
            _write_folder_cache(cache_path, *cached)
    images, labels, class_names, bad = cached
    if bad and not skip_bad_images:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"{path}: {len(bad)} unreadable image file(s): {shown} (use --skip-bad-images to leave them out)"
        )
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count == 0:
            raise UserError(f"{os.path.join(path, name)}: no readable images left in this class folder")
    return _finish(spec, images, labels, class_names, skipped=bad, augment_default=True)


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


def _read_folder_cache(path: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]] | None:
    """A decoded folder from the on-disk cache, or None when absent or unreadable."""
    if not os.path.isfile(path):
        return None
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not an .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return (
                archive["images"],
                archive["labels"],
                [str(s) for s in archive["class_names"]],
                [str(s) for s in archive["bad"]],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache is only a cache: decode again


def _write_folder_cache(
    path: str, images: np.ndarray, labels: np.ndarray, class_names: list[str], bad: list[str]
) -> None:
    """Store a decoded folder atomically (temp file + rename) so readers never see half a file."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            images=images,
            labels=labels,
            class_names=np.asarray(class_names, dtype=np.str_),
            bad=np.asarray(bad, dtype=np.str_),
        )
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # an unwritable cache directory costs speed on the next run, not correctness


# --- splits, statistics, resizing, augmentation -------------------------------------------------


def split_dataset(dataset: Dataset, *, val_fraction: float, seed: int) -> Split:
    """A stratified, deterministic train/validation split with train-only normalization statistics.

    Each class contributes round(val_fraction × count) images to validation (at least one when the
    class has two or more), chosen by a permutation seeded with `seed`, so every trial of a search
    sees the same split. Mean and std per channel (0..1 scale) come from the train split only, so
    validation images never leak into preprocessing.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    labels = dataset.labels.numpy()
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in range(dataset.num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = len(members)
        n_val = min(count - 1, max(1, round(val_fraction * count))) if count >= 2 else 0
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train = np.sort(np.concatenate(train_parts))
    val = np.sort(np.concatenate(val_parts))
    if len(val) == 0:
        raise UserError(f"{dataset.spec}: too few images for a validation split")

    pixels = dataset.images[torch.from_numpy(train)].to(torch.float64) / 255.0
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel must not divide by zero
    return Split(
        train_indices=torch.from_numpy(train),
        val_indices=torch.from_numpy(val),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def resized_images(dataset: Dataset, resolution: int) -> torch.Tensor:
    """uint8 N×C×R×R copies of the images at `resolution`, antialiased, cached on the dataset.

    A worker runs many trials at a handful of resolutions; each is resized once.
    """
    if resolution < 1:
        raise UserError(f"resolution must be a positive number of pixels, got {resolution}")
    if resolution == dataset.native_size:
        return dataset.images
    if resolution not in dataset._resized:
        resized = []
        # Chunks bound the float copy's memory on large datasets.
        for chunk in torch.split(dataset.images, 4096):
            scaled = torch.nn.functional.interpolate(
                chunk.float(),
                size=(resolution, resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            resized.append(scaled.round_().clamp_(0, 255).to(torch.uint8))
        dataset._resized[resolution] = torch.cat(resized)
    return dataset._resized[resolution]


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

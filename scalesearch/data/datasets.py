"""Dataset specs → uint8 image tensors at a common native size (`load_dataset`), and the Dataset.

A dataset spec is one string, the same on the command line and in YAML:

- ``digits``: scikit-learn's shipped 8×8 handwritten digits (1,797 images, 10 classes).
- ``synthetic[:key=value,...]``: generated images whose class is a pair (global layout, fine
  texture), so resolution, width and depth all matter; the keys are in `scalesearch.data.synthetic`.
- ``imagefolder:PATH`` or a bare directory path: one sub-folder per class holding PNG, JPEG,
  BMP or WebP files of any size and mode. Decoded once and cached on disk.
- ``npz:PATH``: arrays ``x`` (N×H×W or N×H×W×C uint8; C = 1 or 3, or up to 64 bands of a multispectral
  image, channels last) and ``y`` (N integer labels),
  optionally ``classes`` (K strings naming the sorted labels). Loaded with ``allow_pickle=False``.

Memory: images stay uint8 everywhere (the trainer converts and normalizes one batch at a time), so no
process ever holds a float copy of a whole dataset. A process loads a dataset once (`load_dataset`
keeps a module-level cache). Decoded folders and big arrays are shared between processes through the
memory-mapped cache of `scalesearch.data.cache`; splits, statistics and resized copies are
`scalesearch.data.prep`'s.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from scalesearch.core.errors import UserError
from scalesearch.core.machine import default_cache_dir
from scalesearch.data import cache as datacache
from scalesearch.data.imagefolder import MAX_NATIVE_SIZE, decode_folder, list_folder
from scalesearch.data.synthetic import synthetic_arrays

T = TypeVar("T")
# Channels an npz image may have: grey, RGB, or the bands of a multispectral image (Sentinel-2 has 13).
MAX_NPZ_CHANNELS = 64


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
    # What training derives from the images and asks for again in every trial (splits, resized copies),
    # kept per key by `derived`; `data.prep` owns what the keys and values are.
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    def derived(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value cached under `key`, made by `make()` on first use (once per process and dataset)."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

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


@contextlib.contextmanager
def standing_in(dataset: Dataset, spec: str) -> Iterator[None]:
    """Within the block, `load_dataset(spec)` (without skip_bad_images) returns `dataset`.

    For a caller that loaded the dataset with options a later loader does not pass on (a folder
    loaded with --skip-bad-images or another --cache-dir, then trained through the runner, which
    loads by spec alone). What the per-process cache held under that key is restored afterwards.
    """
    key = (spec, False)
    saved = _DATASETS.get(key)
    _DATASETS[key] = dataset
    try:
        yield
    finally:
        if saved is None:
            _DATASETS.pop(key, None)
        else:
            _DATASETS[key] = saved


def _load_uncached(spec: str, *, skip_bad_images: bool, cache_dir: str) -> Dataset:
    """Dispatch on the spec's kind."""
    kind, _, rest = spec.partition(":")
    if spec == "digits":
        return _load_digits(cache_dir)
    if kind == "synthetic":
        images, labels, names, name = synthetic_arrays(spec, rest, cache_dir)
        return _finish(spec, images, labels, names, augment_default=False, cache_name=name, cache_dir=cache_dir)
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


# --- digits ------------------------------------------------------------------------------------


def _load_digits(cache_dir: str) -> Dataset:
    """scikit-learn's 8×8 digits (pixel values 0..16) scaled to uint8 0..255."""
    pixels, target = _read_digits()
    images = np.rint(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    names = [str(label) for label in range(10)]
    # 115 kB: kept in memory; only big resized copies (say 224 px) go to the shared cache.
    name = "digits-" + datacache.digest("digits")
    return _finish("digits", images, target, names, augment_default=False, cache_name=name, cache_dir=cache_dir)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels and labels from the CSV scikit-learn ships, read without importing scikit-learn (1.3 s
    that every search worker would pay); its load_digits if the file has moved."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")  # locates the package without running it
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


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
    name = "npz-" + datacache.digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    entry = datacache.read_entry(cache_dir, name)
    if entry is not None:
        images, labels, meta = entry
        return _finish(
            spec, images, labels, meta["class_names"], augment_default=True, cache_name=name, cache_dir=cache_dir
        )

    x, y, names = _read_npz(path)
    x = _square_images(path, x, y)
    values, labels = np.unique(y, return_inverse=True)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) != len(values):
            raise UserError(f"{path}: classes must be {len(values)} strings, one per distinct label")
        class_names = [str(name) for name in names]
    else:
        class_names = [str(value) for value in values]
    labels = labels.astype(np.int64)
    if x.nbytes >= datacache.SHARE_MIN_BYTES and len(class_names) >= 2:
        # Later processes map the cached copy instead of each unpacking the archive into memory.
        stored = datacache.write_entry(cache_dir, name, x, labels, {"class_names": class_names, "bad": []})
        if stored is not None:
            x, labels, _ = stored
    return _finish(spec, x, labels, class_names, augment_default=True, cache_name=name, cache_dir=cache_dir)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The arrays x, y and (when present) classes of an .npz archive; UserError for anything unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}; expected 'x' and 'y'")
            return archive["x"], archive["y"], archive["classes"] if "classes" in archive.files else None
    except UserError:
        raise
    except ValueError as error:
        # numpy refuses object arrays without allow_pickle: say so instead of quoting numpy.
        if "pickle" in str(error).lower():
            raise UserError(f"{path}: holds pickled Python objects, which are never loaded") from None
        raise UserError(f"{path}: not a readable .npz file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: not a readable .npz file ({error})") from None


def _square_images(path: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x checked against y and laid out N×C×S×S; UserError naming what is wrong with either."""
    if x.dtype != np.uint8:
        raise UserError(f"{path}: x must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and 1 <= x.shape[3] <= MAX_NPZ_CHANNELS:
        x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(
            f"{path}: x must be N×H×W or N×H×W×C with C from 1 to {MAX_NPZ_CHANNELS} (channels last), "
            f"got shape {x.shape}"
        )
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
    return np.ascontiguousarray(x[:, :, top : top + side, left : left + side])


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
    files = list_folder(root)

    stats = [(rel, os.stat(os.path.join(root, rel))) for _, rels in files for rel in rels]
    name = "imagefolder-" + datacache.digest(MAX_NATIVE_SIZE, [(r, s.st_size, s.st_mtime_ns) for r, s in stats])

    entry = datacache.read_entry(cache_dir, name)
    if entry is not None:
        images, labels, meta = entry
        class_names, bad = meta["class_names"], meta["bad"]
    else:
        images, labels, class_names, bad = decode_folder(root, files)
        if not bad or skip_bad_images:
            # Only complete decodes are cached (with the list of bad files, so a later run without
            # --skip-bad-images still refuses them); the mapped copy replaces the decoded one.
            stored = datacache.write_entry(cache_dir, name, images, labels, {"class_names": class_names, "bad": bad})
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

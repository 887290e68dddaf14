"""The shared on-disk cache of image arrays, and the memory budget for making them.

Decoded folders, and any other image array of at least SHARE_MIN_BYTES (big npz files, big
synthetic sets, resized copies), are written once to the cache directory as plain .npy files (temp
file + os.replace, so no reader sees half a file) and memory-mapped by every process that needs
them (`np.load(mmap_mode="c")`): the Ray workers of one node share one copy through the OS page
cache instead of holding one each. Entries are named by a digest of what they were made from
(`digest`: file names, sizes and modification times; generator options; the format version), so a
changed dataset never reads a stale entry. An entry that cannot be read back is deleted and
rebuilt: a damaged cache costs time, never a refusal of a valid dataset.

Memory: an array may take at most MEMORY_FRACTION of the memory available when it is made
(`check_memory`), and chunked work (generation, resizing, statistics) handles about CHUNK_BYTES of
temporaries at a time. Who uses the cache: `data` (datasets), `synthetic`, `dataprep` (resized copies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import numpy as np

from scalesearch.core import machine
from scalesearch.core.atomic import atomic_write
from scalesearch.core.errors import UserError

# Image arrays at least this big are shared between processes through the memory-mapped disk cache;
# smaller ones (digits, test-sized synthetic sets) cost less to rebuild than a file on disk.
SHARE_MIN_BYTES = 16 * 2**20
# Chunked work (generation, resizing, statistics) handles about this many bytes of temporaries at a
# time: per-chunk overhead is negligible at this size, and it is small next to any dataset worth chunking.
CHUNK_BYTES = 16 * 2**20
# A dataset or a resized copy may need at most this share of the memory available when it is made:
# the model, the framework and other workers need the rest.
MEMORY_FRACTION = 0.5
# Bump when the cache layout, the folder decoding or the synthetic generator changes, so stale
# cache entries are not reused (1 was the single-.npz folder cache).
CACHE_FORMAT = 2


def check_memory(nbytes: int, what: str, hint: str) -> None:
    """UserError when an array of `nbytes` would take more than MEMORY_FRACTION of the available memory."""
    available = machine.available_memory()
    if available is not None and nbytes > MEMORY_FRACTION * available:
        raise UserError(
            f"{what} take {machine.human_bytes(nbytes)} as uint8, more than {MEMORY_FRACTION:.0%} of the "
            f"{machine.human_bytes(available)} of memory available; {hint}"
        )


def digest(*parts: object) -> str:
    """A short stable name for what a cache entry was made from."""
    return hashlib.sha256(repr((CACHE_FORMAT, *parts)).encode()).hexdigest()[:24]


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


def read_entry(cache_dir: str, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(mapped images, labels, metadata) of a complete cache entry; None when absent or damaged.

    A damaged entry (any error reading it back) is deleted so that the caller rebuilds it.
    """
    images_path, labels_path, meta_path = _entry_paths(cache_dir, name)
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta["format"] != CACHE_FORMAT:
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


def write_entry(
    cache_dir: str, name: str, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Store a decoded dataset as a cache entry and read it back mapped; None if the cache is unwritable."""
    images_path, labels_path, meta_path = _entry_paths(cache_dir, name)
    record = {"format": CACHE_FORMAT, "shape": list(images.shape), **meta}
    try:
        write_npy(images_path, images.shape, [images])
        write_npy(labels_path, labels.shape, [labels], dtype=np.dtype(np.int64))
        atomic_write(meta_path, lambda handle: handle.write(json.dumps(record).encode("utf-8")))
    except OSError:
        return None  # an unwritable cache directory costs memory and time, not correctness
    return read_entry(cache_dir, name)


def materialize(path: str | None, shape: tuple[int, ...], chunks: Callable[[], Iterable[np.ndarray]]) -> np.ndarray:
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
                write_npy(path, shape, chunks())
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


def write_npy(
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

    atomic_write(path, write)


def _remove(*paths: str) -> None:
    """Delete files that may not exist (or may not be deletable: then a later run tries again)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)

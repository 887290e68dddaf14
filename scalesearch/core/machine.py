"""What this machine offers a run: where caches go, and how much memory new allocations can have now."""

from __future__ import annotations

import contextlib
import os


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


def human_bytes(nbytes: float) -> str:
    """1.5 GB, 820 MB, 12 kB: decimal units, as `free -h` and disk vendors print them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"

"""Writing files atomically (temp file in the same folder, then rename): every file of a run folder
and of the data cache (`datacache`), so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from scalesearch.core.errors import UserError


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Create or replace `path` through `write(handle)` (a binary handle, written in one piece or
    streamed in many) so readers see the old file or the whole new one, never a part.

    The folder is created if missing; the bytes go to a temp file beside `path`, are flushed and
    fsynced, and replace it with os.replace. The file gets the mode an ordinary open() gives (0666
    less the umask), not mkstemp's 0600: run folders and the shared data cache are read by the
    user's other processes. On any failure the temp file is removed and the error raised as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # cleaning up must not hide why the write failed
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Atomically write `data` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_or_print(text: str, out: str | os.PathLike[str] | None) -> None:
    """Command output: atomically to `out` (saying so on stderr), or to standard output."""
    import sys

    if out:
        if os.path.isdir(out):
            raise UserError(f"--out {out} is a folder; give a file name")
        try:
            atomic_write_text(out, text)
        except OSError as error:
            raise UserError(f"cannot write --out {out}: {error.strerror or error}") from None
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)

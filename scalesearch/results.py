"""The run folder: every file is written atomically (temp file in the same folder, then rename),
so an interrupted run never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results are meant to be shared like any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        from scalesearch.errors import UserError

        if os.path.isdir(out):
            raise UserError(f"--out {out} is a folder; give a file name")
        try:
            atomic_write_text(out, text)
        except OSError as error:
            raise UserError(f"cannot write --out {out}: {error.strerror or error}") from None
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)

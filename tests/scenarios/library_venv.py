"""A venv with the libraries the timm and torchvision exports are built with, cached between runs.

The project's own venv has torch's CPU build, which torchvision and timm from the index do not
install against; the index's torch 2.13.0 (its CUDA build, which runs on a machine without a GPU)
does. `library_venv()` builds that venv once per set of versions under
`$SCALESEARCH_LIBVENV_CACHE` (default ~/.cache/scalesearch) and reuses it while its marker file is
there; a venv without the marker (an install that failed or was interrupted) is built again. pip's
machine-wide configuration is switched off for the install (PIP_CONFIG_FILE=/dev/null, no
find-links), so the index's wheels are the ones installed, not the CPU wheel that lies on disk.

Standard library only: it runs before anything is installed. `python tests/scenarios/library_venv.py`
builds (or finds) the venv and prints its python.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSIONS = {"torch": "2.13.0", "torchvision": "0.28.0", "timm": "1.0.31"}
CACHE_ENV = "SCALESEARCH_LIBVENV_CACHE"
MARKER = ".scalesearch-libvenv-complete"


def library_venv_path(versions: dict[str, str] = VERSIONS) -> Path:
    """Where the venv for `versions` lives (the folder name is keyed by every version)."""
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scalesearch").expanduser()
    return cache / ("libvenv-" + "-".join(f"{name}{version}" for name, version in versions.items()))


def library_venv(versions: dict[str, str] = VERSIONS) -> Path:
    """The python of a venv holding exactly `versions`, built on first use (minutes, ~5 GB)."""
    venv = library_venv_path(versions)
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second caller waits here, then finds the marker.
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / MARKER).exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a half-built venv from an earlier failure
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
        pins = [f"{name}=={version}" for name, version in versions.items()]
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True, env=env)
        # The marker goes last, after the libraries import at the pinned versions.
        check = "; ".join(f"import {name}; assert {name}.__version__.split('+')[0] == {version!r}, {name}.__version__"
                          for name, version in versions.items())  # fmt: skip
        subprocess.run([str(python), "-c", check], check=True, env=env)
        (venv / MARKER).write_text("".join(f"{pin}\n" for pin in pins))
    return python


if __name__ == "__main__":
    print(library_venv())

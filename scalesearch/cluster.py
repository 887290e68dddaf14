"""Where a search runs: the embedded local Ray, or a user's cluster joined by address.

Also what a run records about the machine and the package versions it ran with.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from scalesearch.errors import UserError


class ResourceSettings(Protocol):
    """What ray_session needs to know of a command's settings."""

    @property
    def address(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def cpus_per_trial(self) -> float: ...
    @property
    def gpus_per_trial(self) -> float: ...
    @property
    def verbose(self) -> bool: ...


def absolute_dataset_spec(spec: str) -> str:
    """The dataset spec with any local path made absolute, since Ray workers run in other folders."""
    for prefix in ("imagefolder:", "npz:"):
        if spec.startswith(prefix):
            return prefix + os.path.abspath(spec[len(prefix) :])
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    return spec


def check_address(address: str) -> None:
    """Fail within seconds when a cluster address cannot be reached (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"cannot read Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


@contextlib.contextmanager
def ray_session(settings: ResourceSettings) -> Iterator[str]:
    """Start a local Ray (loopback, no dashboard) or join `settings.address`; yields where it runs."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(settings.concurrency))
    import logging

    import ray

    if not settings.verbose:
        # Tune logs failed trials and its own summary at ERROR; scalesearch reports those itself.
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    address = settings.address or os.environ.get("RAY_ADDRESS")
    quiet = logging.DEBUG if settings.verbose else logging.ERROR
    if address:
        check_address(address)
        ray.init(address=address, logging_level=quiet, log_to_driver=settings.verbose)
        where = address
    else:
        import torch

        local = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
        _check_resources(settings, local, where="this machine")
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=quiet,
            log_to_driver=settings.verbose,
        )
        where = "local (started by scalesearch, 127.0.0.1)"
    try:
        _check_resources(settings, ray.cluster_resources(), where="the cluster")
        yield where
    finally:
        ray.shutdown()


def _check_resources(settings: ResourceSettings, resources: Mapping[str, float], *, where: str) -> None:
    """UserError when concurrency x per-trial resources exceed what `where` has."""
    for name, per_trial, flag in (("CPU", settings.cpus_per_trial, "--cpus-per-trial"),
                                  ("GPU", settings.gpus_per_trial, "--gpus-per-trial")):  # fmt: skip
        need = settings.concurrency * per_trial
        have = float(resources.get(name, 0.0))
        if need > have + 1e-9:
            raise UserError(
                f"--concurrency {settings.concurrency} x {flag} {per_trial:g} needs {need:g} {name}s; "
                f"{where} has {have:g}"
            )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("scalesearch", "torch", "ray", "optuna", "fvcore", "numpy", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine() -> dict[str, Any]:
    import torch

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }

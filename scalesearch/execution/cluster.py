"""Where a search runs: the embedded local Ray, or a user's cluster joined by address.

Also what a run records about the machine and the package versions it ran with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from scalesearch.core.errors import UserError, first_line

if TYPE_CHECKING:
    from scalesearch.config.spaces import SearchSpace

# Modules that import torch are imported inside the functions that use them, so importing this one
# stays cheap and torch-free (tests/test_layers.py::test_light_modules_import_no_torch).


# Whether the Ray session in use was started by ray_session (and so ends with it), or is the caller's.
_started_here = False


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


# The whole address check must end within PROBE_SECONDS, so a wrong address costs one line and a few
# seconds (ray.init itself retries for 20 s or more, and hangs on a port where another service listens).
# A real GCS answers all of it in well under a second. The CLI checks --address before it loads data
# and models (cli._check_cluster_early), so a wrong address ends the command within about 5 s.
PROBE_SECONDS = 5.0
CONNECT_SECONDS = 3.0  # TCP connect: a host that drops packets answers nothing
ANSWER_SECONDS = 3.0  # a gRPC server answers the HTTP/2 preface in one round trip; silence means no GCS
# HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4): a gRPC server such as Ray's GCS
# answers with its own SETTINGS frame at once; anything else (silence, "HTTP/1.1 400", a banner,
# a closed connection) is not a Ray cluster.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS = 0x04
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch for token authentication ("token" or "disabled")
# Where Ray looks for a cluster's token, in its order (ray/_private/authentication, the C++ loader).
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
TOKEN_HELP = (
    "copy the head's token (`ray get-auth-token` on the head, or its ~/.ray/auth_token) to ~/.ray/auth_token "
    "here, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
)
# Run in a child process so that a GCS that never answers can be abandoned (Ray's C++ client blocks
# and ignores Ctrl-C). Prints "ok" or the error's type and first line.
GCS_PROBE = """
import sys
try:
    from ray._raylet import GcsClient
    GcsClient(address=sys.argv[1]).internal_kv_get(b"scalesearch-probe", None, timeout=2)
except Exception as error:
    lines = str(error).strip().splitlines()
    print(type(error).__name__ + (": " + lines[0] if lines else ""))
    sys.exit(3)
print("ok")
"""


@dataclass(frozen=True)
class ClusterAccess:
    """How to join a checked cluster: the address for ray.init and the auth mode it needs."""

    address: str  # host:port (or ray://host:port) that answered
    auth_mode: str | None  # "token" when the cluster wants a token; None: leave Ray's default


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or ray://HOST:PORT; UserError otherwise."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"cannot read Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def find_token() -> str | None:
    """Where a Ray token is available to this process (described for messages), or None."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        return path if os.path.isfile(path) else None
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return default if os.path.isfile(default) else None


def check_address(address: str, *, timeout: float = PROBE_SECONDS) -> ClusterAccess:
    """Check that a Ray cluster answers at `address` and find whether it wants a token, within `timeout`.

    Every way of failing is one UserError line: an address that cannot be read, a closed port, a
    host that does not answer, a service that is not Ray (silent, HTTP, anything but gRPC), a
    cluster that wants a token this machine lacks or rejects the one it has. Nothing here blocks
    beyond the deadline, and Ctrl-C interrupts every step.
    """
    deadline = time.monotonic() + timeout
    if address == "auto":
        address = _resolve_auto()
    host, port = parse_address(address)
    _check_speaks_http2(address, host, port, deadline)
    if address.startswith("ray://"):
        return ClusterAccess(address, None)  # Ray Client: its server spoke gRPC; ray.init does the rest
    user_mode = os.environ.get(AUTH_MODE_ENV)
    outcome = _probe_gcs(address, user_mode, deadline, timeout)
    if outcome == "ok":
        return ClusterAccess(address, user_mode)
    if "AuthenticationError" not in outcome and "InvalidAuthToken" not in outcome:
        raise UserError(f"no Ray cluster at {address}: Ray's client got {outcome}")
    token = find_token()
    if user_mode is None and token is not None:
        # `ray start --head` turns token authentication on whenever ~/.ray/auth_token exists, but a
        # driver given an explicit address does not: ask for token mode, as `ray start` did.
        if _probe_gcs(address, "token", deadline, timeout) == "ok":
            return ClusterAccess(address, "token")
        raise UserError(f"the Ray cluster at {address} rejected the token in {token}: {TOKEN_HELP}")
    if token is None:
        raise UserError(f"the Ray cluster at {address} requires token authentication and no token was found: "
                        f"{TOKEN_HELP}")  # fmt: skip
    raise UserError(f"the Ray cluster at {address} rejected the token (RAY_AUTH_MODE={user_mode}, token in "
                    f"{token}): {TOKEN_HELP}")  # fmt: skip


def _resolve_auto() -> str:
    """The address of the Ray instance `ray start` last started on this machine (address "auto")."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as error:
        raise UserError(f"--address auto: {str(error).strip().splitlines()[0]}") from None


def _left(deadline: float) -> float:
    """Seconds to the deadline (at least a little, so the last step still gets its try)."""
    return max(0.2, deadline - time.monotonic())


def _check_speaks_http2(address: str, host: str, port: int, deadline: float) -> None:
    """UserError unless something at host:port accepts a connection and answers like a gRPC server."""
    try:
        connection = socket.create_connection((host, port), timeout=min(CONNECT_SECONDS, _left(deadline)))
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise UserError(f"cannot reach the Ray cluster at {address}: {reason}") from None
    with connection:
        try:
            connection.settimeout(min(ANSWER_SECONDS, _left(deadline)))
            connection.sendall(HTTP2_PREFACE)
            answer = b""
            while len(answer) < 9:
                chunk = connection.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            raise UserError(
                f"no Ray cluster at {address}: a service listens there but does not answer the way Ray's GCS "
                "does (is this the port `ray start --head --port` was given?)"
            ) from None
        except OSError as error:
            answer = b""
            if not isinstance(error, ConnectionResetError):
                raise UserError(f"cannot talk to the Ray cluster at {address}: {error.strerror or error}") from None
    if len(answer) == 9 and answer[3] == HTTP2_SETTINGS:
        return
    if answer.startswith(b"HTTP/") or answer.lstrip().startswith(b"<"):  # a status line, or an HTML error page
        what = "an HTTP server answers there"
    elif not answer:
        what = "the service there closed the connection"
    else:
        what = f"the service there answered {answer[:9]!r}"
    raise UserError(f"no Ray cluster at {address}: {what}, not Ray's GCS (is this the port `ray start --head "
                    "--port` was given?)")  # fmt: skip


def _probe_gcs(address: str, auth_mode: str | None, deadline: float, budget: float) -> str:
    """'ok' when Ray's own GCS client gets an answer at `address` in `auth_mode`, else its error line."""
    env = dict(os.environ)
    if auth_mode is not None:
        env[AUTH_MODE_ENV] = auth_mode
    else:
        env.pop(AUTH_MODE_ENV, None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", GCS_PROBE, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=_left(deadline),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"no Ray cluster at {address}: a gRPC service answers there but not as Ray's GCS within "
                        f"{budget:g} s") from None  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else f"the probe exited with status {done.returncode}: {done.stderr.strip()[-200:]}"


def code_runtime_env(space: SearchSpace | None) -> dict[str, Any] | None:
    """The Ray runtime env that ships a space's custom builder module to every worker, or None.

    A module inside an installed distribution (site-packages) is not shipped: it must be installed on
    every node like scalesearch itself. A module from a folder (a file, or its top-level package) is
    uploaded with Ray's `py_modules`, which puts it on the workers' Python path.
    """
    module_name = space.builder_module() if space is not None else None
    if module_name is None:
        return None
    module = sys.modules.get(module_name.split(".")[0])
    if module is None:
        return None
    paths = list(getattr(module, "__path__", []))
    if len(paths) > 1:
        return None  # a namespace package spread over folders: Ray's py_modules cannot ship it
    location = paths[0] if paths else getattr(module, "__file__", None)
    if not location or _installed(location):
        return None
    return {"py_modules": [os.path.abspath(location)]}


def _installed(location: str) -> bool:
    """Whether `location` lies in an install folder (site-packages, the standard library)."""
    import sysconfig

    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    resolved = os.path.realpath(location)
    return any(resolved.startswith(os.path.realpath(root) + os.sep) for root in roots)


@contextlib.contextmanager
def ray_session(settings: ResourceSettings, *, space: SearchSpace | None = None) -> Iterator[str]:
    """Start a local Ray (loopback, no dashboard) or join `settings.address` (or $RAY_ADDRESS); yields
    where it runs. With a `space` whose model is the user's own builder, the builder's module is
    shipped to the workers (code_runtime_env).

    Joining checks the address first (check_address: one line within seconds for anything that is not
    a reachable Ray cluster) and uses token authentication when the cluster wants it. The process
    environment is left as it was found (ray.init sets RAY_AUTH_MODE for a local cluster).

    When this process already runs Ray (the caller's own ray.init, say in a notebook), that session
    is used and left running: starting and stopping a local Ray is 3-4 s of every search.
    """
    import ray

    runtime_env = code_runtime_env(space)
    with _tune_environment(settings), _quiet_ray_logs(settings):
        if ray.is_initialized():
            yield _existing_session(settings, runtime_env)
            return
        address = settings.address or os.environ.get("RAY_ADDRESS") or None
        access = check_address(address) if address and address != "local" else None
        saved_mode = os.environ.get(AUTH_MODE_ENV)
        quiet = logging.DEBUG if settings.verbose else logging.ERROR
        global _started_here
        # ray.init replaces the SIGTERM handler with sys.exit, which tears Ray down mid-run (exit 134 and a
        # C++ dump): keep the one the command installed (cli.main: SIGTERM is handled like Ctrl-C).
        sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            where = _init_ray(settings, access, logging_level=quiet, runtime_env=runtime_env)
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
            _started_here = True
            _check_resources(settings, ray.cluster_resources(), where="the cluster")
            yield where
        finally:
            _started_here = False
            ray.shutdown()
            if os.environ.get(AUTH_MODE_ENV) != saved_mode:
                _set_auth_mode(saved_mode)


def session_started_here() -> bool:
    """Whether the Ray session in use was started by ray_session, so that its shutdown on the way out
    ends every task this process submitted (rather than the caller's own session, which outlives us)."""
    return _started_here


def _existing_session(settings: ResourceSettings, runtime_env: dict[str, Any] | None) -> str:
    """Where the Ray session this process already runs is, once it is checked to serve the search."""
    import ray

    if settings.address:
        raise UserError(
            f"this process already runs Ray; leave out --address {settings.address} to search on that "
            "session, or call ray.shutdown() first"
        )
    if runtime_env is not None:
        raise UserError(
            f"this process already runs Ray, whose workers cannot import {runtime_env['py_modules'][0]}; "
            "call ray.shutdown() first (the search then ships it), or install that module"
        )
    _check_resources(settings, ray.cluster_resources(), where="this process's Ray session")
    return f"this process's Ray session ({ray.get_runtime_context().gcs_address})"


@contextlib.contextmanager
def _tune_environment(settings: ResourceSettings) -> Iterator[None]:
    """Tune's and Ray's switches for a search (where the user has not set them), for its duration."""
    wanted = {
        "RAY_AIR_NEW_OUTPUT": "0",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        "RAY_DEDUP_LOGS": "0",
        "TUNE_MAX_PENDING_TRIALS_PG": str(settings.concurrency),
    }
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet_ray_logs(settings: ResourceSettings) -> Iterator[None]:
    """Unless verbose, Ray's and Tune's loggers are silenced for the search (Tune logs failed trials
    and its own summary at ERROR; scalesearch reports those itself), then set back."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train", "ray.air")]
    levels = [logger.level for logger in loggers]
    if not settings.verbose:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _init_ray(
    settings: ResourceSettings, access: ClusterAccess | None, *, logging_level: int, runtime_env: dict[str, Any] | None
) -> str:
    """ray.init on the checked cluster (`access`) or a new local Ray; where it runs. UserError when
    Ray cannot start or join, or this machine lacks what the settings ask for."""
    import ray

    if access is not None:
        if access.auth_mode is not None:
            _set_auth_mode(access.auth_mode)
        try:
            ray.init(address=access.address, logging_level=logging_level, log_to_driver=settings.verbose,
                     runtime_env=runtime_env)  # fmt: skip
        except Exception as error:
            raise UserError(f"cannot join the Ray cluster at {access.address}: {first_line(error)}") from None
        return access.address
    import torch

    local = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    _check_resources(settings, local, where="this machine")
    try:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging_level,
            log_to_driver=settings.verbose,
            runtime_env=runtime_env,
        )
    except Exception as error:
        raise UserError(f"cannot start a local Ray: {first_line(error)}") from None
    return "local (started by scalesearch, 127.0.0.1)"


def _set_auth_mode(mode: str | None) -> None:
    """Set (or unset) RAY_AUTH_MODE for this process and make Ray's cached config see it."""
    if mode is None:
        os.environ.pop(AUTH_MODE_ENV, None)
    else:
        os.environ[AUTH_MODE_ENV] = mode
    try:
        from ray._raylet import Config  # type: ignore[attr-defined]

        # Ray reads its config from the environment once; this re-reads it (as Ray's own
        # _enable_token_auth does).
        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def check_local_resources(settings: ResourceSettings) -> None:
    """UserError now, before any planning, when the search would run on this machine (no address)
    and asks for more CPUs or GPUs than it has; a cluster's resources are checked when joining."""
    if settings.address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    local = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    _check_resources(settings, local, where="this machine")


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
    """Python's and the key packages' versions, as a run's manifest records them."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("scalesearch", "torch", "ray", "optuna", "fvcore", "numpy", "pandas"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine() -> dict[str, Any]:
    """Host name, platform, CPU count and GPU of this machine, as a run's manifest records them."""
    import torch

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }

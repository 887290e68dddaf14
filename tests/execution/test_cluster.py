"""Joining a Ray cluster: every address that is not a reachable Ray cluster ends with one line, fast.

The slow test starts a real `ray start --head` on loopback (the README's command, token
authentication and all), runs a tiny search on it through --address, and stops that cluster's own
processes afterwards.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalesearch.cli import main
from scalesearch.core.errors import UserError
from scalesearch.execution import cluster

ROOT = Path(__file__).resolve().parents[2]
TINY_SPACE = str(ROOT / "tests" / "fixtures" / "tiny_space.yaml")
LIMIT_S = 10.0  # the promise: a wrong address costs one line within 10 s


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tcp_service(greeting: bytes) -> Iterator[str]:
    """A TCP service on loopback that accepts every connection, sends it `greeting` (maybe nothing)
    and then never says another word; yields its address and closes everything afterwards."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection = server.accept()[0]
            except OSError:
                continue
            held.append(connection)
            if greeting:
                with contextlib.suppress(OSError):
                    connection.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP service that accepts connections and never says a word (what hung ray.init for minutes)."""
    yield from _tcp_service(b"")


@pytest.fixture
def http_server() -> Iterator[str]:
    """A host that answers, but not as Ray (what took 23 s and three tracebacks)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_lookalike() -> Iterator[str]:
    """A service that answers the HTTP/2 preface like a gRPC server, then never answers a call: only
    Ray's own GCS client can tell it is not Ray, and that client blocks (and ignores Ctrl-C)."""
    yield from _tcp_service(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS frame


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "cannot read Ray address"),
        ("127.0.0.1:99999", "cannot read Ray address"),
        ("127.0.0.1:notaport", "cannot read Ray address"),
    ],
)
def test_unreadable_addresses(address: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        cluster.check_address(address)


def test_closed_port_fails_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the Ray cluster"):
        cluster.check_address(f"127.0.0.1:{_closed_port()}")
    assert time.monotonic() - start < 2


def test_silent_service_fails_within_the_limit(silent_server: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match="does not answer the way Ray's GCS does"):
        cluster.check_address(silent_server, timeout=2.0)
    assert time.monotonic() - start < 3


def test_http_server_is_not_a_ray_cluster(http_server: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match="an HTTP server answers there"):
        cluster.check_address(http_server)
    assert time.monotonic() - start < 3


def test_grpc_lookalike_is_abandoned_at_the_deadline(grpc_lookalike: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match="answers there but not as Ray's GCS within 1.5 s"):
        cluster.check_address(grpc_lookalike, timeout=1.5)
    assert time.monotonic() - start < 2.5


def _sigint_default() -> None:
    """A shell's background jobs inherit SIGINT ignored; a terminal's Ctrl-C reaches a process that has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_interrupts_the_probe(grpc_lookalike: str) -> None:
    """Ctrl-C while Ray's GCS client waits on a service that never answers: the check stops at once."""
    code = f"from scalesearch.execution.cluster import check_address; check_address({grpc_lookalike!r}, timeout=30)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_sigint_default)  # fmt: skip
    time.sleep(1.5)  # well inside the probe (its imports take a fraction of a second)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert time.monotonic() - interrupted < 2
    assert "KeyboardInterrupt" in err


def _search_fails(address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, float]:
    """`scalesearch search --address ADDRESS` on the tiny space: exit 2, one stderr line; (line, seconds)."""
    start = time.monotonic()
    status = main(["search", "--space", TINY_SPACE, "--address", address, "--out", str(tmp_path / "run"), "--quiet"])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err, seconds


def test_search_on_a_closed_port_ends_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err, seconds = _search_fails(f"127.0.0.1:{_closed_port()}", tmp_path, capsys)
    assert "cannot reach the Ray cluster" in err
    assert seconds < LIMIT_S


@pytest.mark.slow  # waits out the default probe limit; test_silent_service_fails_within_the_limit is quick
def test_search_on_a_silent_service_ends_with_one_line(
    silent_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, seconds = _search_fails(silent_server, tmp_path, capsys)
    assert "does not answer the way Ray's GCS does" in err
    assert seconds < LIMIT_S


def test_search_on_an_http_server_ends_with_one_line(
    http_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err, seconds = _search_fails(http_server, tmp_path, capsys)
    assert "not Ray's GCS" in err
    assert seconds < LIMIT_S


@pytest.mark.slow
def test_search_interrupted_while_probing_exits_130(grpc_lookalike: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "scalesearch", "search", "--space", TINY_SPACE, "--address", grpc_lookalike,
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=_sigint_default)  # fmt: skip
    time.sleep(2)  # the CLI checks the address first; the probe waits PROBE_SECONDS on this service
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert time.monotonic() - interrupted < 3
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


def test_token_is_found_where_ray_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(cluster.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cluster.TOKEN_PATH_ENV, raising=False)
    assert cluster.find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("abc")
    assert cluster.find_token() == str(tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv(cluster.TOKEN_PATH_ENV, str(tmp_path / "missing"))
    assert cluster.find_token() is None
    monkeypatch.setenv(cluster.TOKEN_ENV, "abc")
    assert cluster.find_token() == "$RAY_AUTH_TOKEN"


# --------------------------------------------------------------------------------------------------
# A real cluster, started as the README says


def _ray_cli() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.is_file() else shutil.which("ray") or "ray"


def _stop_group(process: subprocess.Popen[bytes], group: int) -> None:
    """Stop the processes of one `ray start` (its own process group), never anyone else's Ray."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.poll()


@pytest.fixture
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ray start --head --port PORT` on loopback in its own temp dir and process group; its address.

    Token authentication is on when a token exists, as on a user's machine after any local Ray: the
    fixture makes sure one does (in ~/.ray/auth_token, where `ray start` and scalesearch look).
    """
    token = Path.home() / ".ray" / "auth_token"
    if not token.exists():
        subprocess.run([_ray_cli(), "get-auth-token", "--generate"], check=True, capture_output=True)
    port = _closed_port()
    # Ray's socket paths must stay short (107 bytes): a short temp dir, not pytest's deep one.
    temp_dir = tempfile.mkdtemp(prefix="ssray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", cluster.AUTH_MODE_ENV)}
    # The workers import this checkout's scalesearch, as a node with it installed would.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [_ray_cli(), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir",
               temp_dir, "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    group = process.pid  # start_new_session: the group every process of this cluster inherits
    try:
        output, _ = process.communicate(timeout=120)
        text = output.decode(errors="replace")
        assert process.returncode == 0, text
        assert "Token authentication is enabled" in text, text
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(process, group)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_search_joins_a_cluster_started_as_the_readme_says(
    ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(cluster.AUTH_MODE_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    access = cluster.check_address(ray_head)
    assert access.auth_mode == "token"
    out = tmp_path / "run"
    argv = ["search", "--space", TINY_SPACE, "--address", ray_head, "--trials", "2", "--epochs", "1",
            "--concurrency", "1", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "best.json").is_file()
    manifest = (out / "manifest.json").read_text()
    assert ray_head in manifest
    assert os.environ.get(cluster.AUTH_MODE_ENV) is None  # the session left the environment as it was


@pytest.mark.slow
def test_a_wrong_token_is_one_line(
    ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(cluster.AUTH_MODE_ENV, raising=False)
    monkeypatch.setenv(cluster.TOKEN_ENV, "0" * 32)
    err, seconds = _search_fails(ray_head, tmp_path, capsys)
    assert "rejected the token" in err
    assert seconds < LIMIT_S


@pytest.mark.slow
def test_builder_module_reaches_the_workers_of_a_joined_cluster(
    ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custom builder's module, shipped by ray_session to a `ray start` cluster: its workers rebuild
    the space at a path that does not exist there, so only the runtime env can give them the module."""
    import ray

    from scalesearch.config.settings import SearchSettings
    from scalesearch.config.spaces import load_space, space_from_text
    from scalesearch.models.families import ModelSpec

    monkeypatch.delenv(cluster.AUTH_MODE_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    name = f"cluster_cnn_{os.getpid()}"
    shutil.copy(ROOT / "examples" / "small_cnn.py", tmp_path / f"{name}.py")
    text = (ROOT / "examples" / "small_cnn.yaml").read_text().replace("small_cnn:build", f"{name}:build")
    (tmp_path / "space.yaml").write_text(text)
    space = load_space(tmp_path / "space.yaml")

    def build_on_worker(source: str) -> int:
        remote = space_from_text(source, path="/not/on/this/worker/space.yaml")
        return remote.proxy_family.total_blocks(ModelSpec(resolution=12, in_channels=1, width_mult=0.5))

    settings = SearchSettings(space_path=space.path, dataset="digits", concurrency=1, address=ray_head)
    with cluster.ray_session(settings, space=space) as where:
        assert where == ray_head
        assert ray.get(ray.remote(num_cpus=1)(build_on_worker).remote(space.source)) == 2 + 3 + 4

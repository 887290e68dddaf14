"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the shared Ray run last, together (a stable sort keeps each group's order): the
    session starts that Ray once, and no other test runs in a process where it is up."""
    items.sort(key=lambda item: "shared_ray" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[None]:
    """One local Ray for the session's in-process searches. A search in a process that already runs
    Ray uses that session and leaves it running (cluster.ray_session), so the tests pay Ray's start and
    stop (3-4 s) once instead of per search; the tests without it cover the search's own local start."""
    import ray

    from scalesearch.execution.cluster import AUTH_MODE_ENV, _set_auth_mode

    saved_mode = os.environ.get(AUTH_MODE_ENV)  # ray.init sets it for a local Ray; later tests must not see it
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        if os.environ.get(AUTH_MODE_ENV) != saved_mode:
            _set_auth_mode(saved_mode)


@pytest.fixture(scope="session")
def tiny_grid_run(tmp_path_factory: pytest.TempPathFactory, shared_ray: None) -> Path:
    """One uninterrupted grid search of the tiny space (3 networks of its realizable set, 1 epoch, no
    confirm stage), for the tests that only read a finished run."""
    from scalesearch.cli import main

    out = tmp_path_factory.mktemp("grid") / "run"
    space = Path(__file__).resolve().parent / "fixtures" / "tiny_space.yaml"
    argv = ["search", "--space", str(space), "--out", str(out), "--family-phis", "0-1", "--quiet", "--confirm-top", "0"]
    assert main(argv) == 0
    return out

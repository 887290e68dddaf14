"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def shared_ray() -> Iterator[None]:
    """One local Ray for a module's searches. A search in a process that already runs Ray uses that
    session and leaves it running (cluster.ray_session), so the module pays Ray's start and stop
    (3-4 s) once instead of per search; modules without it cover the search's own local start."""
    import ray

    from scalesearch.cluster import AUTH_MODE_ENV, _set_auth_mode

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

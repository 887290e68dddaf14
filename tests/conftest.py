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

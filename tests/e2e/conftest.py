"""Receivers shared by several modules of this folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_edge_matrix import WORKERS, receiver
from tests.processes import Processes
from tests.servers import RedisServer


@pytest.fixture(scope="session", params=list(WORKERS))
def edge_web(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[Processes]:
    """One web process per worker class (verifying Standard Webhooks, on the session's
    Redis) for tests/e2e/test_edge_matrix.py and test_edge_host.py, whose tests change
    nothing of it and count what they send from where they begin: a receiver start is
    ~1.4 CPU-s, and each module started both before. Both modules are the xdist group
    ``edge_receiver`` (``--dist loadgroup`` keeps them on one worker: one start a run)."""
    with receiver(tmp_path_factory.mktemp("edge"), redis_server.url, request.param) as web:
        yield web

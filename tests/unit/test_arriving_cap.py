"""The receiver's worker bounds what it buffers for arriving requests
(ingest/aio_worker.py ``ARRIVING_BYTES_CAP``): past the cap it stops reading the
connections that bring more, and reads them again once the buffered requests are
served or timed out (recounted at each tick)."""

from __future__ import annotations

from typing import Any

from ingest.aio_worker import ARRIVING_BYTES_CAP, AioWorker, Connection


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


def arriving(worker: Any, size: int) -> Connection:
    """A connection of ``worker`` whose request has brought ``size`` bytes so far."""
    connection = Connection.__new__(Connection)
    connection.worker = worker
    connection.transport = Transport()  # type: ignore[assignment]
    connection.buffer = bytearray()
    connection.lingering = connection.serving = connection.starved = False
    connection.fed = None
    connection.deadline = connection.window_ends = connection.window_spent = 0.0
    worker.connections.add(connection)
    connection._next_request = lambda: None  # type: ignore[method-assign]
    connection.data_received(b"x" * size)
    return connection


def a_worker() -> Any:
    worker = AioWorker.__new__(AioWorker)
    worker.connections = set()
    worker.arriving = 0
    return worker


def test_connections_past_the_cap_stop_being_read() -> None:
    worker = a_worker()
    under = arriving(worker, ARRIVING_BYTES_CAP // 2)
    over = arriving(worker, ARRIVING_BYTES_CAP // 2 + 1)

    assert under.transport.reading  # type: ignore[union-attr]
    assert not over.transport.reading  # type: ignore[union-attr]


def test_they_are_read_again_once_the_buffered_requests_are_gone() -> None:
    worker = a_worker()
    first = arriving(worker, ARRIVING_BYTES_CAP)
    starved = arriving(worker, 1024)
    worker._recount_arriving()
    assert not starved.transport.reading  # type: ignore[union-attr]

    first.buffer.clear()  # served (or answered 408 and closed)
    worker._recount_arriving()

    assert starved.transport.reading  # type: ignore[union-attr]

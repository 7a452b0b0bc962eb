"""Tiny chunks cost the receiver's event loop what their bytes cost, not the square of
them (ingest/gunicorn_worker.py ``ArrivalWalk``: the arrival walk resumes where it
stopped; ingest/aio_worker.py: a connection's arriving requests get at most half of
the loop's time). A million one-byte chunks (6 MB on the wire) are answered within
the arrival deadline, with no worker restart, while another connection's delivery is
answered at once; connections dripping one-byte chunks do not hold up deliveries.
One receiver process, so that every connection shares the loop being tested."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import total_queued
from tests.processes import Processes, running_fleet
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e

HEAD = (
    b"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"webhook-id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Processes]:
    """One receiver for the module's rows (they change nothing of it; each counts what it
    queued from where it began and checks the worker it started with is still there): a
    receiver start is ~1.4 CPU-s."""
    tmp_path = tmp_path_factory.mktemp("tiny-chunks")
    with running_fleet(
        tmp_path,
        redis_server.url,
        f"sqlite:///{tmp_path / 'unused.db'}",
        names=("web",),
        WEB_CONCURRENCY="1",
        HOOKFLEET_STANDARD_VERIFY="off",
        # Retell's limit, for a body whose walk outlasts the arrival deadline.
        HOOKFLEET_STANDARD_MAX_BODY_BYTES="6291456",
    ) as processes:
        yield processes


def one_byte_chunks(body: bytes) -> bytes:
    """``body`` as chunks of one byte each (``1\\r\\n<byte>\\r\\n``), built by slice
    assignment: a join over 4.5 million formatted chunks took ~1.4 CPU-s of the test."""
    wire = bytearray(b"1\r\n \r\n" * len(body))
    wire[3::6] = body
    return bytes(wire)


def connect(web: Processes) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=30)


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def delivery(web: Processes, event_id: str) -> tuple[int, float]:
    """``(status, seconds)`` of one small delivery on a fresh connection."""
    body = json.dumps({"type": "t", "id": event_id}).encode()
    started = time.monotonic()
    with connect(web) as sock:
        sock.sendall(
            b"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"webhook-id: %s\r\nContent-Length: %d\r\n\r\n%s" % (event_id.encode(), len(body), body)
        )
        return status_of(sock), time.monotonic() - started


def worker_pids(web: Processes) -> set[int]:
    master = web.running["web"].pid
    with open(f"/proc/{master}/task/{master}/children") as children:
        return {int(pid) for pid in children.read().split()}


def test_a_million_one_byte_chunks_are_answered_without_holding_the_loop(
    web: Processes, redis_server: RedisServer
) -> None:
    body = b'{"type": "t", "id": "tiny", "pad": "' + b"a" * 999_962 + b'"}'
    assert len(body) == 1_000_000  # under the 1 MiB limit: whole, and accepted
    run = os.urandom(4).hex()  # ids of this attempt: a rerun meets no duplicate of its own
    wire = HEAD % f"tiny-{run}".encode() + one_byte_chunks(body) + b"0\r\n\r\n"
    workers = worker_pids(web)
    queued = total_queued(redis_server.client())  # the session's Redis: earlier tests' too
    answer: list[tuple[int, float]] = []

    def post_tiny_chunks() -> None:
        started = time.monotonic()
        with connect(web) as sock:
            sock.sendall(wire)
            answer.append((status_of(sock), time.monotonic() - started))

    sender = threading.Thread(target=post_tiny_chunks)
    sender.start()
    meanwhile = []
    while sender.is_alive() and len(meanwhile) < 100:
        time.sleep(0.2)
        meanwhile.append(delivery(web, f"meanwhile-{run}-{len(meanwhile)}"))
    sender.join(60)

    ((status, seconds),) = answer
    assert (status, seconds < 10) == (202, True), seconds  # not the arrival deadline's 408
    assert len(meanwhile) >= 3
    assert {code for code, _ in meanwhile} == {202}
    assert max(took for _, took in meanwhile) < 1.0, meanwhile
    assert total_queued(redis_server.client()) == queued + 1 + len(meanwhile)
    assert worker_pids(web) == workers  # no worker killed for a blocked loop
    assert "WORKER TIMEOUT" not in web.log("web")


def test_a_body_of_tiny_chunks_sent_at_once_is_not_a_408_however_long_its_walk(
    web: Processes, redis_server: RedisServer
) -> None:
    """4.5 MB in one-byte chunks (27 MB on the wire) comes in about a second; walking it
    within the loop-time budget takes longer than the 10 s arrival deadline. The time
    the budget held the connection back is the loop's, not the client's: accepted, not
    answered 408 (it was, with every byte in the buffer)."""
    body = b'{"type": "t", "id": "big-tiny", "pad": "' + b"a" * 4_499_958 + b'"}'
    assert len(body) == 4_500_000
    queued = total_queued(redis_server.client())  # the session's Redis: earlier tests' too
    run = os.urandom(4).hex()  # ids of this attempt: a rerun meets no duplicate of its own
    wire = HEAD % f"big-tiny-{run}".encode() + one_byte_chunks(body) + b"0\r\n\r\n"
    with connect(web) as sock:
        sock.settimeout(60)
        sock.sendall(wire)
        assert status_of(sock) == 202
    assert total_queued(redis_server.client()) == queued + 1


def test_tiny_chunks_sent_at_once_then_silence_still_get_a_408(web: Processes) -> None:
    """The deadline is waived only while the client's bytes wait on the receiver: 2 MB
    of one-byte chunks sent at once and then nothing more (the body never ends) is a
    slow client once those bytes are walked: 408, well before the waiver's 60 s cap."""
    wire = HEAD % b"fast-then-silent" + b"1\r\na\r\n" * 2_000_000
    started = time.monotonic()
    with connect(web) as sock:
        sock.settimeout(60)
        sock.sendall(wire)
        assert status_of(sock) == 408
    assert time.monotonic() - started < 45


def drip(web: Processes, until: float) -> int:
    """Post chunked bodies of one-byte chunks, a few every 10 ms, a new one when one
    is answered, until ``until``; how many were answered."""
    answered = 0
    while time.monotonic() < until:
        with connect(web) as sock:
            sock.sendall(HEAD % os.urandom(4).hex().encode())
            sock.setblocking(False)
            while time.monotonic() < until:
                try:
                    if sock.recv(100):
                        answered += 1
                        break
                except BlockingIOError:
                    pass
                try:
                    sock.send(b"1\r\na\r\n" * 30)
                except BlockingIOError:
                    pass
                time.sleep(0.01)
    return answered


def test_connections_dripping_one_byte_chunks_do_not_hold_up_deliveries(
    web: Processes,
) -> None:
    run = os.urandom(4).hex()  # ids of this attempt: a rerun meets no duplicate of its own
    until = time.monotonic() + 12
    with ThreadPoolExecutor(8) as drippers:
        drips = [drippers.submit(drip, web, until) for _ in range(8)]
        time.sleep(3)  # their bodies have grown (a walk from the start grew with them)
        took = []
        while time.monotonic() < until - 0.5:
            status, seconds = delivery(web, f"legit-{run}-{len(took)}")
            assert status == 202
            took.append(seconds)
            time.sleep(0.05)
        for dripping in drips:
            dripping.result()

    took.sort()
    assert len(took) >= 20
    assert took[int(len(took) * 0.99) - 1] < 1.0, took[-5:]  # p99; it was 3.2 s
    assert "WORKER TIMEOUT" not in web.log("web")

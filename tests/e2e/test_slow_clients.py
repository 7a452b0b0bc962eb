"""Slow and silent clients against a real gunicorn: they must not hold the threads that
serve real deliveries (the shipped worker, ingest/aio_worker.py, reads every request in
its event loop until it has arrived, by ingest/gunicorn_worker.py's arrival rule); and
kept-alive connections spread over every worker process.

Three kinds, many of each, kept open while signed deliveries are posted: connections
that send their headers a byte at a time (a slowloris, a bad proxy), ones that send
their headers and then trickle the body, and ones that connect and say nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from ingest.gunicorn_worker import ARRIVAL_TIMEOUT_S, BOARD_STALE_S, request_arrived
from tests.processes import Processes, request, running_fleet
from tests.servers import RedisServer, wait_until

SLOW_HEADERS = b"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
SLOW_BODY = SLOW_HEADERS + b"Content-Length: 4000\r\n\r\n{"


@contextmanager
def receiver(tmp: Path, redis_url: str) -> Iterator[Processes]:
    with running_fleet(
        tmp,
        redis_url,
        f"sqlite:///{tmp / 'unused.db'}",
        names=("web",),
        HOOKFLEET_STANDARD_VERIFY="off",
    ) as processes:
        yield processes


@pytest.fixture(scope="module")
def shared_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """One receiver for the tests that leave it as they found it (every slow socket
    closed), on a Redis of its own."""
    tmp = tmp_path_factory.mktemp("slow-clients")
    redis_server = RedisServer(tmp / "redis").start()
    try:
        with receiver(tmp, redis_server.url) as processes:
            yield processes
    finally:
        redis_server.stop()


@pytest.fixture
def web(shared_web: Processes) -> Processes:
    """The module's receiver with its Redis emptied (a receiver alone needs nothing
    there between requests), so each test, and a rerun of it, starts clean."""
    client = redis.Redis.from_url(shared_web.env["HOOKFLEET_REDIS_URL"])
    client.flushall()
    client.close()
    return shared_web


@pytest.fixture
def own_web(tmp_path: Path, redis_url: str) -> Iterator[Processes]:
    """A receiver of its own, for a test that stops one of its workers."""
    with receiver(tmp_path, redis_url) as processes:
        yield processes


def open_slow(web: Processes, count: int) -> list[socket.socket]:
    port = int(web.env["PORT"])
    sockets = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        kind = n % 3
        if kind == 0:
            sock.sendall(SLOW_HEADERS[:20])  # the head, a little at a time
        elif kind == 1:
            sock.sendall(SLOW_BODY)  # a whole head, then the body a byte at a time
        sockets.append(sock)  # kind 2: silent
    return sockets


def keep_trickling(sockets: list[socket.socket]) -> None:
    for n, sock in enumerate(sockets):
        if n % 3 != 2:
            try:
                sock.sendall(b" ")
            except OSError:
                pass


@pytest.mark.e2e
@pytest.mark.parametrize("slow", [8, 64, 512])
def test_slow_and_silent_connections_do_not_delay_deliveries(web: Processes, slow: int) -> None:
    sockets = open_slow(web, slow)
    latencies = []
    try:
        for n in range(40):
            started = time.monotonic()
            status, _, _ = request(
                web.base_url,
                "POST",
                "/webhooks/standard",
                {"type": "t"},
                {"webhook-id": f"s{n}"},
            )
            latencies.append(time.monotonic() - started)
            assert status == 202
            keep_trickling(sockets)
        assert request(web.base_url, "GET", "/healthz")[0] == 200
    finally:
        for sock in sockets:
            sock.close()

    # Generous for a loaded shared machine: 8 slow clients used to make 40 % of the
    # deliveries wait out a 5 s timeout.
    assert max(latencies) < 1.0, latencies
    log = web.log("web")
    assert "WORKER TIMEOUT" not in log
    assert log.count("Booting worker") == int(web.env["WEB_CONCURRENCY"])


@pytest.mark.e2e
def test_a_request_that_never_arrives_whole_gets_a_json_408(web: Processes) -> None:
    port = int(web.env["PORT"])
    before = len(web.log("web"))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(SLOW_BODY)
        answer = sock.recv(4096)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    # A fresh request id (the request's own headers never arrived whole), also logged.
    request_id = re.search(rb"\r\nX-Request-ID: ([0-9a-f]{32})\r\n", head + b"\r\n")
    assert request_id is not None, head
    since = web.log("web")[before:].splitlines()  # the receiver is shared by the module
    logged = [json.loads(line) for line in since if "answered 408" in line]
    assert [line["level"] for line in logged] == ["WARNING"]
    assert request_id.group(1).decode() in logged[0]["message"]


@pytest.mark.parametrize(
    ("data", "arrived"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),
        # The body follows gunicorn's "100 Continue" (curl, .NET, Java clients).
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde", True),
        # Announced over the limit: the app answers 413 without waiting for it.
        (b"POST / HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n", True),
        # Over the 128 KiB buffer but under the limit: it must come whole first.
        (b"POST / HTTP/1.1\r\nContent-Length: 500000\r\n\r\n{", False),
        # Framing gunicorn refuses at once.
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", False),
        # The last chunk, then its (empty) trailer section.
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\nab", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True),
    ],
)
def test_a_request_is_handed_to_a_thread_once_it_can_be_answered(
    data: bytes, arrived: bool
) -> None:
    assert request_arrived(data, limit=1024 * 1024) is arrived


def test_a_head_longer_than_the_buffer_is_handed_on_for_gunicorn_to_refuse() -> None:
    assert request_arrived(b"GET / HTTP/1.1\r\nX: " + b"a" * 200_000)


def connections_by_worker(port: int) -> dict[str, int]:
    """Established connections to ``port`` by the pid holding them (``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(Counter(re.findall(r"pid=(\d+)", out)))


def keep_alive_requests(web: Processes, count: int) -> list[http.client.HTTPConnection]:
    port = int(web.env["PORT"])
    connections = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() is not None
        connections.append(connection)
    return connections


def wait_for_every_worker(web: Processes) -> None:
    """/healthz answers once one worker has loaded the app; the others may still be
    loading on a busy machine."""
    workers = int(web.env["WEB_CONCURRENCY"])
    wait_until(lambda: web.log("web").count("Worker ready") >= workers, 30, "every worker")


@pytest.mark.e2e
def test_keep_alive_connections_are_spread_over_every_worker(web: Processes) -> None:
    wait_for_every_worker(web)
    connections = keep_alive_requests(web, 16)
    try:
        held = connections_by_worker(int(web.env["PORT"]))
    finally:
        for connection in connections:
            connection.close()

    workers = int(web.env["WEB_CONCURRENCY"])
    assert len(held) == workers, held
    assert sum(held.values()) == 16
    # Opened one after another, the worst case for a race to accept: still none of
    # them takes (nearly) all while another idles (16 of 16 on one, before). On an
    # idle machine they split about evenly (7/9, 8/8); with the cores busy a worker
    # slow to wake leaves more to the other (13/3 seen), hence the loose bound.
    assert min(held.values()) >= 16 // (4 * workers), held


@pytest.mark.e2e
def test_a_stuck_worker_is_not_waited_for(own_web: Processes) -> None:
    web = own_web
    wait_for_every_worker(web)
    first = keep_alive_requests(web, 1)[0]
    stuck = int(next(iter(connections_by_worker(int(web.env["PORT"])))))
    first.close()
    os.kill(stuck, signal.SIGSTOP)
    try:
        time.sleep(BOARD_STALE_S + 1.5)
        started = time.monotonic()
        connections = keep_alive_requests(web, 12)
        elapsed = time.monotonic() - started
        for connection in connections:
            connection.close()
    finally:
        os.kill(stuck, signal.SIGCONT)

    # Every one answered at once by the worker that still runs (waiting for the
    # stuck one's fair share, they took about 25 s: until kept-alive ones timed out).
    assert elapsed < 5, elapsed


@pytest.mark.e2e
def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(
    web: Processes,
) -> None:
    body = json.dumps({"type": "t"}).encode()
    head = (
        b"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"webhook-id: expect-1\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)  # a strict client sends nothing more until this
        sock.sendall(body)
        answer = sock.recv(4096)

    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert answer.startswith(b"HTTP/1.1 202")


# Heads that announce a body under the provider's limit (Standard Webhooks: 1 MiB) and
# then send it a byte at a time: over the 128 KiB arrival buffer, chunked, and after an
# "Expect: 100-continue" (the receiver's loop sends the 100 and buffers the body).
DRIPPING = {
    "content-length over the buffer": SLOW_HEADERS + b"Content-Length: 500000\r\n\r\n{",
    "chunked": SLOW_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n30000\r\n{",
    "expect 100-continue": SLOW_HEADERS + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
}


def open_dripping(web: Processes, count: int) -> list[socket.socket]:
    sockets = []
    kinds = list(DRIPPING.values())
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=5)
        sock.sendall(kinds[n % len(kinds)])
        sockets.append(sock)
    return sockets


@pytest.mark.e2e
def test_slow_request_bodies_hold_no_thread(web: Processes) -> None:
    # 24 bodies arriving slowly, three times the worker's threads (2 workers x 4).
    sockets = open_dripping(web, 24)
    body = json.dumps({"type": "t", "data": "x" * 300_000}).encode()  # 300 KB
    try:
        time.sleep(0.5)  # every head has been read and is waiting for its body
        started = time.monotonic()
        healthz = request(web.base_url, "GET", "/healthz")[0]
        healthz_s = time.monotonic() - started
        started = time.monotonic()
        status = request(web.base_url, "POST", "/webhooks/standard", body, {"webhook-id": "big"})[0]
        delivery_s = time.monotonic() - started
        for sock in sockets:
            sock.sendall(b" ")
    finally:
        for sock in sockets:
            sock.close()

    assert (healthz, status) == (200, 202)
    # Generous for a loaded machine; a thread reading a slow body held it for 10 s
    # and more, and these waited behind them.
    assert healthz_s < 3, healthz_s
    assert delivery_s < 3, delivery_s


@pytest.mark.e2e
@pytest.mark.parametrize("head", list(DRIPPING.values()), ids=list(DRIPPING))
def test_a_body_dripping_past_the_deadline_gets_a_408(web: Processes, head: bytes) -> None:
    port = int(web.env["PORT"])
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(head)
        if b"Expect" in head:
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        # A byte every 1.5 s, as the attack did: each one used to restart the wait.
        while time.monotonic() - started < ARRIVAL_TIMEOUT_S + 10 and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b" ")
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not answer:
                break

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < ARRIVAL_TIMEOUT_S + 5
    assert b"100 Continue" not in answer  # the loop's one 100 came before, not again


@pytest.mark.e2e
def test_the_body_after_the_loops_100_continue_is_served_with_no_second_100(
    web: Processes,
) -> None:
    body = json.dumps({"type": "t", "data": "x" * 200_000}).encode()
    head = SLOW_HEADERS + b"webhook-id: expect-big\r\nExpect: 100-continue\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)
        sock.sendall(body)
        answer = b""
        while b"accepted" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.startswith(b"HTTP/1.1 202"), answer

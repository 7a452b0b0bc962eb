"""wrk paced (tests/bench/wrk_paced.lua, ``load.run_wrk_paced``), the benchmark's timer of
the p99 at half rate: it sends the rate it is asked for however long each answer takes,
every request a unique delivery, and says so when the server cannot take that rate.

Against a small in-process server whose answer time the test sets, so what is checked
is the pacing, not the receiver. About a second of wrk per test."""

from __future__ import annotations

import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.bench import deliveries, load

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]


class SlowAnswers(socketserver.ThreadingTCPServer):
    """Answers every keep-alive POST with 202 after ``answer_s``, one thread per
    connection, and keeps each request's ``webhook-id``."""

    daemon_threads = True
    allow_reuse_address = True
    # wrk opens all its connections at once: socketserver's default backlog of 5
    # drops some, and their retried SYNs come a second later.
    request_queue_size = 64

    def __init__(self, answer_s: float) -> None:
        self.answer_s = answer_s
        self.ids: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Connection)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk resets its connections when it stops

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Connection(socketserver.BaseRequestHandler):
    server: SlowAnswers

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                pending += chunk
            head, pending = pending.split(b"\r\n\r\n", 1)
            headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in headers.items()}
            length = int(fields.get(b"content-length", b"0"))
            while len(pending) < length:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                pending += chunk
            pending = pending[length:]
            with self.server.lock:
                self.server.ids.append(fields.get(b"webhook-id", b"").decode())
            time.sleep(self.server.answer_s)
            self.request.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")


@contextmanager
def serving(answer_s: float) -> Iterator[SlowAnswers]:
    server = SlowAnswers(answer_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def requests_file(tmp_path: Path) -> Path:
    path = tmp_path / "paced.requests"
    deliveries.write_requests(path, deliveries.requests("standard", 500, 0.0))
    return path


def paced_for_a_second(
    requests: Path, rate: float, connections: int, answer_s: float
) -> tuple[dict[str, Any], list[str]]:
    """wrk paced at ``rate`` against a server answering after ``answer_s``: its
    result and the ``webhook-id`` of every request the server read."""
    wrk = shutil.which("wrk")
    assert wrk
    with serving(answer_s) as server:
        result = load.run_wrk_paced(wrk, server.url, requests, 1, rate, connections, threads=2)
        return result, list(server.ids)


def test_wrk_paced_sends_the_rate_asked_for_when_answers_take_25_ms(
    requests_file: Path,
) -> None:
    # 16 connections at 200/s: each connection's turn comes every 80 ms. A fixed pause
    # after each answer, sized for a 2 ms answer, would send ~150/s here.
    result, ids = paced_for_a_second(requests_file, 200, connections=16, answer_s=0.025)

    assert result["generator"] == "wrk-paced"
    assert result["errors"] == 0
    assert result["target_rate"] == 200
    assert 0.9 <= result["reached_share"] <= 1.1, result
    # Counted while both of wrk's threads sent, the same (wrk's own requests/s is not:
    # it counts the first thread's head start while the second reads its requests).
    assert 180 <= result["together_rate"] <= 220, result
    # Latency from the send: the answer time, not the pacing.
    assert 25 <= result["p50_ms"] < 60, result
    # Every request a delivery of its own: the two threads send disjoint slices.
    assert len(ids) >= 180
    assert len(set(ids)) == len(ids)


def test_wrk_paced_says_it_fell_short_when_the_server_cannot_take_the_rate(
    requests_file: Path,
) -> None:
    # 4 connections and 100 ms answers carry 40/s at most: asked for 200/s.
    result, _ = paced_for_a_second(requests_file, 200, connections=4, answer_s=0.1)

    assert result["short_of_target"], result
    assert result["reached_share"] < 0.5
    # Its requests waited for a free connection: the lag says how long.
    assert result["lag_p99_ms"] > 100, result

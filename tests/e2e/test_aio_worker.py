"""The receiver's event-loop worker (ingest/aio_worker.py) against a real gunicorn and
a real redis-server, over raw sockets: pipelined requests, a SIGTERM while a claim
waits on Redis, Redis going away and coming back, a flushed script cache, and the
framing kinds where llhttp and gunicorn's parser disagree."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.dedup import dedup_key
from ingest.providers import retell
from tests.databases import copy_sqlite
from tests.helpers import standard_head, total_queued
from tests.integration.test_inbound import API_KEY as RETELL_KEY
from tests.integration.test_inbound import inbound, seed
from tests.processes import (
    ONE_RECEIVER_WORKER,
    Processes,
    request,
    running_fleet,
    standard_receiver,
)
from tests.servers import RedisServer, wait_until

pytestmark = pytest.mark.e2e


def web_only(
    tmp_path: Path, redis_url: str, **env: str
) -> contextlib.AbstractContextManager[Processes]:
    """The receiver alone (no Celery worker) on ``redis_url``, verification off, one
    gunicorn worker (``tests.processes.ONE_RECEIVER_WORKER``: no test here is about how
    requests spread over workers); ``env`` on top."""
    settings = {**ONE_RECEIVER_WORKER, "HOOKFLEET_STANDARD_VERIFY": "off", **env}
    return running_fleet(
        tmp_path, redis_url, f"sqlite:///{tmp_path / 'unused.db'}", names=("web",), **settings
    )


@pytest.fixture
def web(tmp_path: Path, own_redis: RedisServer) -> Iterator[Processes]:
    """A receiver of this test's own, for a test that freezes or stops its Redis or stops
    the receiver."""
    # A socket timeout longer than the freezes below: the claim waits, it does not fail.
    with web_only(tmp_path, f"{own_redis.url}?socket_timeout=10") as processes:
        yield processes


@pytest.fixture(scope="module")
def module_receiver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Processes, RedisServer]]:
    """The same receiver and Redis as ``web``, started once for the module's tests that
    leave both whole (a receiver start is ~2.5 CPU-s of imports, in every test before)."""
    directory = tmp_path_factory.mktemp("aio-receiver")
    server = RedisServer(directory / "redis").start()
    try:
        # No gunicorn options from the developer's environment: the shipped worker.
        receiver = f"{server.url}?socket_timeout=10"
        with web_only(directory, receiver, GUNICORN_CMD_ARGS="") as processes:
            yield processes, server
    finally:
        server.stop()


@pytest.fixture
def shared_redis(module_receiver: tuple[Processes, RedisServer]) -> RedisServer:
    """The module receiver's Redis, emptied for each test (and each rerun): nothing
    queued or claimed by an earlier one. The receiver keeps running."""
    processes, server = module_receiver
    assert processes.running["web"].poll() is None, processes.log("web")
    server.client().flushall()
    return server


@pytest.fixture
def shared_web(
    module_receiver: tuple[Processes, RedisServer], shared_redis: RedisServer
) -> Processes:
    """The module's receiver, on ``shared_redis``."""
    return module_receiver[0]


def delivery(event_id: str, *, request_id: str = "") -> bytes:
    body = json.dumps({"type": "t", "id": event_id}).encode()
    extra = f"X-Request-ID: {request_id}\r\n" if request_id else ""
    return (
        f"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"webhook-id: {event_id}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` answers read off one connection, in the order they came."""
    data = b""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1")
            headers = dict(
                (name.lower(), value.strip())
                for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
            )
            length = int(headers.get("content-length", "0"))
            if len(data) >= end + 4 + length:
                answers.append((int(head.split(" ")[1]), headers, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return answers


def connect(web: Processes) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=20)


def test_pipelined_requests_are_answered_one_by_one_in_request_order(
    shared_web: Processes, shared_redis: RedisServer
) -> None:
    pipelined = (
        delivery("pipe-1", request_id="first")
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: second\r\n\r\n"
        + delivery("pipe-1", request_id="third")  # the same event: a duplicate
        + b"POST /webhooks/nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"X-Request-ID: fourth\r\n\r\n{}"
    )
    with connect(shared_web) as sock:
        sock.sendall(pipelined)  # all at once: the server holds the rest while it serves one
        answers = read_answers(sock, 4)

    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [
        (202, "first"),
        (200, "second"),
        (200, "third"),
        (404, "fourth"),
    ]
    assert json.loads(answers[0][2])["status"] == "accepted"
    assert json.loads(answers[2][2])["status"] == "duplicate"
    assert json.loads(answers[3][2])["error"]["code"] == "unknown_provider"
    assert total_queued(shared_redis.client()) == 1


def test_sigterm_while_a_claim_waits_on_redis_finishes_it(
    web: Processes, own_redis: RedisServer
) -> None:
    with connect(web) as sock:
        own_redis.freeze()  # the claim is sent and waits for Redis's answer
        try:
            sock.sendall(delivery("term-1"))
            time.sleep(0.5)
            web.running["web"].send_signal(signal.SIGTERM)
            time.sleep(1.0)
        finally:
            own_redis.thaw()
        answers = read_answers(sock, 1)

    assert [status for status, _, _ in answers] == [202]
    assert total_queued(own_redis.client()) == 1
    assert web.running["web"].wait(timeout=30) == 0
    assert "Traceback" not in web.log("web")


def test_redis_stopped_is_503_with_retry_after_then_accepted_once_it_is_back(
    web: Processes, own_redis: RedisServer
) -> None:
    own_redis.stop()
    with connect(web) as sock:
        sock.sendall(delivery("down-1"))
        ((status, headers, body),) = read_answers(sock, 1)
    assert (status, json.loads(body)["error"]["code"]) == (503, "queue_unavailable")
    assert int(headers["retry-after"]) >= 1

    own_redis.start()

    def accepted() -> bool:
        with connect(web) as sock:
            sock.sendall(delivery("down-1"))
            return read_answers(sock, 1)[0][0] == 202

    wait_until(accepted, 20, "the delivery accepted once Redis is back")
    assert total_queued(own_redis.client()) == 1


def test_a_flushed_script_cache_does_not_refuse_deliveries(
    shared_web: Processes, shared_redis: RedisServer
) -> None:
    with connect(shared_web) as sock:
        sock.sendall(delivery("flush-1"))
        assert read_answers(sock, 1)[0][0] == 202
        shared_redis.client().script_flush()
        sock.sendall(delivery("flush-2"))  # the same connection: the same worker
        assert read_answers(sock, 1)[0][0] == 202

    assert total_queued(shared_redis.client()) == 2


# Heads llhttp reads differently from gunicorn's parser (ingest/aio_worker.py's
# parse_plain sends each to gunicorn's parser): gunicorn's answer is the one given.
@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        # llhttp accepts a repeated Host or Content-Type; gunicorn refuses it (RFC 9110 5.3).
        (b"POST /webhooks/standard HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400, "bad_host"),
        (
            b"POST /webhooks/standard HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Content-Type: text/plain\r\n",
            400,
            "malformed_request",
        ),
        # llhttp accepts "HTTP/2.0" and a doubled space; gunicorn refuses them (another
        # major version: 505, ingest/http_version.py).
        (b"POST /webhooks/standard HTTP/2.0\r\n", 505, "http_version_not_supported"),
        (b"POST  /webhooks/standard HTTP/1.1\r\n", 400, "malformed_request"),
        # Over gunicorn's limits, which llhttp does not know.
        (
            b"POST /webhooks/standard?" + b"a" * 4100 + b" HTTP/1.1\r\n",
            414,
            "request_line_too_long",
        ),
        (
            b"POST /webhooks/standard HTTP/1.1\r\nX-Big: " + b"a" * 8200 + b"\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"POST /webhooks/standard HTTP/1.1\r\n"
            + b"".join(b"X-%d: a\r\n" % n for n in range(101)),
            431,
            "headers_too_large",
        ),
        # llhttp refuses an unknown method; gunicorn passes it to the app (a JSON 405).
        (b"PURGE /webhooks/standard HTTP/1.1\r\nHost: x\r\n", 405, "method_not_allowed"),
    ],
    ids=[
        "repeated Host",
        "repeated Content-Type",
        "HTTP/2.0",
        "doubled space",
        "request line over 4094",
        "header field over 8190",
        "101 header fields",
        "unknown method",
    ],
)
def test_a_head_llhttp_reads_otherwise_gets_gunicorns_answer(
    shared_web: Processes, shared_redis: RedisServer, head: bytes, status: int, code: str
) -> None:
    logged_before = len(shared_web.log("web"))  # the module's receiver: this test's lines
    with connect(shared_web) as sock:
        sock.sendall(head + b"Content-Length: 2\r\n\r\n{}")
        ((answered, headers, body),) = read_answers(sock, 1)

    assert (answered, json.loads(body)["error"]["code"]) == (status, code)
    assert headers["content-type"] == "application/json"
    if status != 405:
        assert headers["connection"] == "close"
    assert total_queued(shared_redis.client()) == 0
    assert not re.search(r'"level": "(ERROR|CRITICAL)"', shared_web.log("web")[logged_before:])


def test_a_connection_left_open_after_its_answer_is_closed_after_the_keep_alive(
    shared_web: Processes,
) -> None:
    with connect(shared_web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answers(sock, 1)[0][0] == 200
        started = time.monotonic()
        assert sock.recv(10) == b""  # the server closed it (gunicorn's keepalive: 5 s)
    assert 3 < time.monotonic() - started < 15


def test_a_redis_that_refuses_the_write_is_503_and_nothing_half_claimed(
    shared_web: Processes, shared_redis: RedisServer
) -> None:
    client = shared_redis.client()
    client.config_set("maxmemory", "1")  # noeviction: every write is refused (OOM)
    try:
        with connect(shared_web) as sock:
            sock.sendall(delivery("oom-1"))
            ((status, _, body),) = read_answers(sock, 1)
    finally:
        client.config_set("maxmemory", "0")
    assert (status, json.loads(body)["error"]["code"]) == (503, "queue_unavailable")
    assert client.exists(dedup_key("standard", "oom-1")) == 0
    assert total_queued(client) == 0


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def loads_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


def assert_workers_load_uvloop(web: Processes, event_loop: bool) -> None:
    with connect(web) as sock:
        sock.sendall(delivery("either-1"))
        assert read_answers(sock, 1)[0][0] == 202
    # bash -c exec: the Procfile process is gunicorn's master itself.
    workers = worker_pids(web.running["web"].pid)

    assert workers and all(loads_uvloop(pid) is event_loop for pid in workers)


def test_the_shipped_worker_runs_the_event_loop(shared_web: Processes) -> None:
    assert_workers_load_uvloop(shared_web, event_loop=True)


def test_a_body_announced_too_large_is_413_without_asking_for_it(shared_web: Processes) -> None:
    head = (
        b"POST /webhooks/standard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"webhook-id: expect-big\r\nExpect: 100-continue\r\nContent-Length: 50000000\r\n\r\n"
    )
    with connect(shared_web) as sock:
        sock.sendall(head)  # a strict client sends no body before a 100 Continue
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 413")  # no "100 Continue" before it
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert b"connection: close" in head_part.lower()


def test_max_requests_restarts_a_worker_between_requests(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    with web_only(tmp_path, own_redis.url, GUNICORN_CMD_ARGS="--max-requests 3") as web:
        first = worker_pids(web.running["web"].pid)
        statuses = []
        for n in range(6):
            with connect(web) as sock:
                sock.sendall(delivery(f"max-{n}"))
                statuses += [status for status, _, _ in read_answers(sock, 1)]
            if n == 2:  # the third request was the first worker's last
                wait_until(lambda: worker_pids(web.running["web"].pid) != first, 30, "a new worker")
        log = web.log("web")

    assert statuses == [202] * 6
    assert "Autorestarting worker after current request." in log
    assert total_queued(own_redis.client()) == 6


def test_sigquit_ends_a_worker_at_once_and_the_master_replaces_it(shared_web: Processes) -> None:
    (worker, *_) = worker_pids(shared_web.running["web"].pid)
    started = time.monotonic()
    os.kill(worker, signal.SIGQUIT)

    wait_until(lambda: not Path(f"/proc/{worker}").exists(), 10, "the worker to exit")
    assert time.monotonic() - started < 5
    wait_until(
        lambda: (
            len(worker_pids(shared_web.running["web"].pid))
            == int(shared_web.env["WEB_CONCURRENCY"])
        ),
        30,
        "a replacement worker",
    )
    with connect(shared_web) as sock:
        sock.sendall(delivery("after-quit"))
        assert read_answers(sock, 1)[0][0] == 202


def signed(event_id: str, body: bytes, *, content_type: str = "application/json") -> bytes:
    head = standard_head(event_id, body, content_type=content_type)
    framing = f"X-Request-ID: req-{event_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    return (head + framing).encode() + body


def same_requests() -> list[bytes]:
    good = b'{"type":"invoice.paid","id":"same-1"}'
    return [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-health\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\nX-Request-ID: r-health-10\r\n\r\n",
        signed("same-1", good),
        signed("same-1", good),  # a duplicate
        signed("same-2", b'{"type":"t"}').replace(b"v1,", b"v1,AAAA"),  # a bad signature
        signed("same-3", b'{"type":'),  # not JSON
        signed("same-4", b'{"type":"t"}', content_type="text/plain"),
        signed("same-5", b"[1,2]"),  # an array: Standard Webhooks takes any JSON
        signed("same-6", b'{"type":"t"}').replace(
            b"Host: hookfleet\r\n", b"Host: hookfleet\r\nContent-Encoding: gzip\r\n"
        ),
        b"POST /webhooks/nobody HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-404\r\nContent-Length: 2"
        b"\r\n\r\n{}",
        b"GET /webhooks/standard HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-405\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-metrics\r\n\r\n",
    ]


def answers_of(web: Processes) -> list[tuple[int, dict[str, str], object]]:
    answers = []
    for raw in same_requests():
        with connect(web) as sock:
            sock.sendall(raw)
            ((status, headers, body),) = read_answers(sock, 1)
        headers.pop("date")
        if "allow" in headers:  # werkzeug lists a set: its order is the process's hash seed's
            headers["allow"] = ", ".join(sorted(headers["allow"].split(", ")))
        answers.append((status, headers, json.loads(body) if body else None))
    return answers


def outcome_lines(web: Processes) -> list[tuple[str, str]]:
    lines = [json.loads(line) for line in web.log("web").splitlines() if line.startswith("{")]
    return [(line["message"], line.get("outcome", "")) for line in lines if "outcome" in line]


def test_gunicorns_own_option_selects_the_former_worker_which_answers_alike(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    seen = []
    for n, cmd_args in enumerate(["", "--worker-class ingest.gunicorn_worker.JsonErrorWorker"]):
        with standard_receiver(
            tmp_path / str(n), own_redis.url.replace("/0", f"/{n + 1}"), GUNICORN_CMD_ARGS=cmd_args
        ) as web:
            answers = answers_of(web)
            metrics = request(web.ops_url, "GET", "/metrics")[2]
            counted = sorted(re.findall(r"hookfleet_webhooks_received_total\{.*", metrics))
            # Workers that have served the answers above: the event loop, or the option's.
            workers = worker_pids(web.running["web"].pid)
            assert workers and all(loads_uvloop(pid) is (n == 0) for pid in workers)
        # Read once the fleet has stopped: the loop writes its lines once per pass,
        # just after that pass's answers (models.logs.TickLines), and at its exit.
        seen.append((answers, outcome_lines(web), counted))

    (ours, our_lines, our_counts), (former, former_lines, former_counts) = seen
    assert [answer[0] for answer in ours] == [
        200,
        200,
        202,
        200,
        401,
        400,
        415,
        202,
        415,
        404,
        405,
        404,
    ]
    assert ours == former
    assert our_lines == former_lines
    assert len(our_counts) >= 5 and our_counts == former_counts


def test_a_retell_inbound_call_is_answered_from_a_thread_then_recorded(
    tmp_path: Path, own_redis: RedisServer, sqlite_template: Path
) -> None:
    database_url = copy_sqlite(sqlite_template, tmp_path / "db")  # migrated once a session
    seed(database_url)
    body = inbound("030 1234567")
    signature = retell.sign(RETELL_KEY, body, int(time.time() * 1000))
    raw = (
        f"POST /webhooks/retell HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"x-retell-signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with running_fleet(
        tmp_path,
        own_redis.url,
        database_url,
        names=("web",),
        **ONE_RECEIVER_WORKER,
        HOOKFLEET_RETELL_SECRETS=RETELL_KEY,
        HOOKFLEET_INBOUND_BUDGET_MS="5000",  # the answer's shape, not the budget
    ) as web:
        with connect(web) as sock:
            sock.sendall(raw + raw)  # the second on the same connection, pipelined
            answers = read_answers(sock, 2)
        wait_until(lambda: total_queued(own_redis.client()) == 1, 10, "the call's record")

    for status, _, answer in answers:
        assert status == 200
        assert json.loads(answer)["call_inbound"]["override_agent_id"] == "agent_mitte"

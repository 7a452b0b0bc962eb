"""The receiver's edge on a real gunicorn, on both of its worker classes: which routes
each listener answers, repeated identity and signature headers, and the HTTP version
of the request line. One web process per worker class serves the whole matrix."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import recv_until, standard_head, total_queued
from tests.processes import Processes, standard_receiver
from tests.servers import wait_until

BODY = b'{"type":"invoice.paid","data":{"id":"in_1"}}'
SHIPPED, GTHREAD = "shipped worker", "gthread fallback"
WORKERS = {SHIPPED: "", GTHREAD: "--worker-class ingest.gunicorn_worker.JsonErrorWorker"}


# One receiver per worker class for this module and test_edge_host.py (tests/e2e/conftest.py).
pytestmark = pytest.mark.xdist_group("edge_receiver")


@pytest.fixture
def web(edge_web: Processes) -> Processes:
    return edge_web


@contextmanager
def receiver(tmp: Path, redis_url: str, worker: str, **env: str) -> Iterator[Processes]:
    """One web process of ``worker`` (a key of :data:`WORKERS`) verifying Standard
    Webhooks with ``tests.helpers.STANDARD_SECRET``; ``env`` on top."""
    with standard_receiver(
        tmp, redis_url, WEB_CONCURRENCY="1", GUNICORN_CMD_ARGS=WORKERS[worker], **env
    ) as processes:
        yield processes


@pytest.fixture
def queue(redis_client: redis.Redis) -> redis.Redis:
    """The shared test Redis, emptied for the test (tests/conftest.py)."""
    return redis_client


def public(web: Processes) -> int:
    return int(web.env["PORT"])


def ops(web: Processes) -> int:
    return int(web.env["HOOKFLEET_OPS_BIND"].rpartition(":")[2])


def ask(port: int, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the first answer's status line, headers (lower
    case) and body (by its Content-Length, or up to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        head, _, body = recv_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(body) < length:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            body += chunk
        return lines[0], headers, body


def code_of(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


def signed_head(
    event_id: str, *, version: str = "HTTP/1.1", target: str = "/webhooks/standard"
) -> str:
    return standard_head(event_id, BODY, f"POST {target} {version}")


def delivery(head: str, *extra: str) -> bytes:
    return (
        head + "".join(f"{line}\r\n" for line in extra) + f"Content-Length: {len(BODY)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + BODY


# (method, target, on the public listener, on the ops listener): status, and the JSON
# code for an error (None: served).
ROUTES = [
    ("POST", "/webhooks/standard", (202, None), (404, "not_found")),
    ("POST", "http://hookfleet/webhooks/standard", (202, None), (404, "not_found")),
    ("POST", "/webhooks/%73tandard", (202, None), (404, "not_found")),
    ("POST", "/webhooks/standard/", (404, "not_found"), (404, "not_found")),
    ("POST", "//webhooks/standard", (404, "not_found"), (404, "not_found")),
    ("POST", "/webhooks//standard", (404, "not_found"), (404, "not_found")),
    ("POST", "/webhooks/nosuch", (404, "unknown_provider"), (404, "not_found")),
    ("GET", "/webhooks/standard", (405, "method_not_allowed"), (404, "not_found")),
    ("HEAD", "/webhooks/standard", (405, None), (404, None)),
    ("GET", "/metrics", (404, "not_found"), (200, None)),
    ("HEAD", "/metrics", (404, None), (200, None)),
    ("GET", "/%6Detrics", (404, "not_found"), (200, None)),
    ("GET", "http://hookfleet/metrics", (404, "not_found"), (200, None)),
    ("GET", "/metrics/", (404, "not_found"), (404, "not_found")),
    ("GET", "//metrics", (404, "not_found"), (404, "not_found")),
    ("POST", "/metrics", (404, "not_found"), (405, "method_not_allowed")),
    ("GET", "/stats", (404, "not_found"), (200, None)),
    ("GET", "/readyz", (404, "not_found"), None),  # 200 or 503: the database decides
    ("GET", "/healthz", (200, None), (200, None)),
    ("OPTIONS", "*", (404, "not_found"), (404, "not_found")),
    ("OPTIONS", "/webhooks/standard", (405, "method_not_allowed"), (404, "not_found")),
    ("OPTIONS", "/healthz", (405, "method_not_allowed"), (405, "method_not_allowed")),
    ("GET", "/", (404, "not_found"), (404, "not_found")),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "target", "on_public", "on_ops"), ROUTES)
def test_each_listener_answers_only_its_own_routes(
    web: Processes,
    queue: redis.Redis,
    method: str,
    target: str,
    on_public: tuple[int, str | None],
    on_ops: tuple[int, str | None] | None,
) -> None:
    for port, expected in ((public(web), on_public), (ops(web), on_ops)):
        if method == "POST" and "webhooks" in target:
            raw = delivery(signed_head(f"route-{port}-{target}", target=target))
        else:
            raw = f"{method} {target} HTTP/1.1\r\nHost: hookfleet\r\nConnection: close\r\n\r\n"
            raw = raw.encode()
        line, _, body = ask(port, raw)
        status = int(line.split()[1])
        if expected is None:
            assert status in (200, 503), line
            continue
        assert status == expected[0], (port, line, body)
        if expected[1] is not None:
            assert code_of(body) == expected[1]
        elif method == "HEAD":
            assert body == b""
    accepted = 1 if on_public[0] == 202 else 0
    assert total_queued(queue) == accepted  # nothing posted to the ops listener queued


@pytest.mark.e2e
@pytest.mark.parametrize(
    "repeated",
    [
        ("webhook-id: other",),
        ("webhook-timestamp: 1",),
        ("webhook-signature: v1,AAAA",),
        ("Stripe-Signature: t=1,v1=aa", "Stripe-Signature: t=1,v1=bb"),
        ("x-retell-signature: v=1,d=aa", "X-Retell-Signature: v=1,d=bb"),
        ("X-Cal-Signature-256: aa", "x-cal-signature-256: bb"),
    ],
    ids=lambda lines: lines[0].split(":")[0].lower(),
)
def test_a_repeated_identity_or_signature_header_is_refused_not_joined(
    web: Processes, queue: redis.Redis, repeated: tuple[str, ...]
) -> None:
    line, headers, body = ask(public(web), delivery(signed_head("repeated-1"), *repeated))

    assert line.startswith("HTTP/1.1 400"), (line, body)
    assert code_of(body) == "repeated_header"
    name = repeated[0].split(":")[0].lower()
    assert name in json.loads(body)["error"]["message"].lower()
    assert headers.get("x-request-id")
    assert total_queued(queue) == 0


@pytest.mark.e2e
def test_one_header_with_several_signatures_is_a_delivery(
    web: Processes, queue: redis.Redis
) -> None:
    # The Standard Webhooks spec puts several signatures in one header, space-separated.
    head = signed_head("several-signatures-1")
    head = head.replace("webhook-signature: ", "webhook-signature: v1,AAAAAAAA ")
    line, _, body = ask(public(web), delivery(head))

    assert line.startswith("HTTP/1.1 202"), body
    assert total_queued(queue) == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    "lengths",
    [
        ("Content-Length: 5",),
        ("Transfer-Encoding: chunked",),
        ("Content-Type: application/json",),
    ],
    ids=[
        "content-length twice, different",
        "content-length with transfer-encoding",
        "content-type twice",
    ],  # Host twice: 400 bad_host (tests/e2e/test_edge_host.py)
)
def test_conflicting_lengths_or_repeated_singletons_are_a_malformed_request(
    web: Processes, queue: redis.Redis, lengths: tuple[str, ...]
) -> None:
    line, _, body = ask(public(web), delivery(signed_head("lengths-1"), *lengths))

    assert line.startswith("HTTP/1.1 400"), line
    assert code_of(body) == "malformed_request"
    assert total_queued(queue) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/1.9"])
def test_a_later_http_1_minor_version_is_answered_as_http_1_1(
    web: Processes, queue: redis.Redis, version: str
) -> None:
    line, _, body = ask(public(web), delivery(signed_head(f"v-{version}", version=version)))

    assert line.startswith("HTTP/1.1 202"), (line, body)
    assert total_queued(queue) == 1


@pytest.mark.e2e
def test_an_http_1_0_request_is_served(web: Processes, queue: redis.Redis) -> None:
    line, headers, _ = ask(public(web), delivery(signed_head("v-1.0", version="HTTP/1.0")))

    # RFC 9110 section 2.5: answered in the highest version the server conforms to
    # (the gthread fallback keeps gunicorn's HTTP/1.0 status line: README).
    shipped = web.env["GUNICORN_CMD_ARGS"] == WORKERS[SHIPPED]
    expected = "HTTP/1.1" if shipped else "HTTP/1.0"
    assert line.startswith(f"{expected} 202"), line
    assert headers["connection"] == "close"
    assert total_queued(queue) == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("request_line", "status", "code"),
    [
        ("GET /healthz HTTP/2.0", 505, "http_version_not_supported"),
        ("PRI * HTTP/2.0", 505, "http_version_not_supported"),
        ("GET /healthz HTTP/3.0", 505, "http_version_not_supported"),
        ("GET /healthz HTTP/0.9", 505, "http_version_not_supported"),
        ("GET /healthz HTTP/1.10", 400, "malformed_request"),
        ("GET /healthz http/1.1", 400, "malformed_request"),
        ("GET /healthz HTTP/01.1", 400, "malformed_request"),
        ("GET /healthz HTTP/1", 400, "malformed_request"),
        ("GET /healthz HTTP/1.1.1", 400, "malformed_request"),
        ("GET /healthz", 400, "malformed_request"),
    ],
)
def test_a_version_this_port_does_not_speak_is_refused_in_json(
    web: Processes, request_line: str, status: int, code: str
) -> None:
    raw = f"{request_line}\r\nHost: hookfleet\r\n\r\n".encode()
    if request_line.startswith("PRI"):
        raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    line, headers, body = ask(public(web), raw)

    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert code_of(body) == code
    assert headers.get("x-request-id")


def received(web: Processes, **labels: str) -> float:
    """Every webhook answer counted so far (hookfleet_webhooks_received), of those
    ``labels`` (all without)."""
    _, _, body = ask(ops(web), b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "hookfleet_webhooks_received"
        for sample in family.samples
        if sample.name.endswith("_total") and labels.items() <= sample.labels.items()
    )


@pytest.mark.e2e
def test_a_webhook_posted_to_the_ops_listener_is_not_counted_as_a_delivery(
    web: Processes, queue: redis.Redis
) -> None:
    before = received(web)
    line, _, _ = ask(ops(web), delivery(signed_head("ops-not-counted")))
    after_ops = received(web)
    ask(public(web), delivery(signed_head("public-counted")))

    assert line.startswith("HTTP/1.1 404")
    assert after_ops == before
    # The same count moves for a real delivery (counted as its answer goes out).
    wait_until(lambda: received(web) == before + 1, 5, "the delivery counted")


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/metrics", "/stats", "/readyz"])
def test_a_host_header_naming_the_ops_port_does_not_open_the_operator_endpoints(
    web: Processes, path: str
) -> None:
    host = f"127.0.0.1:{ops(web)}"
    raw = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    line, _, body = ask(public(web), raw)

    assert line.startswith("HTTP/1.1 404"), line
    assert code_of(body) == "not_found"


@pytest.mark.e2e
@pytest.mark.parametrize("header", ["SCRIPT_NAME", "PATH_INFO"])
@pytest.mark.parametrize("value", ["/x", "/webhooks", "/metrics", "/"])
def test_a_header_named_like_a_wsgi_path_key_changes_no_route(
    web: Processes, queue: redis.Redis, header: str, value: str
) -> None:
    """gunicorn takes ``SCRIPT_NAME`` and ``PATH_INFO`` from headers of a peer in
    ``forwarded_allow_ips`` (loopback by default; ``forwarder_headers``): through a proxy
    on the host, ``SCRIPT_NAME: /x`` was gunicorn's HTML 500 page and ``SCRIPT_NAME:
    /webhooks`` a 404 for a signed delivery. These tests speak from loopback."""
    event_id = f"msg_wsgi_{uuid.uuid4().hex}"
    line, headers, body = ask(public(web), delivery(signed_head(event_id), f"{header}: {value}"))
    assert line.startswith("HTTP/1.1 202"), (line, body)
    assert json.loads(body)["event_id"] == event_id
    assert "x-request-id" in headers

    raw = f"GET /healthz HTTP/1.1\r\nHost: h\r\n{header}: {value}\r\nConnection: close\r\n\r\n"
    line, _, body = ask(ops(web), raw.encode())
    assert line.startswith("HTTP/1.1 200"), (line, body)
    assert b"# TYPE" not in body  # the health answer, not the metrics page


@pytest.mark.e2e
def test_a_repeated_signature_on_a_chunked_delivery_is_refused_too(
    web: Processes, queue: redis.Redis
) -> None:
    # A chunked body takes gunicorn's parser (a thread), not the loop's plain path.
    head = signed_head("repeated-chunked") + "webhook-signature: v1,AAAA\r\n"
    raw = (
        head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    line, _, body = ask(public(web), raw)

    assert line.startswith("HTTP/1.1 400"), (line, body)
    assert code_of(body) == "repeated_header"
    assert total_queued(queue) == 0


@pytest.fixture(scope="module", params=list(WORKERS))
def unix_ops_web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server
) -> Iterator[tuple[Processes, str]]:  # type: ignore[no-untyped-def]
    """The public listener on TCP, the ops listener on a unix socket."""
    tmp = tmp_path_factory.mktemp("edge-unix")
    path = str(tmp / "ops.sock")
    with receiver(tmp, redis_server.url, request.param, HOOKFLEET_OPS_BIND=f"unix:{path}") as web:
        yield web, path


def ask_unix(path: str, raw: bytes) -> tuple[str, bytes]:
    """Send ``raw`` on a new connection to the unix socket ``path`` (``Connection:
    close``); the status line and the body."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(path)
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1"), body


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/healthz"])
def test_an_ops_listener_on_a_unix_socket_serves_the_operator_endpoints(
    unix_ops_web: tuple[Processes, str], path: str
) -> None:
    web, ops_socket = unix_ops_web
    raw = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()

    line, _ = ask_unix(ops_socket, raw)
    public_line, _, _ = ask(public(web), raw)

    assert line.startswith("HTTP/1.1 200"), line
    assert public_line.startswith("HTTP/1.1 200" if path == "/healthz" else "HTTP/1.1 404")


@pytest.mark.e2e
def test_a_webhook_posted_to_an_ops_listener_on_a_unix_socket_is_a_404(
    unix_ops_web: tuple[Processes, str], queue: redis.Redis
) -> None:
    web, ops_socket = unix_ops_web
    line, body = ask_unix(ops_socket, delivery(signed_head("unix-ops")))
    public_line, _, _ = ask(public(web), delivery(signed_head("unix-public")))

    assert line.startswith("HTTP/1.1 404"), line
    assert code_of(body) == "not_found"
    assert public_line.startswith("HTTP/1.1 202"), public_line
    assert total_queued(queue) == 1

"""Framing errors are the client's fault: raw sockets against a real gunicorn.

Every way a request's framing can be wrong — a bad chunk size line, a chunk without its
CRLF, a client that hangs up mid-chunk or before its Content-Length, a transfer or
content coding we do not decode, conflicting or malformed length headers — gets a 4xx
with the JSON error shape (or, for a client already gone, a closed connection), a line
below ERROR, an ``outcome`` other than ``error`` and nothing queued.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from tests.helpers import standard_head, total_queued
from tests.processes import Processes, request, standard_receiver
from tests.servers import wait_until

BODY = b'{"type":"invoice.paid","data":{"id":"in_1"}}'


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Iterator[Processes]:  # type: ignore[no-untyped-def]
    with standard_receiver(tmp_path_factory.mktemp("framing"), redis_server.url) as processes:
        yield processes


def exchange(web: Processes, raw: bytes, *, hang_up: bool = True) -> bytes:
    """Send ``raw``, close our sending side (a client that stops mid-body), read all."""
    port = int(web.env["PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if not hang_up and b"\r\n\r\n" in answer and _complete(answer):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    return match is not None and len(body) >= int(match.group(1))


def received(metrics: str, provider: str, outcome: str) -> float:
    """``hookfleet_webhooks_received_total`` for one provider and outcome (0 if absent)."""
    for labels, value in re.findall(r"hookfleet_webhooks_received_total\{([^}]*)\} (\S+)", metrics):
        if f'provider="{provider}"' in labels and f'outcome="{outcome}"' in labels:
            return float(value)
    return 0.0


def parsed(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def chunked(webhook_id: str, chunks: bytes, extra_headers: str = "") -> bytes:
    return (
        standard_head(webhook_id, BODY) + "Transfer-Encoding: chunked\r\n" + extra_headers + "\r\n"
    ).encode() + chunks


# (name, raw request, expected status, expected code); all signed correctly for BODY.
REFUSED = [
    (
        "chunk size not hex",
        chunked("f1", b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
        400,
        "malformed_body",
    ),
    ("chunk size negative", chunked("f2", b"-5\r\nhello\r\n0\r\n\r\n"), 400, "malformed_body"),
    ("chunk size empty", chunked("f3", b"\r\nhello\r\n0\r\n\r\n"), 400, "malformed_body"),
    (
        "chunk without its CRLF",
        chunked("f4", b"%x\r\n" % len(BODY) + BODY + b"XX0\r\n\r\n"),
        400,
        "malformed_body",
    ),
    (
        "bad chunk extension",
        chunked("f5", b"%x;=\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"),
        400,
        "malformed_body",
    ),
    (
        "client hangs up mid-chunk",
        chunked("f6", b"%x\r\n" % (len(BODY) + 100) + BODY),
        400,
        "incomplete_body",
    ),
    (
        "client hangs up before the last chunk",
        chunked("f7", b"%x\r\n" % len(BODY) + BODY + b"\r\n"),
        400,
        "incomplete_body",
    ),
    (
        "last chunk without its final CRLF",
        chunked("f8", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n"),
        400,
        "malformed_body",
    ),
    (
        "Content-Length larger than what was sent",
        (standard_head("f9", BODY) + f"Content-Length: {len(BODY) + 50}\r\n\r\n").encode() + BODY,
        400,
        "incomplete_body",
    ),
    (
        "Transfer-Encoding gzip, chunked",
        chunked(
            "f10", b"%x\r\n" % len(gzip.compress(BODY)) + gzip.compress(BODY) + b"\r\n0\r\n\r\n"
        ).replace(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked"),
        415,
        "unsupported_transfer_encoding",
    ),
    (
        "Transfer-Encoding br, chunked",
        chunked("f11", b"0\r\n\r\n").replace(
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: br, chunked"
        ),
        415,
        "unsupported_transfer_encoding",
    ),
    (
        # RFC 9112 has no "identity" transfer coding (RFC 7230 section 8.4 removed it).
        "Transfer-Encoding identity, chunked",
        chunked("f11i", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n").replace(
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity, chunked"
        ),
        415,
        "unsupported_transfer_encoding",
    ),
    (
        "Transfer-Encoding gzip without chunked",
        (standard_head("f12", BODY) + "Transfer-Encoding: gzip\r\n\r\n").encode()
        + gzip.compress(BODY),
        400,
        "malformed_request",
    ),
    (
        "Content-Length and Transfer-Encoding together",
        chunked("f13", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n", "Content-Length: 5\r\n"),
        400,
        "malformed_request",
    ),
    (
        "trailer line ending in a bare LF",
        chunked("f15", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\nX-Trailer: a\n\r\n"),
        400,
        "malformed_body",
    ),
    (
        "two Content-Length headers",
        (standard_head("f16", BODY) + f"Content-Length: {len(BODY)}\r\n" * 2 + "\r\n").encode()
        + BODY,
        400,
        "malformed_request",
    ),
    (
        "chunked in HTTP/1.0",
        chunked("f17", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n").replace(
            b"HTTP/1.1", b"HTTP/1.0", 1
        ),
        400,
        "malformed_request",
    ),
    (
        "Content-Length not a number",
        (standard_head("f14", BODY) + "Content-Length: 4x\r\n\r\n").encode() + BODY,
        400,
        "malformed_request",
    ),
]

BEFORE_THE_APP = {
    "two Content-Length headers",
    "chunked in HTTP/1.0",
    "Transfer-Encoding br, chunked",
    "Transfer-Encoding gzip without chunked",
    "Content-Length and Transfer-Encoding together",
    "Content-Length not a number",
}
CONTENT_CODINGS = ["gzip", "br", "deflate", "x-unknown", "identity, gzip"]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_broken_framing_is_a_json_4xx_and_nothing_is_queued(
    web: Processes, redis_client: redis.Redis, raw: bytes, status: int, code: str
) -> None:
    answer = exchange(web, raw)

    assert parsed(answer) == (status, {"code": code, "message": parsed(answer)[1]["message"]})
    assert total_queued(redis_client) == 0


@pytest.mark.parametrize("coding", CONTENT_CODINGS)
def test_compressed_body_is_415_never_401(
    web: Processes, redis_client: redis.Redis, coding: str
) -> None:
    # Signed over the uncompressed body, as a sender signs: still refused, as 415.
    body = gzip.compress(BODY)
    raw = (
        standard_head(f"ce-{coding}", BODY) + f"Content-Encoding: {coding}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    status, error = parsed(exchange(web, raw, hang_up=False))

    assert (status, error["code"]) == (415, "unsupported_content_encoding")
    assert total_queued(redis_client) == 0


def test_a_client_gone_mid_body_costs_a_closed_connection_only(
    web: Processes, redis_client: redis.Redis
) -> None:
    raw = (standard_head("gone", BODY) + f"Content-Length: {len(BODY) + 10}\r\n\r\n").encode()
    port = int(web.env["PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw + BODY[:10])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # SO_LINGER 0: the close is a reset, like a sender whose process died.
    time.sleep(0.5)
    assert total_queued(redis_client) == 0
    # The receiver is still serving.
    assert request(web.base_url, "GET", "/healthz")[0] == 200


def test_framing_errors_log_no_error_and_count_no_error_outcome(
    web: Processes, redis_client: redis.Redis
) -> None:
    for _, raw, _, _ in REFUSED:
        exchange(web, raw)
    test_a_client_gone_mid_body_costs_a_closed_connection_only(web, redis_client)

    def logged() -> bool:
        return "incomplete_body" in web.log("web")

    wait_until(logged, 10, "the refusals in the log")
    lines = [json.loads(line) for line in web.log("web").splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") in ("ERROR", "CRITICAL")]
    assert "Traceback" not in web.log("web")
    metrics = request(web.ops_url, "GET", "/metrics")[2]
    assert received(metrics, "standard", "error") == 0
    # gunicorn answers those it refuses before the application itself (uncounted).
    assert received(metrics, "standard", "bad_request") >= len(REFUSED) - len(BEFORE_THE_APP)
    assert total_queued(redis_client) == 0


def test_a_well_framed_chunked_delivery_is_still_accepted(
    web: Processes, redis_client: redis.Redis
) -> None:
    raw = chunked("ok-1", b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")

    answer = exchange(web, raw, hang_up=False)

    assert answer.startswith(b"HTTP/1.1 202")
    assert total_queued(redis_client) == 1


@pytest.mark.parametrize(
    "chunks",
    [
        b"200000\r\n",  # 2 MiB announced to a 1 MiB provider, no byte of it sent
        b"ffffffffffffffff\r\n",
        b"f" * 5000 + b"\r\n",  # a number Python will not print (4,300-digit limit)
        b"%x\r\n" % len(BODY) + BODY + b"\r\n100000\r\n",  # the second chunk passes the limit
    ],
    ids=["2 MiB", "2^64-1", "5,000 hex digits", "second chunk over"],
)
def test_a_chunk_announcing_more_than_the_limit_is_413_at_once_and_closes(
    web: Processes, redis_client: redis.Redis, chunks: bytes
) -> None:
    # The client keeps its side open and sends nothing more: the size line alone decides.
    started = time.monotonic()
    answer = exchange(web, chunked("big-chunk", chunks), hang_up=False)

    assert time.monotonic() - started < 10
    assert parsed(answer)[0] == 413
    assert parsed(answer)[1]["code"] == "body_too_large"
    assert b"connection: close" in answer.lower()
    assert total_queued(redis_client) == 0


def test_a_malformed_chunked_body_is_answered_with_connection_close(
    web: Processes, redis_client: redis.Redis
) -> None:
    raw = chunked("bad-crlf", b"%x\r\n" % len(BODY) + BODY + b"XX0\r\n\r\n")

    answer = exchange(web, raw, hang_up=False)

    assert parsed(answer)[1]["code"] == "malformed_body"
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head
    assert b"keep-alive" not in head


@pytest.mark.parametrize("path", ["/webhooks//standard", "/webhooks///stripe"])
def test_a_doubled_slash_is_a_json_404_not_a_redirect(web: Processes, path: str) -> None:
    status, headers, body = request(web.base_url, "POST", path, {"type": "x"})

    assert status == 404
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "not_found"


def raw_head(webhook_id: str, *lines: str, version: str = "1.1") -> bytes:
    head = standard_head(webhook_id, BODY).replace("HTTP/1.1", f"HTTP/{version}", 1)
    return (head + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


# Framing gunicorn refuses, sent by a client that keeps its side open and sends no more
# (the body it announces never comes): each is answered at once, not after the 10 s
# arrival deadline with a 408.
REFUSED_AT_ONCE = [
    (
        "CL.TE smuggling probe (a body that is not chunked)",
        raw_head("a1", f"Content-Length: {len(BODY)}", "Transfer-Encoding: chunked") + BODY,
        400,
        "malformed_request",
    ),
    (
        "TE.CL (Transfer-Encoding first)",
        raw_head("a2", "Transfer-Encoding: chunked", "Content-Length: 4") + b"5c\r\n",
        400,
        "malformed_request",
    ),
    (
        "Transfer-Encoding gzip alone",
        raw_head("a3", "Transfer-Encoding: gzip"),
        400,
        "malformed_request",
    ),
    (
        "Transfer-Encoding br alone",
        raw_head("a4", "Transfer-Encoding: br"),
        415,
        "unsupported_transfer_encoding",
    ),
    (
        "Transfer-Encoding identity alone",
        raw_head("a5", "Transfer-Encoding: identity") + BODY,
        400,
        "malformed_request",
    ),
    (
        "Transfer-Encoding gzip, chunked, no body yet",
        raw_head("a6", "Transfer-Encoding: gzip, chunked"),
        415,
        "unsupported_transfer_encoding",
    ),
    (
        "Transfer-Encoding chunked twice",
        raw_head("a7", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + b"5\r\n",
        400,
        "malformed_request",
    ),
    (
        "HTTP/1.0 with chunked and Content-Length",
        raw_head("a8", "Transfer-Encoding: chunked", "Content-Length: 5", version="1.0"),
        400,
        "malformed_request",
    ),
    (
        "bare LF line endings in the head",
        raw_head("a9", f"Content-Length: {len(BODY) + 5}").replace(b"\r\n", b"\n") + BODY,
        400,
        "malformed_request",
    ),
    (
        "a bare LF ending one header line",
        raw_head("a10", f"Content-Length: {len(BODY) + 5}").replace(
            b"hookfleet\r\n", b"hookfleet\n"
        ),
        400,
        "malformed_request",
    ),
    (
        "a bare LF ending a chunk-size line",
        raw_head("a11", "Transfer-Encoding: chunked") + b"%x\n" % (len(BODY) + 5) + BODY,
        400,
        "malformed_body",
    ),
    (
        "a space before the colon of Content-Length",
        raw_head("a12", f"Content-Length : {len(BODY) + 5}") + BODY,
        400,
        "malformed_request",
    ),
    (
        "a Content-Length with a sign",
        raw_head("a13", f"Content-Length: +{len(BODY) + 5}") + BODY,
        400,
        "malformed_request",
    ),
    (
        "a folded header line",
        raw_head("a14", "X-Note: a", " folded", f"Content-Length: {len(BODY) + 5}") + BODY,
        400,
        "malformed_request",
    ),
    (
        "a header name that is not a token",
        raw_head("a15", "X(Note): a", f"Content-Length: {len(BODY) + 5}") + BODY,
        400,
        "malformed_request",
    ),
    (
        "a request line over gunicorn's limit",
        raw_head("a17", f"Content-Length: {len(BODY) + 5}").replace(
            b"/webhooks/standard", b"/webhooks/standard?" + b"q" * 5000, 1
        ),
        414,
        "request_line_too_long",
    ),
    (
        "more header fields than gunicorn's limit",
        raw_head("a18", *(f"X-{n}: a" for n in range(120)), f"Content-Length: {len(BODY) + 5}"),
        431,
        "headers_too_large",
    ),
    (
        "an Expect other than 100-continue",
        raw_head("a16", "Expect: 200-ok", f"Content-Length: {len(BODY)}"),
        417,
        "expectation_failed",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [case[1:] for case in REFUSED_AT_ONCE],
    ids=[case[0] for case in REFUSED_AT_ONCE],
)
def test_framing_gunicorn_refuses_is_answered_at_once_with_a_request_id(
    web: Processes, redis_client: redis.Redis, raw: bytes, status: int, code: str
) -> None:
    started = time.monotonic()
    answer = exchange(web, raw, hang_up=False)
    elapsed = time.monotonic() - started

    assert parsed(answer) == (status, {"code": code, "message": parsed(answer)[1]["message"]})
    assert elapsed < 5, elapsed  # not the 10 s arrival deadline's 408
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", head + b"\r\n"), head
    assert b"connection: close" in head
    assert total_queued(redis_client) == 0


def answer_and_close(web: Processes, raw: bytes, *, hang_up: bool) -> tuple[bytes, bool]:
    """The answer to ``raw``, and whether the server then closed the connection."""
    port = int(web.env["PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
        sock.sendall(raw)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while not (b"\r\n\r\n" in answer and _complete(answer)):
            chunk = sock.recv(65536)
            if not chunk:
                return answer, True
            answer += chunk
        try:
            return answer, sock.recv(65536) == b""
        except TimeoutError:
            return answer, False


@pytest.mark.parametrize(
    ("raw", "hang_up", "status"),
    [
        (raw_head("c1", "Content-Length: 2000000"), False, 413),
        (raw_head("c2", "Content-Length: 2000000") + BODY, False, 413),
        (raw_head("c3", f"Content-Length: {len(BODY) + 50}") + BODY, True, 400),
        (raw_head("c4", "Transfer-Encoding: chunked") + b"5\r\nab", True, 400),
    ],
    ids=["413 by Content-Length", "413 with some body", "incomplete body", "incomplete chunks"],
)
def test_an_answer_after_which_the_connection_closes_says_connection_close(
    web: Processes, raw: bytes, hang_up: bool, status: int
) -> None:
    answer, closed = answer_and_close(web, raw, hang_up=hang_up)

    assert parsed(answer)[0] == status
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in head and b"keep-alive" not in head, head
    assert closed


def test_a_client_reusing_its_connection_after_a_413_is_served(web: Processes) -> None:
    # http.client keeps a connection whose answer said keep-alive; after "close" it
    # opens a new one. A 413 that said keep-alive and then closed failed the next request.
    connection = http.client.HTTPConnection("127.0.0.1", int(web.env["PORT"]), timeout=15)
    try:
        connection.request(
            "POST",
            "/webhooks/standard",
            body=b"x" * (1024 * 1024 + 1),
            headers={"Content-Type": "application/json"},
        )
        first = connection.getresponse()
        first.read()
        connection.request("GET", "/healthz")
        second = connection.getresponse()
        second.read()
    finally:
        connection.close()

    assert (first.status, second.status) == (413, 200)

"""The receiver edge's decisions, without a server: which listener serves a path,
which repeated headers are refused, and how a request line's HTTP version is read and
answered (tests/e2e/test_edge_matrix.py runs the same on a real gunicorn)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import errors
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from ingest.errors import ApiError, ErrorCode
from ingest.gunicorn_worker import RepeatedHeader, json_error_answer
from ingest.http_version import answer_as_http11, unsupported_version
from ingest.listeners import LISTENER_PORT, listener_name, not_served_here, ops_only_port
from ingest.request import REPEATED_HEADERS, refuse_repeated, repeated_names
from models.settings import Settings

SEPARATE = Settings.from_env({"PORT": "8000", "HOOKFLEET_OPS_BIND": "127.0.0.1:9807"})
SHARED = Settings.from_env({"PORT": "8000", "HOOKFLEET_OPS_BIND": "0.0.0.0:8000"})


@pytest.mark.parametrize(
    ("port", "path", "refused"),
    [
        ("8000", "/webhooks/stripe", False),
        ("8000", "/healthz", False),
        ("8000", "/metrics", True),
        ("8000", "/readyz", True),
        ("8000", "/stats", True),
        ("8000", "/metrics/", False),  # no route anyway: Flask's 404
        ("9807", "/metrics", False),
        ("9807", "/readyz", False),
        ("9807", "/stats", False),
        ("9807", "/healthz", False),
        ("9807", "/webhooks/stripe", True),
        ("9807", "//metrics", True),
        ("9807", "*", True),
        ("9807", "/", True),
    ],
)
def test_each_listener_serves_only_its_paths(port: str, path: str, refused: bool) -> None:
    environ = {"SERVER_PORT": port, "PATH_INFO": path}

    assert not_served_here(environ, SEPARATE) is refused


@pytest.mark.parametrize("path", ["/webhooks/stripe", "/metrics", "/stats", "/healthz"])
def test_one_listener_for_both_serves_every_path(path: str) -> None:
    assert ops_only_port(SHARED) is None
    assert not not_served_here({"SERVER_PORT": "8000", "PATH_INFO": path}, SHARED)


def test_a_unix_socket_public_listener_never_takes_the_ops_port_for_its_own() -> None:
    settings = Settings.from_env({"HOOKFLEET_BIND": "unix:/run/hf.sock"})

    assert ops_only_port(settings) == settings.ops_port


def test_a_unix_socket_listener_is_public_whatever_port_its_host_header_names() -> None:
    # gunicorn takes a unix socket's SERVER_PORT from the Host header.
    spoofed = {"SERVER_PORT": "9807", "PATH_INFO": "/metrics"}
    with socket.socket(socket.AF_UNIX) as unix:
        assert not_served_here({**spoofed, LISTENER_PORT: ""}, SEPARATE)  # the shipped worker
        assert not_served_here({**spoofed, "gunicorn.socket": unix}, SEPARATE)  # gthread
    assert not not_served_here({**spoofed, LISTENER_PORT: "9807"}, SEPARATE)
    assert (
        not_served_here(
            {"SERVER_PORT": "9807", LISTENER_PORT: "", "PATH_INFO": "/webhooks/stripe"}, SEPARATE
        )
        is False
    )


@pytest.mark.parametrize(
    ("fields", "repeated"),
    [
        ([("WEBHOOK-ID", "a"), ("WEBHOOK-ID", "b")], {"webhook-id"}),
        ([("webhook-id", "a"), ("Webhook-Id", "a")], {"webhook-id"}),  # equal values too
        ([("STRIPE-SIGNATURE", "t=1,v1=a"), ("STRIPE-SIGNATURE", "v1=b")], {"stripe-signature"}),
        ([("X-RETELL-SIGNATURE", "v=1,d=a")] * 2, {"x-retell-signature"}),
        ([("X-CAL-SIGNATURE-256", "a")] * 3, {"x-cal-signature-256"}),
        ([("WEBHOOK-TIMESTAMP", "1")] * 2 + [("WEBHOOK-SIGNATURE", "v1,a")] * 2, None),
        # Several signatures in ONE header are the schemes' own way: not repeated.
        ([("WEBHOOK-SIGNATURE", "v1,a v1,b"), ("STRIPE-SIGNATURE", "t=1,v1=a,v1=b")], set()),
        # A list header sent on two lines is RFC 9110's to join: not ours to refuse.
        (
            [("ACCEPT", "a"), ("ACCEPT", "b"), ("X-FORWARDED-FOR", "1"), ("X-FORWARDED-FOR", "2")],
            set(),
        ),
    ],
)
def test_a_header_read_once_is_repeated_when_it_came_on_two_lines(
    fields: list[tuple[str, str]], repeated: set[str] | None
) -> None:
    expected = {"webhook-timestamp", "webhook-signature"} if repeated is None else repeated

    assert repeated_names(fields) == expected


def test_a_repeated_header_marked_by_the_worker_is_a_400_naming_it() -> None:
    refuse_repeated({})  # nothing marked: nothing refused
    with pytest.raises(ApiError) as refused:
        refuse_repeated({REPEATED_HEADERS: frozenset({"webhook-id"})})

    assert refused.value.code is ErrorCode.REPEATED_HEADER and refused.value.status == 400
    assert "webhook-id" in refused.value.message


def parse(raw: bytes) -> Any:
    return Request(Config(), IterUnreader([raw]), ("127.0.0.1", 1), 1)


class _Sock:
    def __init__(self) -> None:
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data


@pytest.mark.parametrize(
    ("version", "read_as", "connection"),
    [
        ("HTTP/1.0", (1, 0), "close"),
        ("HTTP/1.1", (1, 1), "keep-alive"),
        ("HTTP/1.2", (1, 1), "keep-alive"),
        ("HTTP/1.9", (1, 1), "keep-alive"),
    ],
)
def test_an_http_1_request_is_answered_as_http_1_1(
    version: str, read_as: tuple[int, int], connection: str
) -> None:
    request = parse(f"GET /healthz {version}\r\nHost: x\r\n\r\n".encode())
    sock = _Sock()
    response, environ = answer_as_http11(
        request, sock, ("127.0.0.1", 1), ("127.0.0.1", 80), Config()
    )
    response.start_response("200 OK", [("Content-Length", "0")])
    response.send_headers()

    assert request.version == read_as
    assert environ["SERVER_PROTOCOL"] == "HTTP/{}.{}".format(*read_as)
    assert sock.sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Connection: {connection}\r\n".encode() in sock.sent


@pytest.mark.parametrize(
    ("request_line", "unsupported"),
    [
        (b"GET / HTTP/2.0", "HTTP/2.0"),
        (b"GET / HTTP/3.0", "HTTP/3.0"),
        (b"GET / HTTP/0.9", "HTTP/0.9"),
        (b"PRI * HTTP/2.0", "HTTP/2.0"),
        (b"GET / HTTP/1.10", None),
        (b"GET / http/1.1", None),
        (b"GET / HTTP/01.1", None),
        (b"GET / HTTP/1", None),
        (b"GET /", None),
    ],
)
def test_a_version_of_another_major_is_505_and_a_malformed_one_400(
    request_line: bytes, unsupported: str | None
) -> None:
    with pytest.raises(errors.ParseException) as refused:
        parse(request_line + b"\r\nHost: x\r\n\r\n")
    answer = json_error_answer(refused.value)

    assert unsupported_version(refused.value) == unsupported
    assert answer is not None
    status, _, raw = answer
    code = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["code"]
    assert raw.startswith(b"HTTP/1.1 ")
    if unsupported:
        assert (status, code) == (505, "http_version_not_supported")
        assert unsupported.encode() in raw
    else:
        assert (status, code) == (400, "malformed_request")


def test_the_gthread_workers_repeated_header_refusal_is_a_json_400() -> None:
    answer = json_error_answer(RepeatedHeader(frozenset({"webhook-id"})))

    assert answer is not None
    status, _, raw = answer
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert status == 400 and body["error"]["code"] == "repeated_header"
    assert b"Connection: close" in raw


@pytest.mark.parametrize(
    ("address", "name"),
    [
        (("127.0.0.1", 9807), "9807"),
        (("::1", 8000, 0, 0), "8000"),
        ("/run/hf/ops.sock", "unix:/run/hf/ops.sock"),
        (b"/run/hf/ops.sock", "unix:/run/hf/ops.sock"),
    ],
)
def test_a_listener_is_named_by_its_port_or_its_unix_path(address: object, name: str) -> None:
    assert listener_name(address) == name


def test_two_unix_socket_listeners_are_told_apart_by_their_paths() -> None:
    settings = Settings.from_env(
        {
            "HOOKFLEET_BIND": "unix:/run/hf/public.sock",
            "HOOKFLEET_OPS_BIND": "unix:/run/hf/ops.sock",
        }
    )
    on_ops = {LISTENER_PORT: "unix:/run/hf/ops.sock", "SERVER_PORT": "8000"}
    on_public = {LISTENER_PORT: "unix:/run/hf/public.sock", "SERVER_PORT": "9807"}

    assert ops_only_port(settings) == "unix:/run/hf/ops.sock"
    assert not not_served_here({**on_ops, "PATH_INFO": "/metrics"}, settings)
    assert not_served_here({**on_ops, "PATH_INFO": "/webhooks/stripe"}, settings)
    assert not_served_here({**on_public, "PATH_INFO": "/metrics"}, settings)
    assert not not_served_here({**on_public, "PATH_INFO": "/webhooks/stripe"}, settings)


@pytest.mark.parametrize(
    ("error", "status", "says"),
    [
        (errors.UnsupportedTransferCoding(""), 415, "transfer coding is not supported"),
        (errors.LimitRequestHeaders("too many"), 431, "headers are too large"),
        (errors.InvalidHeader("X(y)"), 400, "malformed"),
    ],
)
def test_a_refusal_before_the_app_says_what_it_refused(
    error: Exception, status: int, says: str
) -> None:
    answer = json_error_answer(error)

    assert answer is not None
    assert answer[0] == status
    body = json.loads(answer[2].partition(b"\r\n\r\n")[2])
    assert says in body["error"]["message"]

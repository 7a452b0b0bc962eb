"""Which heads the receiver's event loop parses itself (ingest/aio_worker.py
``parse_plain``, with httptools/llhttp) and which go to gunicorn's own parser: every
kind gunicorn refuses must go to gunicorn, whatever llhttp makes of it, so the answer
is gunicorn's (a JSON 4xx, ingest/gunicorn_worker.py ``json_error_answer``)."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from ingest.aio_worker import MORE, parse_plain
from ingest.gunicorn_worker import ARRIVAL_BUFFER_BYTES

CONFIG = Config()
LIMITS = (
    CONFIG.limit_request_line,
    CONFIG.limit_request_fields,
    CONFIG.limit_request_field_size,
)
LINE = b"POST /webhooks/standard HTTP/1.1\r\n"
BODY = b"Content-Length: 2\r\n\r\n{}"

# (kind, raw request); ones marked (llhttp) are read differently by llhttp.
KINDS = [
    ("plain", LINE + b"Host: x\r\n" + BODY),
    ("a repeated Host (llhttp accepts)", LINE + b"Host: x\r\nHost: y\r\n" + BODY),
    (
        "a repeated Content-Type (llhttp accepts)",
        LINE + b"Content-Type: a\r\nContent-Type: b\r\n" + BODY,
    ),
    ("two equal Content-Lengths", LINE + b"Content-Length: 2\r\n" + BODY),
    ("a Content-Length list", LINE + b"Content-Length: 2, 2\r\n\r\n{}"),
    ("a signed Content-Length", LINE + b"Content-Length: +2\r\n\r\n{}"),
    ("a space before the colon", LINE + b"Host : x\r\n" + BODY),
    ("obsolete folding", LINE + b"X-A: a\r\n b\r\n" + BODY),
    ("an underscore in a name (gunicorn drops it)", LINE + b"X_A: a\r\n" + BODY),
    ("DEL in a value", LINE + b"X-A: a\x7fb\r\n" + BODY),
    ("NUL in a value", LINE + b"X-A: a\x00b\r\n" + BODY),
    ("a bare CR in a value", LINE + b"X-A: a\rb\r\n" + BODY),
    ("a Latin-1 value", LINE + b"X-A: caf\xe9\r\n" + BODY),
    ("an unknown method (llhttp refuses)", b"PURGE /x HTTP/1.1\r\n" + BODY),
    ("a lower-case method", b"post /x HTTP/1.1\r\n" + BODY),
    ("a 21-letter method", b"ABCDEFGHIJKLMNOPQRSTU /x HTTP/1.1\r\n\r\n"),
    ("HTTP/1.2 (llhttp refuses)", b"GET /x HTTP/1.2\r\n\r\n"),
    ("HTTP/2.0 (llhttp accepts)", b"GET /x HTTP/2.0\r\n\r\n"),
    ("the absolute form", b"GET http://h/x HTTP/1.1\r\n\r\n"),
    ("* for GET (llhttp accepts)", b"GET * HTTP/1.1\r\n\r\n"),
    ("a fragment", b"GET /x#f HTTP/1.1\r\n\r\n"),
    ("a tab in the target", b"GET /x\ty HTTP/1.1\r\n\r\n"),
    ("a doubled space (llhttp accepts)", b"GET  /x HTTP/1.1\r\n\r\n"),
    ("an empty line first", b"\r\nGET /x HTTP/1.1\r\n\r\n"),
    ("bare LF line ends", b"GET /x HTTP/1.1\nHost: x\n\n"),
    ("an empty header name", LINE + b": a\r\n" + BODY),
    ("a 4,094-byte request line", b"GET /" + b"a" * 4080 + b" HTTP/1.1\r\n\r\n"),
    ("a 4,095-byte request line (llhttp accepts)", b"GET /" + b"a" * 4081 + b" HTTP/1.1\r\n\r\n"),
    ("an 8,190-byte field", LINE + b"X-A: " + b"a" * 8183 + b"\r\n\r\n"),
    ("an 8,191-byte field (llhttp accepts)", LINE + b"X-A: " + b"a" * 8184 + b"\r\n\r\n"),
    ("100 fields", LINE + b"".join(b"X-%d: a\r\n" % n for n in range(100)) + b"\r\n"),
    (
        "101 fields (llhttp accepts)",
        LINE + b"".join(b"X-%d: a\r\n" % n for n in range(101)) + b"\r\n",
    ),
    ("an Expect other than 100-continue (llhttp accepts)", LINE + b"Expect: foo\r\n" + BODY),
    ("an upgrade", b"GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
    ("Content-Length and Transfer-Encoding", LINE + b"Transfer-Encoding: chunked\r\n" + BODY),
    ("HTTP/1.0 kept alive", b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
]


def gunicorn_reads(raw: bytes) -> bool:
    try:
        next(RequestParser(CONFIG, iter([raw]), ("127.0.0.1", 1)))
    except Exception:  # noqa: BLE001 (any refusal)
        return False
    return True


@pytest.mark.parametrize("raw", [raw for _, raw in KINDS], ids=[kind for kind, _ in KINDS])
def test_a_head_gunicorn_refuses_is_never_parsed_in_the_loop(raw: bytes) -> None:
    if not gunicorn_reads(raw):
        assert not isinstance(parse_plain(bytearray(raw), LIMITS), tuple)


def test_the_enumeration_holds_both_refused_and_plain_heads() -> None:
    plain = [kind for kind, raw in KINDS if isinstance(parse_plain(bytearray(raw), LIMITS), tuple)]
    refused = [kind for kind, raw in KINDS if not gunicorn_reads(raw)]

    assert "plain" in plain and "100 fields" in plain and "a 4,094-byte request line" in plain
    assert len(refused) >= 20


def test_a_plain_delivery_is_read_as_gunicorn_reads_it() -> None:
    raw = LINE + b"Host: x\r\nX-Request-ID: abc\r\n" + BODY + b"GET /next HTTP/1.1\r\n\r\n"
    parsed = parse_plain(bytearray(raw), LIMITS)
    assert isinstance(parsed, tuple)
    request, used = parsed
    ours = (request.method, request.url.decode(), request.version, request.fields)

    theirs = next(RequestParser(CONFIG, iter([raw]), ("127.0.0.1", 1)))

    assert request.body == b"{}" and raw[used:] == b"GET /next HTTP/1.1\r\n\r\n"
    assert ours == (theirs.method, theirs.uri, "1.1", theirs.headers)


def test_a_plain_head_waits_for_its_body_and_a_large_one_goes_to_gunicorn() -> None:
    assert parse_plain(bytearray(LINE + b"Content-Length: 5\r\n\r\nab"), LIMITS) is MORE
    assert parse_plain(bytearray(LINE + b"Host: x\r\n"), LIMITS) is MORE
    announced = LINE + b"Content-Length: %d\r\n\r\n" % (ARRIVAL_BUFFER_BYTES + 1)
    assert parse_plain(bytearray(announced), LIMITS) is None


@pytest.mark.parametrize(
    ("head", "kept_alive"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nConnection: Close\r\nHost: x\r\n\r\n", False),
        (b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n", False),
        (b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (LINE + b"Connection: close\r\n" + BODY, False),
        (LINE + b"Content-Length: 0\r\nConnection: close\r\n\r\n", False),
    ],
)
def test_a_request_that_asks_to_close_is_not_kept_alive(head: bytes, kept_alive: bool) -> None:
    """A bodiless HTTP/1.1 request with "Connection: close" was kept alive (llhttp resets
    its flags once such a message is complete), its connection open for 5 s more."""
    parsed = parse_plain(bytearray(head), LIMITS)
    assert isinstance(parsed, tuple)
    assert parsed[0].keep_alive is kept_alive
    theirs = next(RequestParser(CONFIG, iter([head]), ("127.0.0.1", 1)))
    assert theirs.should_close() is not kept_alive

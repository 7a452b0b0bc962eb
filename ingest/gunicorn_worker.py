"""gunicorn's threaded worker: a request reaches a thread only once it has arrived, and
the requests gunicorn refuses itself are answered in Hookfleet's shape.

The shipped worker is now ingest/aio_worker.py (an event loop that serves deliveries
itself); it reuses this module's arrival rule (:func:`arrival`), its JSON
refusals (:func:`json_error_answer`) and the :class:`ConnectionBoard`.
:class:`JsonErrorWorker` stays selectable with gunicorn's ``--worker-class``.

**Arrival.** Stock ``gthread`` hands a connection to one of its few threads as soon as it
is accepted (or readable again), and that thread then blocks reading the request head
and body: 8 clients sending their headers slowly (a slowloris, a bad proxy) or going
silent hold all 8 threads, and real deliveries wait. Here the worker's event loop reads
each request itself, without blocking, into a per-connection buffer, and hands it to a
thread only when :func:`request_arrived` says it is whole (head and a ``Content-Length``
body, or chunks up to the last one), like a buffering proxy would. A body announced
larger than ``ARRIVAL_BUFFER_BYTES`` goes to a thread at once, so the receiver answers
413 before reading what it would refuse (ingest/framing.py). A request that has not
arrived within ``ARRIVAL_TIMEOUT_S`` is answered 408 and closed; a silent connection is
closed. Source: gunicorn ``workers/gthread.py`` (``accept``, ``enqueue_req``,
``on_client_socket_readable``, ``murder_pending``, gunicorn 27) and RFC 9112 sections
6 and 7.1 (message body length, chunked coding).

**Spread.** Kept-alive connections stay with the process that accepted them, and
which one accepts is a race: 16 connections of one sender all landed on one of two
workers in half of the starts (one GIL-bound process served everything, the other
idled). Each worker posts its open connections on a :class:`ConnectionBoard` shared by
the workers of one master, and stops accepting while it holds ``SPREAD_SLACK`` more
than a less loaded live worker that is accepting, so the kernel hands the next
connections to that one (never all of them at once: someone always accepts). This
worker does not post its pauses (``OUT``); the shipped one does (``PAUSED``), with the
board's bells (see :class:`ConnectionBoard`).

**Answers.**
gunicorn rejects some requests before the application sees them: a malformed request
line or header, a ``Content-Length`` that is not a number, ``Content-Length`` together
with ``Transfer-Encoding``, a ``Transfer-Encoding`` that does not end in ``chunked``
(RFC 9112 section 6.3) or names a coding it does not know (``br``). Stock gunicorn
answers those with an HTML page, and an unknown transfer coding with 501, which a
provider would retry as a server fault. Here each is a JSON error
``{"error": {"code", "message"}}`` with a 4xx status and a WARNING line (gunicorn's
own); errors that are not the client's stay gunicorn's (500, logged with traceback).
A request line in another major version of HTTP is 505 (ingest/http_version.py). This
worker reads HTTP/1.2-1.9 as HTTP/1.1 and refuses a repeated id or signature header
itself (:class:`RepeatedHeader`: the app sees the lines joined); it keeps gunicorn's
``HTTP/1.0`` status line for an HTTP/1.0 request (the shipped worker answers
``HTTP/1.1``; README *Running in production* lists what else this worker lacks).

Source: gunicorn ``workers/base.py`` ``Worker.handle_error`` and ``http/message.py``
``Request.set_body_reader`` (gunicorn 22+).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import selectors
import socket
import struct
import time
from collections.abc import Callable
from enum import Enum
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.workers.gthread import TConn, ThreadWorker

from ingest.errors import ErrorCode
from ingest.http_version import read_as_http11, unsupported_version
from ingest.request import repeated_names
from models.ids import uuid4_hex

# A request's head and body are read by the event loop up to this size; a larger body
# is read by the thread that serves it.
ARRIVAL_BUFFER_BYTES = 128 * 1024
# A request must arrive whole within this (from its connection or its first byte
# after a kept-alive wait); a provider sends a delivery in well under a second.
ARRIVAL_TIMEOUT_S = 10.0
_READ_BYTES = 64 * 1024
# After SIGTERM a worker's threads serve the requests they take within this (seconds);
# a later one is answered 503 ``shutting_down`` at once. An outsider's gthread workers
# (4 threads, 40 inbound calls/s, the database 1 s away) answered their queues until
# 7-12 s after SIGTERM, and the last calls' records no longer fit the window.
EXIT_SERVE_S = 2.0
# At stop, a connection on which nothing has arrived yet is closed after this (seconds),
# by both workers (the shipped one, ingest/aio_worker.py, too): a request sent just
# before SIGTERM, still in the kernel's buffer, is served, not reset. Each had dropped
# it at the first loop pass after SIGTERM (an outsider: 148 of 225 such calls
# unanswered on the fallback).
EXIT_IDLE_S = 1.0
# A worker accepts while it holds fewer than the least loaded live worker + this.
SPREAD_SLACK = 2
# A worker whose event loop has not posted for this long is not waited for (stuck or
# gone): the others accept without regard to it.
BOARD_STALE_S = 3.0
_RECHECK_S = 0.02
_WAITING = object()
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:(.*)$", re.MULTILINE | re.IGNORECASE)


class Arrival(Enum):
    """How far a request has come (:func:`arrival`)."""

    COMING = "coming"  # more to come: no thread sees it yet
    WHOLE = "whole"  # head and body all here
    # Not whole, but answerable without the rest: a framing gunicorn refuses, a body
    # announced over the limit (413 unread), a head over the buffer. The connection
    # closes after its answer: where the next request starts is unknown.
    EARLY = "early"
    # The head asks for "100 Continue" before the body (RFC 9110 section 10.1.1) and
    # announces an acceptable one: the event loop sends it and waits for the body.
    EXPECTS_CONTINUE = "expects_continue"
    # A line ended by a bare LF, in the head or in the chunked framing: gunicorn refuses
    # it (RFC 9112 section 2.2), but only once a CRLF (CRLF) that may never come shows
    # where the line ends; the loop answers it.
    BARE_LF = "bare_lf"
    BARE_LF_IN_BODY = "bare_lf_in_body"


_BARE_LF = re.compile(rb"(?<!\r)\n")
_HTTP_10 = re.compile(rb"\A[^\r\n]* HTTP/1\.0(?:\r\n|\Z)")
_EXPECT = re.compile(rb"^expect[ \t]*:(.*)$", re.MULTILINE | re.IGNORECASE)
_TRANSFER_CODINGS = re.compile(rb"^transfer-encoding[ \t]*:(.*)$", re.MULTILINE | re.IGNORECASE)


def arrival(data: bytes | bytearray, limit: int = ARRIVAL_BUFFER_BYTES) -> Arrival:
    """How far the request ``data`` (the bytes received so far on a connection) starts
    with has come; ``limit``: the largest body the request's provider takes (bytes).
    Whole: a head and its ``Content-Length`` body, or chunks up to the last one and its
    trailer section (RFC 9112 sections 6 and 7.1). One look at a whole buffer; a
    connection whose request arrives in pieces asks its :class:`ArrivalWalk`."""
    return ArrivalWalk().arrival(data, lambda _head: limit)


def request_arrived(data: bytes | bytearray, limit: int = ARRIVAL_BUFFER_BYTES) -> bool:
    """True when a thread may take the request ``data`` starts with (:func:`arrival`):
    whole, answerable at once, or waiting for the ``100 Continue`` gunicorn sends."""
    return arrival(data, limit) is not Arrival.COMING


def _buffer_limit(_head: bytes) -> int:
    """The gthread worker's body limit for the loop: its arrival buffer (a larger body
    goes to the thread, which answers 413 past the provider's limit)."""
    return ARRIVAL_BUFFER_BYTES


# A chunk-size line (with its extensions) longer than this is not one (gunicorn refuses it).
_SIZE_LINE_BYTES = 1024
_BARE_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")


class ArrivalWalk:
    """:func:`arrival` of one request whose bytes come in pieces, resumed where the last
    look stopped: the head's end is searched in the new bytes only, the head is judged
    once, and the chunk walk keeps the offset of the next chunk-size line and the bytes
    announced so far. Linear in the request's bytes however small its pieces and chunks
    (a walk from the start at every piece was quadratic: one connection posting a
    million one-byte chunks held a worker's event loop for minutes). ``data`` must be
    the same buffer, only ever appended to, from one call to the next."""

    __slots__ = (
        "_announced",
        "_expects",
        "_head_searched",
        "_http_10",
        "_judged",
        "_length",
        "_limit",
        "_next_line",
        "_scanned",
        "_trailers",
        "_trailers_scanned",
        "_verdict",
        "body",
        "head_end",
        "request_end",
        "unwalked",
    )

    def __init__(self) -> None:
        # Offset of the head's CRLF CRLF once found (-1 before), how far it has been
        # searched for, how far the head has been checked for a bare LF, and whether
        # the whole head has been judged.
        self.head_end = -1
        self._head_searched = 0
        self._scanned = 0
        self._judged = False
        # The head's verdict (EARLY or WHOLE) when it decides alone; else the framing:
        # a Content-Length (_length >= 0) or chunks (_length == -1).
        self._verdict: Arrival | None = None
        self._length = -1
        self._limit = 0
        self._expects = False
        self._http_10 = False
        # Chunks: offset (in data) of the next chunk-size line, bytes announced before it.
        self._next_line = 0
        self._announced = 0
        # The trailer section's start (after the last chunk; -1 before) and how far searched.
        self._trailers = -1
        self._trailers_scanned = 0
        # Chunks: their data so far while every size line is bare hex and (once whole)
        # the trailer section empty, else None; and where the request ends (-1 before).
        self.body: bytearray | None = bytearray()
        self.request_end = -1
        # True when the last look stopped at ``steps`` chunks with more come: COMING
        # then means "look again", not "wait for bytes".
        self.unwalked = False

    def arrival(
        self, data: bytes | bytearray, limit_of: Callable[[bytes], int], steps: int = 0
    ) -> Arrival:
        """How far ``data`` has come (see :func:`arrival`); ``limit_of(head)``: the
        request's body limit in bytes, asked once its head is whole. With ``steps``,
        walk at most that many chunks (then COMING and :attr:`unwalked`)."""
        self.unwalked = False
        if not self._judged:
            state = self._find_head(data, limit_of)
            if state is not None:
                return state
        if self._verdict is not None:
            return self._verdict
        body = self.head_end + 4
        if self._length >= 0:
            done = Arrival.WHOLE if len(data) - body >= self._length else Arrival.COMING
        else:
            done = self._walk_chunks(data, steps)
        if done is Arrival.COMING and self._expects and len(data) == body and not self._http_10:
            return Arrival.EXPECTS_CONTINUE
        return done

    def dechunked(self) -> bytes | None:
        """The data of a whole chunked request whose size lines were all bare hex and
        whose trailer section is empty (what gunicorn's ``ChunkedReader`` would read,
        at about a microsecond a chunk where it takes ten); None otherwise."""
        if self.request_end < 0 or self.body is None:
            return None
        return bytes(self.body)

    def find_head_end(self, data: bytes | bytearray) -> int:
        """Offset of the CRLF CRLF that ends the head in ``data``, -1 while it has not
        come; only the bytes not searched yet are."""
        if self.head_end < 0:
            end = data.find(b"\r\n\r\n", max(0, self._head_searched - 3))
            self._head_searched = len(data)
            self.head_end = end
        return self.head_end

    def _find_head(
        self, data: bytes | bytearray, limit_of: Callable[[bytes], int]
    ) -> Arrival | None:
        """Check the new bytes of the head for a bare LF; judge the head once it is
        whole. None when the body decides."""
        end = self.find_head_end(data)
        stop = len(data) if end < 0 else end
        if _BARE_LF.search(data, max(0, self._scanned - 1), stop):
            return Arrival.BARE_LF
        self._scanned = stop
        if end < 0:
            return Arrival.EARLY if len(data) >= ARRIVAL_BUFFER_BYTES else Arrival.COMING
        self._judged = True
        head = bytes(data[:end])
        self._judge_head(head, limit_of(bytes(data[: end + 4])))
        self._next_line = end + 4
        return None

    def _judge_head(self, head: bytes, limit: int) -> None:
        """What the head alone says of the request (RFC 9112 section 6.3)."""
        self._limit = limit
        expects = [value.strip().lower() for value in _EXPECT.findall(head)]
        self._expects = bool(expects)
        self._http_10 = bool(_HTTP_10.match(head))
        if expects and expects != [b"100-continue"]:
            self._verdict = Arrival.EARLY  # gunicorn answers 417
            return
        codings = _TRANSFER_CODINGS.findall(head)
        lengths = _CONTENT_LENGTH.findall(head)
        if codings:
            # gunicorn refuses these before the body (or the app's 415 does): CL and TE
            # together, chunked in HTTP/1.0, any coding but chunked alone.
            if lengths or self._http_10 or [c.strip().lower() for c in codings] != [b"chunked"]:
                self._verdict = Arrival.EARLY
            return  # chunks (_length stays -1)
        if not lengths:
            self._verdict = Arrival.WHOLE
            return
        try:
            (length,) = (int(value.strip()) for value in lengths)
        except ValueError:  # not a number, or several: gunicorn refuses it at once
            self._verdict = Arrival.EARLY
            return
        if length > limit:
            self._verdict = Arrival.EARLY  # 413 before the body
            return
        self._length = length

    def _walk_chunks(self, data: bytes | bytearray, steps: int) -> Arrival:
        """Walk the chunk-size lines (RFC 9112 section 7.1) not walked yet: whole at
        the last chunk and its trailer section; early when they announce more than
        the limit or are not chunks (gunicorn refuses them). A chunk counts once its
        data and CRLF have come."""
        if self._trailers >= 0:
            return self._walk_trailers(data)
        position, limit, announced = self._next_line, self._limit, self._announced
        bare_size = _BARE_SIZE_LINE.match
        while True:
            if steps:
                steps -= 1
                if not steps:
                    self.unwalked = True
                    return Arrival.COMING
            bare = bare_size(data, position)
            if bare is not None:  # the usual line: hex digits, CRLF (one regex step)
                eol, size = bare.end() - 2, int(bare[1], 16)
            else:
                # Searched no further than a size line may be long: a longer one goes to
                # gunicorn's parser at once (EARLY), which refuses it or reads it itself.
                stop = position + _SIZE_LINE_BYTES + 2
                eol = data.find(b"\r\n", position, stop)
                if data.find(b"\n", position, stop if eol < 0 else eol) >= 0:
                    return Arrival.BARE_LF_IN_BODY
                if eol < 0:
                    # no size line is that long
                    too_long = len(data) - position > _SIZE_LINE_BYTES
                    return Arrival.EARLY if too_long else Arrival.COMING
                self.body = None  # extensions, spaces: gunicorn's parser judges them
                try:
                    size = int(data[position:eol].split(b";")[0].strip(), 16)
                except ValueError:
                    return Arrival.EARLY
            if size < 0 or announced + size > limit:
                return Arrival.EARLY
            if size == 0:
                self._trailers = self._trailers_scanned = eol + 2
                return self._walk_trailers(data)
            after = eol + 2 + size
            if after + 2 > len(data):
                return Arrival.COMING
            if data[after : after + 2] != b"\r\n":
                return Arrival.EARLY  # a chunk not followed by CRLF
            if self.body is not None:
                self.body += data[eol + 2 : after]
            position = self._next_line = after + 2
            announced = self._announced = announced + size

    def _walk_trailers(self, data: bytes | bytearray) -> Arrival:
        """The trailer section after the last chunk: whole at its empty line."""
        start = self._trailers
        if data[start : start + 2] == b"\r\n":
            self.request_end = start + 2
            return Arrival.WHOLE
        if len(data) >= start + 2:
            self.body = None  # a trailer section: gunicorn's parser reads it
        end = data.find(b"\r\n\r\n", max(start, self._trailers_scanned - 3))
        stop = len(data) if end < 0 else end
        if _BARE_LF.search(data, max(start, self._trailers_scanned - 1), stop):
            return Arrival.BARE_LF_IN_BODY
        self._trailers_scanned = stop
        if end >= 0:
            return Arrival.WHOLE
        return Arrival.EARLY if len(data) - start > ARRIVAL_BUFFER_BYTES else Arrival.COMING


# (gunicorn exception name, status, reason phrase, code), most specific first. By name:
# older gunicorn releases lack some (InvalidChunkExtension, ObsoleteFolding).
_ANSWERS_BY_NAME = (
    ("UnsupportedTransferCoding", ErrorCode.UNSUPPORTED_TRANSFER_ENCODING),
    ("LimitRequestLine", ErrorCode.REQUEST_LINE_TOO_LONG),
    ("LimitRequestHeaders", ErrorCode.HEADERS_TOO_LARGE),
    ("ExpectationFailed", ErrorCode.EXPECTATION_FAILED),
    ("InvalidChunkSize", ErrorCode.MALFORMED_BODY),
    ("ChunkMissingTerminator", ErrorCode.MALFORMED_BODY),
    ("InvalidChunkExtension", ErrorCode.MALFORMED_BODY),
    ("InvalidHeader", ErrorCode.MALFORMED_REQUEST),
    ("InvalidHeaderName", ErrorCode.MALFORMED_REQUEST),
    ("ObsoleteFolding", ErrorCode.MALFORMED_REQUEST),
    ("InvalidRequestLine", ErrorCode.MALFORMED_REQUEST),
    ("InvalidRequestMethod", ErrorCode.MALFORMED_REQUEST),
    ("InvalidHTTPVersion", ErrorCode.MALFORMED_REQUEST),
)
# What the message of a refusal before the app says, by status (400: malformed).
_SAYS = {
    415: "The transfer coding is not supported (send Content-Length or chunked alone)",
    414: "The request line is too long",
    431: "The request's headers are too large",
    417: "Only Expect: 100-continue is supported",
}
_ANSWERS: tuple[tuple[type[Exception], ErrorCode], ...] = tuple(
    (getattr(errors, name), code) for name, code in _ANSWERS_BY_NAME if hasattr(errors, name)
)


class ShuttingDown(Exception):
    """A request a stopping worker's thread took after ``EXIT_SERVE_S``: answered 503
    ``shutting_down`` before the app, then the connection closes."""


def shutting_down_answer(log: Any, addr: Any) -> bytes:
    """The raw 503 ``shutting_down`` (ingest/errors.py), its line written to ``log``."""
    request_id, raw = raw_json_answer(
        ErrorCode.SHUTTING_DOWN,
        "The receiver is shutting down; the delivery was not accepted. Retry.",
    )
    log.info(
        f"Request from ip={(addr or ('', -1))[0]} after the exit's drain: answered 503 "
        f"shutting_down, request_id={request_id}"
    )
    return raw


class RepeatedHeader(errors.ParseException):
    """A header the receiver reads once (ingest/request.py ``SINGLE_HEADERS``) came on
    several lines: refused by :class:`JsonErrorWorker` before the app, which cannot tell
    the lines apart in the environ (gunicorn joins them)."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names

    def __str__(self) -> str:
        return f"the header {', '.join(sorted(self.names))} came more than once; send it once"


def json_error_answer(exc: BaseException) -> tuple[int, str, bytes] | None:
    """``(status, request id, raw HTTP response)`` for a request error that is the
    client's fault; None for anything else. The answer carries a fresh
    ``X-Request-ID`` (the request's own headers are not to be trusted here)."""
    version = unsupported_version(exc)
    if version is not None:  # another major version: 505 (ingest/http_version.py)
        request_id, raw = raw_json_answer(
            ErrorCode.HTTP_VERSION_NOT_SUPPORTED,
            f"{version} is not served on this port; send HTTP/1.1.",
        )
        return 505, request_id, raw
    if isinstance(exc, RepeatedHeader):
        request_id, raw = raw_json_answer(ErrorCode.REPEATED_HEADER, f"{exc}.")
        return 400, request_id, raw
    if isinstance(exc, errors.InvalidHeader) and getattr(exc, "hdr", None) == "HOST":
        # Two Host lines, or a control character in one (RFC 9112 section 3.2: 400;
        # ingest/host_header.py checks the rest of the Host rules in the app).
        request_id, raw = raw_json_answer(
            ErrorCode.BAD_HOST, "Send one Host header with a valid value."
        )
        return 400, request_id, raw
    for kind, code in _ANSWERS:
        if isinstance(exc, kind):
            message = f"{_SAYS.get(code.status, 'The request is malformed')}: {exc}"[:300]
            request_id, raw = raw_json_answer(code, message)
            return code.status, request_id, raw
    return None


def raw_json_answer(code: ErrorCode, message: str | None = None) -> tuple[str, bytes]:
    """``(request id, raw HTTP/1.1 response)``: ``code``'s JSON error (its status, and
    ``message`` or its own) answered before the app, after which the connection
    closes (it says so), with a fresh ``X-Request-ID``."""
    request_id = uuid4_hex()
    said = {"code": code.value, "message": message or code.default_message}
    body = json.dumps({"error": said}).encode() + b"\n"
    status = f"{code.status} {HTTPStatus(code.status).phrase}"
    head = (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return request_id, head.encode("latin-1") + body


def logged_refusal(log: Any, addr: Any, exc: BaseException) -> bytes | None:
    """The raw JSON answer to a request error that is the client's fault, its WARNING
    line written to gunicorn's ``log`` (as gunicorn words it, with the answer's request
    id); None for anything else (gunicorn's own ``handle_error`` answers that)."""
    answer = json_error_answer(exc)
    if answer is None:
        return None
    status, request_id, raw = answer
    peer = (addr or ("", -1))[0]
    log.warning(
        f"Invalid request from ip={peer}: {exc} (answered {status}, request_id={request_id})"
    )
    return raw


def timeout_answer(log: Any, peer: Any, came: int) -> bytes:
    """The raw 408 to a request not whole within ``ARRIVAL_TIMEOUT_S`` (``came``: its
    bytes so far), its WARNING line written to ``log``."""
    request_id, raw = raw_json_answer(ErrorCode.REQUEST_TIMEOUT)
    log.warning(
        f"Request from ip={(peer or ('', -1))[0]} not whole within {ARRIVAL_TIMEOUT_S:.0f} s "
        f"({came} bytes came): answered 408, request_id={request_id}"
    )
    return raw


# A worker's state on the board. OUT: not counted (leaving on SIGTERM, or the gthread
# worker while it does not accept). PAUSED: a live worker leaving new connections to a
# less loaded one; it counts, and is woken (``ring``) as soon as it may take them again.
OUT, ACCEPTING, PAUSED = 0, 1, 2


class ConnectionBoard:
    """Open connections per worker, in memory shared by a gunicorn master's workers
    (an anonymous shared mmap, inherited at fork). Slot ``i`` holds the worker's pid
    (0 free, -1 reserved by the master), its connection count, its state (``OUT``,
    ``ACCEPTING``, ``PAUSED``) and when it last posted (``time.monotonic()``, one clock
    for the whole host). A header holds how many slots were ever used, so a reading
    scans only those (it runs at every accept and close).

    The spreading protocol (ingest/aio_worker.py follows it): a worker holding ``n``
    accepts unless another counted worker holds ``n - SPREAD_SLACK`` or fewer
    (:meth:`may_accept`), so the least loaded one always may. A worker that pauses
    posts ``PAUSED`` and then reads the board once more (a peer may have grown
    between its reading and its post); a worker whose count grew posts it and then
    rings every paused peer that may accept now (:meth:`to_wake`, :meth:`ring`): of
    the two, one sees the other's post, so no worker stays paused while the least
    loaded. A slot not posted for ``BOARD_STALE_S`` (a stuck or dead worker) is not
    counted. Each worker's bell is a Unix datagram socket in Linux's abstract
    namespace, named by the board and the slot (:meth:`bell`); without one (another
    OS) a paused worker looks again every ``_RECHECK_S``, as it also does in case a
    ring is lost."""

    HEAD = struct.Struct("q")
    SLOT = struct.Struct("qqqd")
    SLOTS = 256

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, self.HEAD.size + self.SLOT.size * self.SLOTS)
        # Names this board's bells apart from another master's (made before the fork).
        self._token = os.urandom(8).hex()
        self._sender: socket.socket | None = None

    def reserve(self) -> int:
        """A free slot for a worker about to be forked (in the master)."""
        for slot, (pid, *_) in enumerate(self.SLOT.iter_unpack(self._slots(self.SLOTS))):
            if pid == 0:
                self._write(slot, -1, 0, OUT, time.monotonic())
                self.HEAD.pack_into(self._memory, 0, max(self._used(), slot + 1))
                return slot
        return -1  # more workers than slots: that one is not balanced

    def release(self, slot: int) -> None:
        if slot >= 0:
            self._write(slot, 0, 0, OUT, 0.0)

    def post(self, slot: int, connections: int, state: int) -> None:
        if slot >= 0:
            self._write(slot, os.getpid(), connections, state, time.monotonic())

    def may_accept(self, slot: int, connections: int) -> bool:
        """Whether a worker holding ``connections`` should take another one: unless a
        counted worker (accepting or paused) holds ``SPREAD_SLACK`` fewer."""
        if slot < 0:
            return True
        return all(
            count + SPREAD_SLACK > connections
            for other, count, _ in self._counted()
            if other != slot
        )

    def to_wake(self, slot: int) -> list[int]:
        """The paused workers (slots, ``slot`` aside) that may accept by the board as
        it is now."""
        counted = self._counted()
        return [
            paused
            for paused, held, state in counted
            if state == PAUSED
            and paused != slot
            and all(count + SPREAD_SLACK > held for other, count, _ in counted if other != paused)
        ]

    def bell(self, slot: int) -> socket.socket | None:
        """The bell of the worker in ``slot`` (in that worker, after the fork): a
        non-blocking socket that becomes readable when rung; None where there is none."""
        if slot < 0 or not hasattr(socket, "AF_UNIX"):
            return None
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            bell.bind(self._bell_name(slot))
        except OSError:  # no abstract namespace (not Linux): the worker polls instead
            bell.close()
            return None
        bell.setblocking(False)
        return bell

    def ring(self, slot: int) -> None:
        """Wake the worker in ``slot``; a ring lost (its bell full, gone) is fine."""
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            self._sender.sendto(b"!", self._bell_name(slot))
        except OSError:
            pass

    def _bell_name(self, slot: int) -> bytes:
        return f"\0hookfleet-board-{self._token}-{slot}".encode()

    def _counted(self) -> list[tuple[int, int, int]]:
        """``(slot, connections, state)`` of the live workers that count."""
        now = time.monotonic()
        return [
            (slot, count, state)
            for slot, (pid, count, state, posted) in enumerate(
                self.SLOT.iter_unpack(self._slots(self._used()))
            )
            if pid > 0 and state in (ACCEPTING, PAUSED) and now - posted < BOARD_STALE_S
        ]

    def _used(self) -> int:
        return int(self.HEAD.unpack_from(self._memory, 0)[0])

    def _slots(self, count: int) -> bytes:
        return self._memory[self.HEAD.size : self.HEAD.size + count * self.SLOT.size]

    def _write(self, slot: int, pid: int, count: int, state: int, posted: float) -> None:
        offset = self.HEAD.size + slot * self.SLOT.size
        self.SLOT.pack_into(self._memory, offset, pid, count, state, posted)


# Made when gunicorn's master loads this worker class, before it forks any worker.
BOARD = ConnectionBoard()


def take_queued_then_close(
    listener: socket.socket, take_one: Callable[[socket.socket], bool]
) -> None:
    """At a worker's exit: ``take_one(listener)`` (False once the accept queue is
    empty) until nothing is queued, then close this process's copy of ``listener``."""
    try:
        while take_one(listener):
            pass
    except OSError:
        pass  # out of descriptors: what is left is refused once every copy is closed
    listener.close()


class JsonErrorWorker(ThreadWorker):
    """``gthread`` that buffers each request's arrival in its event loop, with JSON
    answers for the requests gunicorn refuses itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections whose request is arriving: conn -> (bytes so far, deadline).
        self.arriving: dict[TConn, tuple[bytearray, float]] = {}
        # Their arrival walks, resumed at each piece (linear in a request's bytes).
        self.walks: dict[TConn, ArrivalWalk] = {}
        # Made in the master before the fork; the master releases it at child_exit.
        self.board_slot = BOARD.reserve()
        # time.monotonic() at SIGTERM (or max_requests); None while serving.
        self.stopping_at: float | None = None
        # time.monotonic() when the loop first saw the exit (SIGTERM or max_requests):
        # the idle connections' EXIT_IDLE_S counts from it.
        self.leaving_at: float | None = None

    def notify(self) -> None:
        """Every turn of the event loop (at least once a second): tell the master we
        live and the other workers how many connections we hold."""
        super().notify()
        BOARD.post(self.board_slot, self.nr_conns, ACCEPTING if self._accepting else OUT)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(
            enabled and (not self.alive or BOARD.may_accept(self.board_slot, self.nr_conns))
        )
        BOARD.post(self.board_slot, self.nr_conns, ACCEPTING if self._accepting else OUT)
        if not enabled and not self.alive:
            self._close_listeners()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        if self.alive:
            self.stopping_at = time.monotonic()
            # Whatever blocks the exit, the answered calls' records not durable are
            # named before the master's SIGKILL (ingest/late_records.py).
            from ingest.late_records import late_records

            late_records().arm_watchdog(time.monotonic() + self.cfg.graceful_timeout)
        super().handle_exit(sig, frame)

    def _close_listeners(self) -> None:
        """At the exit, once out of the poller: take what is in the accept queues
        (served in the grace period), then close this worker's copies of the listening
        sockets. The master closed its own before SIGTERM (gunicorn ``Arbiter.stop``):
        once every worker has, a new connection is refused at once instead of queued
        by the kernel for no one until the window's end (Retell waits 10 s)."""
        listeners = list(self.sockets)
        self.sockets.clear()
        for listener in listeners:
            take_queued_then_close(listener, self._accepted)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """While not accepting for the others' sake, look again every
        ``_RECHECK_S``: the others may have caught up. At stop, wake when the idle
        connections' ``EXIT_IDLE_S`` runs out."""
        if self.alive and not self._accepting:
            timeout = min(timeout, _RECHECK_S)
        elif not self.alive and self.arriving and self.leaving_at is not None:
            # Wake for the end of the idle connections' grace (murder_pending).
            left = self.leaving_at + EXIT_IDLE_S - time.monotonic()
            if left > 0:
                timeout = min(timeout, left + _RECHECK_S)
        super().wait_for_and_dispatch_events(timeout)

    def accept(self, listener: socket.socket) -> None:
        # A listener whose event came in the poller pass that met SIGTERM may have been
        # closed by then (``_close_listeners``, its queue taken): nothing left to accept.
        if listener in self.sockets:
            self._accepted(listener)

    def _accepted(self, listener: socket.socket) -> bool:
        """Take one connection off ``listener``'s queue; False when none was there."""
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return error.errno == errno.ECONNABORTED
        # Read before anything may close the listener (a SIGTERM handled meanwhile).
        server = listener.getsockname()
        self.nr_conns += 1
        # A leaving worker takes its queue and closes its listeners once out of the
        # poller (``run``); pausing here would close them under this very accept (an
        # outsider's workers crashed with exit 255 at SIGTERM, the connection reset).
        if self.alive and not BOARD.may_accept(self.board_slot, self.nr_conns):
            self.set_accept_enabled(False)  # the next ones are for the other workers
        BOARD.post(self.board_slot, self.nr_conns, ACCEPTING if self._accepting else OUT)
        conn = TConn(self.cfg, client, address, server)  # non-blocking
        if self.cfg.is_ssl:  # the TLS handshake is gunicorn's (never configured here)
            self.enqueue_req(conn)
            return True
        self.arriving[conn] = (bytearray(), time.monotonic() + ARRIVAL_TIMEOUT_S)
        # Often the request is there already: no wait in the poller for it then.
        if self._receive(conn, registered=False) is _WAITING:
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self._on_arriving_readable, conn)
            )
        return True

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection has a new request coming: let it arrive first (read
        what is there now; wait in the poller for the rest)."""
        self.keepalived_conns.remove(conn)
        self.arriving[conn] = (bytearray(), time.monotonic() + ARRIVAL_TIMEOUT_S)
        if self._receive(conn, registered=True) is _WAITING:
            self.poller.modify(
                client, selectors.EVENT_READ, partial(self._on_arriving_readable, conn)
            )

    def _on_arriving_readable(self, conn: TConn, _sock: socket.socket) -> None:
        self._receive(conn, registered=True)

    def _receive(self, conn: TConn, *, registered: bool) -> object:
        """Read what has come of ``conn``'s request; hand it to a thread once it has
        arrived (or drop the connection when it hung up before a request began).
        ``_WAITING`` while more is to come."""
        data, _ = self.arriving[conn]
        try:
            received = conn.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return _WAITING
        except OSError:
            received = b""
        if not received and not data:  # hung up (or kept alive no more) before a request
            self._drop_arriving(conn)
            return None
        data += received
        # A client that stops sending mid-request is answered by the thread, as before
        # (400 incomplete_body: the parser meets the end of the stream).
        walk = self.walks.setdefault(conn, ArrivalWalk())
        if received and walk.arrival(data, _buffer_limit) is Arrival.COMING:
            return _WAITING
        if registered:
            self.poller.unregister(conn.sock)
        del self.arriving[conn]
        self.walks.pop(conn, None)
        conn.init()  # the parser (a new connection), socket blocking for the thread
        conn.parser.unreader.unread(bytes(data))
        conn.data_ready = True
        self.enqueue_req(conn)
        return None

    def _drop_arriving(self, conn: TConn, answer: bytes = b"") -> None:
        self.arriving.pop(conn, None)
        self.walks.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also end the arrivals that ran out of time (408 when something came), and
        on shutdown the connections that sent nothing ``EXIT_IDLE_S`` after it began."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self.leaving_at is None:
            self.leaving_at = now
        idle_over = self.leaving_at is not None and now - self.leaving_at >= EXIT_IDLE_S
        for conn, (data, deadline) in list(self.arriving.items()):
            if now >= deadline:
                answer = timeout_answer(self.log, conn.client, len(data)) if data else b""
                self._drop_arriving(conn, answer)
            elif idle_over and not data:
                self._drop_arriving(conn)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """gthread's, with HTTP/1.2-1.9 read as HTTP/1.1 (ingest/http_version.py), a
        repeated id or signature header refused (400 ``repeated_header``, then closed),
        and a request taken over ``EXIT_SERVE_S`` after SIGTERM refused (503
        ``shutting_down``, then closed)."""
        if self.stopping_at is not None and time.monotonic() - self.stopping_at > EXIT_SERVE_S:
            raise ShuttingDown
        read_as_http11(req)
        repeated = repeated_names(req.headers)
        if repeated:
            raise RepeatedHeader(repeated)
        return bool(super().handle_request(req, conn))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, ShuttingDown):
            raw: bytes | None = shutting_down_answer(self.log, addr)
        else:
            raw = logged_refusal(self.log, addr, exc)
        if raw is None:
            super().handle_error(req, client, addr, exc)
            return
        try:
            util.write_nonblock(client, raw)
        except Exception:  # noqa: BLE001 (the client may be gone; nothing to answer)
            self.log.debug("Failed to send error message.")

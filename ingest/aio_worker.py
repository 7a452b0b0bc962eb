"""The receiver's gunicorn worker: one uvloop event loop per process reads every
request, serves plain deliveries itself and hands the rest to the WSGI app in threads.

**In the loop.** Each connection's bytes are buffered until the request is whole
(:func:`parse_plain`, else ingest/gunicorn_worker.py's :func:`arrival`: a body up to
its provider's limit, ``settings.body_limit``, chunked or not), so no thread ever waits
on a slow or silent client: one not whole within ``ARRIVAL_TIMEOUT_S`` is answered 408,
an idle one closed after gunicorn's ``keepalive`` (or ``ARRIVAL_TIMEOUT_S`` before its
first request). For ``Expect: 100-continue`` with an acceptable length the loop sends
the ``100 Continue`` itself. A request answerable before it is whole (a body announced
over the limit: 413 unread; a framing gunicorn's parser, run on the head, refuses)
goes on at once, and its connection closes after the answer, which says so. What a
worker buffers for arriving requests is capped (``ARRIVING_BYTES_CAP``). A request whose head
is *plain* (an origin-form request line, token header names without ``_``, at most one
numeric ``Content-Length`` up to the 128 KiB arrival buffer, no repeated ``Host`` or
``Content-Type``, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, within gunicorn's
``limit_request_line`` / ``_fields`` / ``_field_size``) is parsed with httptools
(llhttp). A plain ``POST /webhooks/<known provider>``, with tracing off and a claim that
can be pipelined (ingest/claims.py ``PipelinedClaims.for_gate``), is served in the loop
(ingest/loop_delivery.py): the CPU part of ``take_delivery`` (ingest/views.py
``check_delivery``), the claim awaited, the answer (ingest/fastpath.py
``finish_answer``, as for the WSGI path). ``GET /healthz`` is answered in the loop too
(ingest/loop_delivery.py ``health``): it proves the loop lives, whatever the threads wait on.

**In threads** (``threads`` of them, HOOKFLEET_WEB_THREADS): every other plain request
goes through the WSGI app with a PEP 3333 environ built as gunicorn's ``http/wsgi.py``
builds it (Flask: the ops endpoints, 404s; Retell's inline answer and its DB
lookup; a refusal kept in the quarantine; tracing on; a gate that cannot pipeline); its
iterable is closed once the answer is handed to the loop. Whatever is not plain
(chunked bodies, ``Expect``, a body announced over the arrival buffer, and every head
llhttp and gunicorn might read differently: tests/unit/test_plain_heads.py enumerates
them) is parsed by gunicorn's own parser and answered by gunicorn's response in a
thread, as its gthread worker would: the same refusals in Hookfleet's JSON shape
(ingest/gunicorn_worker.py ``json_error_answer``), 413 before an oversized body
(ingest/framing.py), and, for a body that came without the loop's ``100 Continue``,
the 100 sent when the app first reads it (never for a body it refuses unread). A
connection closed after an answer lingers (``_LINGER_S``), dropping what its client
still sends, so that client reads the answer rather than a reset.

One request at a time per connection, answers in request order; reading pauses while
a request is served, and while a client leaves its answers unread. gunicorn's worker
duties are kept: ``notify`` heartbeat (every ``_TICK_S``), SIGTERM (stop accepting,
finish in-flight requests, a claim waiting on Redis included, close idle connections,
exit within ``graceful_timeout``), SIGQUIT/SIGINT fast exit, ``max_requests``, the
request's listener as ``SERVER_PORT``, and the
:class:`~ingest.gunicorn_worker.ConnectionBoard` that spreads connections over
workers: a worker pauses while it holds ``SPREAD_SLACK`` more than another live one,
paused or not, and is rung awake (a Unix datagram, its bell) by the worker whose new
connections let it accept again, so the least loaded one always accepts.

Sources: gunicorn ``workers/base.py`` and ``workers/gthread.py`` (gunicorn 27),
``http/wsgi.py`` (the environ and response head), PEP 3333, RFC 9112; httptools
``parser/parser.pyx``; uvloop ``loop.pyx`` (``connect_accepted_socket``).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import ipaddress
import os
import re
import signal
import socket
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from functools import partial
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools
import uvloop
from gunicorn import SERVER
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.base import Worker

from ingest.accept_queue import stamp_arrivals, waited_before_accept
from ingest.call_deadline import ARRIVED
from ingest.errors import ErrorCode
from ingest.gunicorn_worker import (
    _RECHECK_S,
    ACCEPTING,
    ARRIVAL_BUFFER_BYTES,
    ARRIVAL_TIMEOUT_S,
    BOARD,
    EXIT_IDLE_S,
    OUT,
    PAUSED,
    Arrival,
    ArrivalWalk,
    logged_refusal,
    raw_json_answer,
    take_queued_then_close,
    timeout_answer,
)
from ingest.host_header import host_refusal
from ingest.http_version import ANSWER_VERSION, answer_as_http11
from ingest.listeners import LISTENER_PORT, listener_name
from ingest.request import REPEATED_HEADERS, repeated_names
from models.logs import TickLines

# Each turn of the worker's clock: heartbeat, arrival deadlines, idle keep-alives.
_TICK_S = 0.5
# A body being read by a thread (a non-plain request) is buffered up to this much
# before the loop stops reading the connection until the thread catches up.
_FEED_HIGH_BYTES = 1024 * 1024
# What one worker buffers for arriving requests, all connections together; past it the
# loop stops reading them (they still get their 408 at the deadline).
ARRIVING_BYTES_CAP = 64 * 1024 * 1024
# The body limit of a request the worker cannot place (an app that is not Hookfleet's).
_DEFAULT_BODY_LIMIT = 1024 * 1024
_WEBHOOK_PATH = re.compile(rb"[A-Z]+ (?:[a-z][a-z0-9+.-]*://[^/ ]*)?/webhooks/([^/?# ]*)")
# Loop time one connection's arriving requests may take per window (seconds): a walk
# of a million one-byte chunks takes one to two seconds of CPU on a loaded machine; so
# spread, the others wait at most one read's walk (tens of ms) at a time and have at
# least half of the loop.
_ARRIVAL_LOOP_S = 0.5
_ARRIVAL_WINDOW_S = 1.0
# A read whose walk took longer than this gives the loop's next turn to the others.
_ARRIVAL_SLICE_S = 0.02
# A request whose bytes wait on this worker at its 408 deadline (unwalked in the buffer,
# unread in the socket, held back by a budget or the arriving-bytes cap) is not late by
# its client's fault: its deadline is waived until this long after its first byte.
_ARRIVAL_CAP_S = 6 * ARRIVAL_TIMEOUT_S
# Chunks walked per turn of the loop (a few ms): one read brings up to 256 KiB, 43,000
# one-byte chunks, which took up to half a second on a loaded machine.
_WALK_STEPS = 4096
# After an answer, the rest of a body the app did not read is skipped if it comes within
# this; else the connection closes (and lingers, below) rather than hold a thread.
_DRAIN_S = 0.5
# A connection closed after an answer reads (and drops) what its client still sends
# for up to this long, so that client reads the answer instead of a reset.
_LINGER_S = 2.0

# A plain head: an origin-form request line, then header lines whose names are tokens
# without "_" (gunicorn drops those) directly followed by ":", and values without
# control characters. Anything else goes to gunicorn's parser.
_PLAIN_HEAD = re.compile(
    rb"[A-Z]{3,20} /[\x21-\x7e]* HTTP/1\.[01]\r\n"
    rb"(?:[!#$%&'*+\-.^`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*"
)
_NOT_PLAIN_HEADERS = frozenset({"TRANSFER-ENCODING", "EXPECT", "UPGRADE"})
_SINGLETONS = frozenset({"CONTENT-LENGTH", "HOST", "CONTENT-TYPE"})


class Plain:
    """A plain request parsed from the buffer (httptools callbacks fill it): its
    header fields as gunicorn gives them (names upper case, values stripped)."""

    __slots__ = ("body", "complete", "fields", "keep_alive", "method", "parser", "url", "version")

    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.url = b""
        self.fields: list[tuple[str, str]] = []
        self.complete = False
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.decode("latin-1").upper(), value.decode("latin-1").strip(" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True
        # Read here: llhttp resets its flags once a message without a body is complete,
        # and then says keep-alive for an HTTP/1.1 "Connection: close" (the connection
        # stayed open until the keep-alive ran out, 5 s).
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


# parse_plain: a plain request whose body has not all come yet (or no head yet).
MORE = object()
# Connection.plain before its request's head has come.
_UNSEEN = object()


def parse_plain(data: bytearray, limits: tuple[int, int, int]) -> tuple[Plain, int] | object | None:
    """``(request, used)``: the plain request ``data`` starts with (its ``body`` read)
    and how many bytes of ``data`` it took; :data:`MORE` while its head or body is
    still coming; None when gunicorn's parser must decide (see the module's docstring).
    ``limits``: gunicorn's ``limit_request_line``, ``_fields``, ``_field_size``."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return MORE
    found = plain_head(data, end, limits)
    if found is None:
        return None
    plain, body_end = found
    if body_end > len(data):
        return MORE
    plain.body = bytes(data[end + 4 : body_end])
    return plain, body_end


def plain_head(
    data: bytes | bytearray, end: int, limits: tuple[int, int, int]
) -> tuple[Plain, int] | None:
    """``(request, body end)``: the plain head ``data`` starts with (its CRLF CRLF at
    ``end``), its body not read, and the offset in ``data`` where its body ends; None
    when gunicorn's parser must decide (:func:`parse_plain`)."""
    head = bytes(data[: end + 4])
    if not _PLAIN_HEAD.fullmatch(head, 0, end + 2):
        return None
    line_limit, fields_limit, field_limit = limits
    lines = head[: end + 2].split(b"\r\n")
    if (
        (line_limit and len(lines[0]) > line_limit)
        or len(lines) - 2 > fields_limit
        or max(map(len, lines)) + 2 > field_limit
    ):
        return None
    plain = Plain()
    parser = plain.parser = httptools.HttpRequestParser(plain)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not plain.complete:
        return None
    length = 0
    singletons: set[str] = set()
    for name, value in plain.fields:
        if name in _NOT_PLAIN_HEADERS:
            return None
        if name in _SINGLETONS:
            # gunicorn refuses a repeated one (RFC 9110 section 5.3), llhttp does not.
            if name in singletons:
                return None
            singletons.add(name)
            if name == "CONTENT-LENGTH":
                if not value.isdigit() or not value.isascii():
                    return None
                length = int(value)
    if length > ARRIVAL_BUFFER_BYTES:
        return None  # gunicorn's parser reads it as it comes (413 before it, if too large)
    plain.method = parser.get_method().decode("latin-1")
    plain.version = parser.get_http_version()
    return plain, end + 4 + length


class _DateHeader:
    """``Date: ...\\r\\n`` (RFC 9110 5.6.7), made once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


DATE = _DateHeader()


def response_head(
    version: str, status: str, headers: Iterable[tuple[str, str]], keep_alive: bool
) -> bytes:
    """The answer's head as gunicorn's ``Response.send_headers`` writes it, in HTTP/1.1
    whatever the request's ``version`` (1.0 or 1.1: ingest/http_version.py)."""
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        f"HTTP/{ANSWER_VERSION} {status}\r\nServer: {SERVER}\r\n".encode()
        + DATE.line()
        + b"Connection: "
        + connection
        + b"\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
        + b"\r\n"
    )


class LoopFedSocket:
    """What gunicorn's parser and response read from and write to, in a thread: bytes
    the loop received (``feed``), answers handed to the loop's transport."""

    def __init__(self, connection: Connection, initial: bytes, eof: bool) -> None:
        self._connection = connection
        self._lock = threading.Condition()
        self._data = bytearray(initial)
        self._eof = eof
        self._timeout: float | None = None

    def feed(self, data: bytes) -> int:
        with self._lock:
            self._data += data
            self._lock.notify()
            return len(self._data)

    def feed_eof(self) -> None:
        with self._lock:
            self._eof = True
            self._lock.notify()

    def take(self) -> bytes:
        with self._lock:
            data = bytes(self._data)
            self._data.clear()
            return data

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end. A body that stops coming ends the
        request after ``ARRIVAL_TIMEOUT_S`` (gunicorn's NoMoreData: 400 incomplete_body),
        or after ``settimeout``'s seconds (TimeoutError) while gunicorn drains it."""
        wait_s = ARRIVAL_TIMEOUT_S if self._timeout is None else self._timeout
        deadline = time.monotonic() + wait_s
        with self._lock:
            while not self._data and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._timeout is not None:
                        raise TimeoutError("no more of the body came")
                    raise http_errors.NoMoreData(b"")
                self._lock.wait(left)
            data = bytes(self._data[:size])
            del self._data[:size]
            low = len(self._data) < _FEED_HIGH_BYTES
        if low:
            self._connection.call_in_loop(self._connection.resume_feed)
        return data

    def sendall(self, data: bytes) -> None:
        self._connection.write_from_thread(bytes(data))

    send = sendall

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def setblocking(self, _flag: bool) -> None:
        pass

    def close(self) -> None:
        pass


class DechunkedReader:
    """A chunked body the loop has read and checked (``ArrivalWalk.dechunked``), in
    place of gunicorn's ``ChunkedReader`` under its ``Body``: ``read(size)`` and the
    ``req`` that ingest/framing.py's ``close_after_answer`` reaches for."""

    def __init__(self, request: Any, data: bytes) -> None:
        self.req = request
        self._data = BytesIO(data)

    def read(self, size: int) -> bytes:
        return self._data.read(size)


class _Writer:
    """What gunicorn's ``handle_error`` writes its answer to, from a thread."""

    def __init__(self, connection: Connection) -> None:
        self.sendall = connection.write_from_thread

    def gettimeout(self) -> float:
        return 0.0  # util.write_nonblock then writes at once


class ContinueOnRead:
    """A request body that sends ``100 Continue`` (RFC 9110 section 10.1.1) when the
    app first reads it: an app that refuses the request first (413 for a body
    announced too large) never asks the client for it. The rest is ``body``'s
    (``reader`` included, which ingest/framing.py reaches for)."""

    def __init__(self, body: Any, sock: LoopFedSocket) -> None:
        self._body = body
        self._sock: LoopFedSocket | None = sock

    @property
    def continued(self) -> bool:
        return self._sock is None

    def _continue(self) -> None:
        if self._sock is not None:
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._sock = None

    def read(self, size: int | None = None) -> bytes:
        self._continue()
        return bytes(self._body.read(size))

    def readline(self, size: int | None = None) -> bytes:
        self._continue()
        return bytes(self._body.readline(size))

    def readlines(self, hint: int | None = None) -> list[bytes]:
        self._continue()
        return list(self._body.readlines(hint))

    def __iter__(self) -> Any:
        self._continue()
        return iter(self._body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)


def _unread_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes waiting in the kernel's receive buffer of ``transport``'s socket
    (``FIONREAD``, ioctl_tty(2)/tcp(7)); 0 when there is no socket to ask."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.fileno() < 0:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(answer, sys.byteorder, signed=True)


class Connection(asyncio.Protocol):
    """One client connection: its bytes, and one request at a time."""

    def __init__(
        self, worker: AioWorker, server: Any, accepted: socket.socket, queued_s: float = 0.0
    ) -> None:
        self.worker = worker
        # How long its first request waited in the kernel before the accept
        # (ingest/accept_queue.py): its deadline starts that much earlier.
        self.queued_s = queued_s
        self.server = server
        self.accepted = accepted  # the socket, counted as a handshake until made
        self.transport: asyncio.Transport | None = None
        self.peer: Any = ("", -1)
        self.buffer = bytearray()
        self.eof = False
        self.serving = False
        self.closed = False
        self.fed: LoopFedSocket | None = None
        self.kept_alive = False
        self.trusted = False
        self.writing_paused = False
        self.environ: dict[str, Any] = {}
        self.lingering = False
        self.deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        self.arrival_cap = self.deadline - ARRIVAL_TIMEOUT_S + _ARRIVAL_CAP_S
        # This request: the loop sent its "100 Continue"; it went to a thread before it
        # was whole (answered unread, so the connection closes after it).
        self.continue_sent = False
        self.early = False
        self.head_checked = False
        # Reading paused because the worker's arriving bytes passed ARRIVING_BYTES_CAP.
        self.starved = False
        # This request's arrival so far (resumed at each piece: linear in its bytes), and
        # its plain head once whole (None: not plain; _UNSEEN before the head came).
        self.walk = ArrivalWalk()
        self.plain: tuple[Plain, int] | object | None = _UNSEEN
        # The chunked body of the request a thread serves, read by the walk (or None).
        self.dechunked: bytes | None = None
        # When the request handed to gunicorn's parser was whole (time.monotonic()).
        self.arrived = 0.0
        # Loop time spent on arriving requests in the current window (_spend), and
        # whether the walk goes on at a later turn (_walk_on).
        self.window_ends = 0.0
        self.window_spent = 0.0
        # Until when this connection's reading or walking is held back by the loop-time
        # budget (:meth:`_hold_back`): time the arrival deadline does not count.
        self.held_back_until = 0.0
        self.walk_on_due = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername") or ("", -1)
        self.trusted = self.worker.trusts(self.peer)
        self.environ = self.worker.connection_environ(self.peer, self.server)
        self.worker.connections.add(self)
        self.worker.handshakes.discard(self.accepted)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.fed is not None:
            if self.fed.feed(data) > _FEED_HIGH_BYTES and self.transport is not None:
                self.transport.pause_reading()
            return
        if not self.buffer:
            self._arrival_starts()
        self.buffer += data
        if self.worker.arriving_bytes(len(data)) and self.transport is not None:
            self.starved = True
            self.transport.pause_reading()
        if not self.serving:
            started = time.perf_counter()
            self._next_request()
            self._spend(time.perf_counter() - started)
        elif self.transport is not None:
            # Bytes while a request is served (a pipelining client): this read is kept,
            # the next waits until the answer is written (see _next_request).
            self.transport.pause_reading()

    def _spend(self, seconds: float) -> None:
        """Count loop time spent on this connection's arriving request; past
        ``_ARRIVAL_LOOP_S`` in a ``_ARRIVAL_WINDOW_S`` window, stop reading it until the
        window ends, so one client's tiny pieces cannot hold the loop from the others
        (its 408 deadline still runs); after a read costlier than ``_ARRIVAL_SLICE_S``,
        read it again only after the loop's next turn."""
        now = time.monotonic()
        if now >= self.window_ends:
            self.window_ends, self.window_spent = now + _ARRIVAL_WINDOW_S, 0.0
        self.window_spent += seconds
        if self.serving or self.transport is None:
            return
        if self.window_spent > _ARRIVAL_LOOP_S:
            self.transport.pause_reading()
            self._hold_back(now)
            self.worker.loop.call_later(self.window_ends - now, self._read_again)
        elif seconds > _ARRIVAL_SLICE_S:
            # libuv reads a readable socket up to 32 times in one turn: a connection
            # whose pieces are costly lets the others have the next turn first.
            self.transport.pause_reading()
            self.worker.loop.call_soon(self._read_again)

    def _walk_on(self) -> None:
        """Walk on through chunks that came (``_WALK_STEPS`` a turn of the loop), or
        once the connection's loop-time window is over (:meth:`_spend`)."""
        self.walk_on_due = False
        if self.closed or self.serving or self.lingering or self.fed is not None:
            return
        now = time.monotonic()
        if now < self.window_ends and self.window_spent > _ARRIVAL_LOOP_S:
            self.walk_on_due = True
            self._hold_back(now)
            self.worker.loop.call_later(self.window_ends - now, self._walk_on)
            return
        started = time.perf_counter()
        self._next_request()
        self._spend(time.perf_counter() - started)

    def _arrival_starts(self) -> None:
        """A request's arrival (or a kept-alive wait) starts now: its 408 deadline and
        the cap past which no waiver (:meth:`_late_by_us`) holds."""
        now = time.monotonic()
        self.deadline = now + ARRIVAL_TIMEOUT_S
        self.arrival_cap = now + _ARRIVAL_CAP_S

    def _late_by_us(self, now: float) -> bool:
        """True while the arriving request is late because of this worker, not its
        client: bytes it sent wait unwalked in the buffer or unread in the socket, or
        reading is held back (the loop-time budget, the arriving-bytes cap). A body of
        tiny chunks sent at once, walked on a busy machine, got 408 with every byte
        here. Never past ``arrival_cap``: a client that keeps the socket full forever
        is still ended."""
        if now >= self.arrival_cap:
            return False
        if self.walk.unwalked or self.walk_on_due or self.starved or now < self.held_back_until:
            return True
        return _unread_bytes(self.transport) > 0

    def _hold_back(self, now: float) -> None:
        """The budget holds this connection back until its window ends: the arrival
        deadline moves by that much (once per window), so the 408 counts the client's
        time, not the time the loop gave the others. A client sending a body of tiny
        chunks as fast as it can is not slow; at most half of each window is held
        back, so its deadline is at most about doubled."""
        start = max(now, self.held_back_until)
        if self.window_ends > start:
            self.deadline += self.window_ends - start
            self.held_back_until = self.window_ends

    def _read_again(self) -> None:
        """The loop-time window of :meth:`_spend` ended: read on, unless reading waits
        for something else (a request served, the worker's arriving bytes)."""
        if self.transport is None or self.closed or self.serving or self.starved:
            return
        if self.fed is None and not self.writing_paused:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.lingering:
            self.close()
            return True
        if self.fed is not None:
            self.fed.feed_eof()
        elif not self.serving:
            self._next_request()
        return True  # keep our side open to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fed is not None:
            self.fed.feed_eof()
        self.worker.connection_gone(self)

    # serving
    def _next_request(self) -> None:
        if self.closed or self.serving or self.writing_paused:
            return
        if not self.buffer:
            if self.eof or not self.worker.alive:
                self.close()
            return
        parsed = self._plain_request()
        if parsed is MORE and not self.eof and self.walk.head_end >= 0:
            return  # a plain request, its body to come (no thread waits for it)
        if not isinstance(parsed, tuple):
            state = self.walk.arrival(self.buffer, self.worker.body_limit_for, _WALK_STEPS)
            if self.walk.unwalked:
                # More chunks have come than one turn walks: the rest at the next turn.
                if not self.walk_on_due:
                    self.walk_on_due = True
                    self.worker.loop.call_soon(self._walk_on)
                return
            if state in (Arrival.COMING, Arrival.EXPECTS_CONTINUE) and self._head_refused():
                state = Arrival.EARLY  # gunicorn answers it now: no wait for its body
            if state in (Arrival.BARE_LF, Arrival.BARE_LF_IN_BODY):
                self._refuse_bare_lf(state is Arrival.BARE_LF)
                return
            if state is Arrival.EXPECTS_CONTINUE and not self.eof:
                if not self.continue_sent:
                    self.continue_sent = True
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return  # the body comes now (no thread waits for it)
            if state is Arrival.COMING and not self.eof:
                return
            self.early = state is not Arrival.WHOLE
        # Reading goes on while it is served, and pauses only if more bytes come
        # (data_received): a client that waits for its answer, as nearly every one does,
        # costs no stop and restart of the socket's polling per request.
        self.serving = True
        self.worker.loop.create_task(self._serve(parsed))

    def _plain_request(self) -> tuple[Plain, int] | object | None:
        """:func:`parse_plain` of the buffer, the head parsed once per request (its
        body then awaited by length alone)."""
        end = self.walk.find_head_end(self.buffer)
        if end < 0:
            return MORE
        if self.plain is _UNSEEN:
            self.plain = plain_head(self.buffer, end, self.worker.limits)
        if not isinstance(self.plain, tuple):
            return None
        plain, body_end = self.plain
        if body_end > len(self.buffer):
            return MORE
        plain.body = bytes(self.buffer[end + 4 : body_end])
        return plain, body_end

    async def _serve(self, parsed: object) -> None:
        keep_alive = False
        try:
            keep_alive = await self._serve_one(parsed)
        except Exception:  # one connection's failure ends that connection
            self.worker.log.exception("Error handling request")
        self.worker.request_done()
        self.serving = False
        self.continue_sent = self.early = self.head_checked = False
        self.walk, self.plain = ArrivalWalk(), _UNSEEN  # the next request's
        if not keep_alive or not self.worker.alive or self.closed:
            self.linger()
            return
        self.kept_alive = True
        self._arrival_starts()
        if self.writing_paused:
            return  # a client not reading its answers: resume_writing goes on
        if self.transport is not None:
            self.transport.resume_reading()
        self._next_request()

    def _head_refused(self) -> bool:
        """Whether gunicorn's parser refuses this request's head (checked once, when the
        head is whole) before any of its body, as the thread would."""
        if self.head_checked:
            return False
        end = self.walk.find_head_end(self.buffer)
        if end < 0:
            return False
        self.head_checked = True
        return self.worker.head_refused(bytes(self.buffer[: end + 4]), self.peer)

    def _refuse_bare_lf(self, in_head: bool) -> None:
        """gunicorn refuses a line ended by a bare LF (RFC 9112 section 2.2) only once it
        sees a CRLF (CRLF), which may never come: the loop answers it, as gunicorn
        would (``malformed_request`` in the head, ``malformed_body`` in the chunks)."""
        request_id, raw = raw_json_answer(
            ErrorCode.MALFORMED_REQUEST if in_head else ErrorCode.MALFORMED_BODY,
            "The request is malformed: bare LF as line terminator",
        )
        self.worker.log.warning(
            f"Invalid request from ip={self.peer[0]}: bare LF as line terminator "
            f"(answered 400, request_id={request_id})"
        )
        self.write(raw)
        self.linger()

    def pause_writing(self) -> None:
        """The transport holds more unsent answer than its high-water mark: serve the
        next pipelined request only once the client has read some."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.serving and not self.closed and not self.lingering:
            if self.transport is not None:
                self.transport.resume_reading()
            self._next_request()

    async def _serve_one(self, parsed: object) -> bool:
        """Serve the request at the buffer's start (``parsed`` by parse_plain)."""
        if not isinstance(parsed, tuple):
            return await self._serve_with_gunicorn()
        request, used = parsed
        environ = self.worker.environ_for(request, self.environ, self.trusted)
        if environ is None:
            return await self._serve_with_gunicorn()
        environ[ARRIVED] = self.arrival()  # an inline answer's deadline starts here
        del self.buffer[:used]
        keep_alive = request.keep_alive and self.worker.alive
        deliveries = self.worker.deliveries
        if deliveries is not None and host_refusal(environ) is not None:
            deliveries = None  # the app answers its 400 (ingest/host_header.py)
        provider = None if deliveries is None else deliveries.provider_for(environ)
        if provider is not None:
            assert deliveries is not None
            status, headers, payload, after = await deliveries.deliver(environ, provider)
            self.write(response_head(request.version, status, headers, keep_alive) + payload)
            if after is not None:
                await self.worker.loop.run_in_executor(None, after)
            return keep_alive
        health = None if deliveries is None else deliveries.health(environ)
        if health is not None:  # /healthz: the loop lives (no thread asked)
            status, headers, payload, _ = health
            self.write(response_head(request.version, status, headers, keep_alive) + payload)
            return keep_alive
        return bool(
            await self.worker.loop.run_in_executor(
                None, self.worker.call_app, self, environ, request.version, keep_alive
            )
        )

    async def _serve_with_gunicorn(self) -> bool:
        body = None if self.early else self.walk.dechunked()
        if body is None:
            self.fed = LoopFedSocket(self, bytes(self.buffer), self.eof)
        else:
            # Chunks the walk has read already: gunicorn parses the head, and the body
            # is the walk's (ChunkedReader takes ~10 us a chunk, in a thread holding
            # the GIL: a million one-byte chunks took ten seconds of it).
            head = self.buffer[: self.walk.head_end + 4]
            self.fed = LoopFedSocket(
                self, bytes(head + self.buffer[self.walk.request_end :]), self.eof
            )
        self.dechunked = body
        self.buffer.clear()
        if self.transport is not None:
            self.transport.resume_reading()
        self.arrived = self.arrival()  # an inline answer's deadline starts here
        try:
            keep_alive, rest = await self.worker.loop.run_in_executor(
                None, self.worker.handle_with_gunicorn, self
            )
        finally:
            fed, self.fed, self.dechunked = self.fed, None, None
            if self.transport is not None and not self.closed:
                self.transport.pause_reading()
        self.buffer += rest + fed.take()
        return bool(keep_alive)

    def arrival(self) -> float:
        """When the request now whole arrived (``time.monotonic()``): now, less the
        time the connection's first bytes waited to be accepted (first request only)."""
        queued_s, self.queued_s = self.queued_s, 0.0
        return time.monotonic() - queued_s

    # I/O
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def call_in_loop(self, function: Callable[[], None]) -> None:
        try:
            self.worker.loop.call_soon_threadsafe(function)
        except RuntimeError:  # the loop is closed: the worker is exiting
            pass

    def write_from_thread(self, data: bytes, *, wait: bool = True) -> None:
        """Hand ``data`` to the transport; with ``wait``, until the loop has written it
        (else it is written at the loop's next turn, before anything queued later)."""
        if not wait:
            self.call_in_loop(partial(self.write, data))
            return
        written = threading.Event()

        def write() -> None:
            self.write(data)
            written.set()

        self.call_in_loop(write)
        written.wait(self.worker.cfg.timeout)

    def resume_feed(self) -> None:
        if self.fed is not None and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def linger(self) -> None:
        """Close after an answer: our side at once, theirs once they stop sending (or
        after ``_LINGER_S``). A client still sending a body we did not read (413)
        would otherwise meet a reset before it reads the answer."""
        if self.eof or self.transport is None or self.transport.is_closing():
            self.close()
            return
        self.lingering = True
        self.buffer.clear()
        self.transport.write_eof()
        self.transport.resume_reading()
        self.worker.loop.call_later(_LINGER_S, self.close)

    def expire(self, now: float) -> None:
        """End a connection whose request did not arrive in time (408 when something
        came), or that stayed idle past the keep-alive."""
        if self.serving or self.closed or self.lingering:
            return
        if self.buffer:
            if now >= self.deadline and not self._late_by_us(now):
                self.write(timeout_answer(self.worker.log, self.peer, len(self.buffer)))
                self.close()
            return
        idle_limit = self.worker.cfg.keepalive if self.kept_alive else ARRIVAL_TIMEOUT_S
        if not self.worker.alive:
            # Stopping: nothing has come yet, but a request already sent may be in the
            # kernel's buffer: read and served within the grace, not reset.
            if now - (self.worker.stopping_at or 0.0) >= EXIT_IDLE_S:
                self.close()
            return
        if now >= self.deadline - ARRIVAL_TIMEOUT_S + idle_limit:
            self.close()


class AioWorker(Worker):
    """A gunicorn worker on a uvloop event loop (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Made in the master before the fork; the master releases it at child_exit.
        self.board_slot = BOARD.reserve()
        self.connections: set[Connection] = set()
        # Accepted sockets whose transport and Connection are not made yet.
        self.handshakes: set[socket.socket] = set()
        # time.monotonic() at SIGTERM (or max_requests); None while serving.
        self.stopping_at: float | None = None
        # Answered calls' records the exit lost (ingest/late_records.py): the status.
        self.records_lost = 0
        self.deliveries: Any = None
        self.tick_lines: TickLines | None = None
        self.accepting = False
        self.bell: socket.socket | None = None
        self._recheck: asyncio.TimerHandle | None = None
        # Bytes buffered for arriving requests (recounted each tick, added as they come),
        # and the body limit by provider name (set once the app is loaded).
        self.arriving = 0
        self.body_limits: dict[str, int] = {}
        self.default_body_limit = _DEFAULT_BODY_LIMIT
        self.secure_scheme_headers: dict[str, str] = self.cfg.secure_scheme_headers
        self.limits = (
            self.cfg.limit_request_line,
            self.cfg.limit_request_fields,
            self.cfg.limit_request_field_size,
        )

    # gunicorn's worker
    def run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.executor = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="wsgi")
        self.loop.set_default_executor(self.executor)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            if self.tick_lines is not None:
                self.tick_lines.uninstall()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.loop.close()
        if self.records_lost:
            # Answered calls' records lost at this exit (each named at ERROR by
            # ingest/late_records.py): the worker's status says so (gunicorn's
            # ``Worker (pid:...) exited with code 1``); an outsider's exits ended 0.
            sys.exit(1)

    async def _serve(self) -> None:
        self._prepare_app()
        self._stopped = self.loop.create_future()
        for signum, handler in (
            (signal.SIGTERM, self._graceful_exit),
            (signal.SIGQUIT, self._quick_exit),
            (signal.SIGINT, self._quick_exit),
            (signal.SIGABRT, self._abort),
            (signal.SIGUSR1, self.log.reopen_files),
        ):
            self.loop.add_signal_handler(signum, handler)
        for listener in self.sockets:
            listener.setblocking(False)
            stamp_arrivals(listener)
        self.bell = BOARD.bell(self.board_slot)
        if self.bell is not None:
            self.loop.add_reader(self.bell.fileno(), self._on_bell)
        self._rebalance()
        self._tick()
        await self._stopped
        await self._drain()

    def _prepare_app(self) -> None:
        # After the fork: the app's modules open the Prometheus multiprocess files.
        from ingest.loop_delivery import LoopDeliveries

        self.deliveries = LoopDeliveries.for_app(self.wsgi, self.loop)
        # The loop's log lines: one write per pass (models/logs.py TickLines).
        self.tick_lines = TickLines.install(self.loop) if self.deliveries is not None else None
        self._load_body_limits()
        self.base_environ = gunicorn_wsgi.base_environ(self.cfg)
        self.base_environ["wsgi.multithread"] = True
        # The loaded app (~100k objects: Flask, Celery, SQLAlchemy, ...) lives as long as
        # the worker. Left to the collector, its first full pass walks all of them with
        # the loop held: 60-100 ms of CPU ~100 requests after every start (README
        # *Performance*, "The tail at half rate"). Collected once now, before accepting,
        # and frozen out of every later pass (gc.freeze; refcounting still frees them).
        gc.collect()
        gc.freeze()

    def _load_body_limits(self) -> None:
        settings = getattr(self.wsgi, "config", {}).get("HOOKFLEET_SETTINGS")
        if settings is None:
            return
        from ingest.providers import REGISTRY

        self.body_limits = {name: settings.body_limit(name) for name in REGISTRY}
        self.default_body_limit = settings.body_limit("")

    def body_limit_for(self, data: bytes | bytearray) -> int:
        """The body limit (bytes) of the provider the request ``data`` starts with is
        posted to (``settings.body_limit``), the default one for any other path: the
        loop buffers a body up to it, and leaves a larger one unread (413)."""
        match = _WEBHOOK_PATH.match(data)
        if match is None:
            return self.default_body_limit
        name = match.group(1)
        if b"%" in name:
            name = unquote_to_bytes(name)
        return self.body_limits.get(name.decode("latin-1"), self.default_body_limit)

    def head_refused(self, head: bytes, peer: Any) -> bool:
        """Whether gunicorn's parser refuses ``head`` (a request line and headers up to
        their CRLF CRLF) before reading a body: then it is answered at once."""
        if self.cfg.proxy_protocol != "off" and self.cfg.proxy_protocol:
            return False  # a PROXY line may lead the first request: the thread's parser
        try:
            Request(self.cfg, IterUnreader([head]), peer, 1)
        except Exception:  # noqa: BLE001 (whatever it is, gunicorn answers it in a thread)
            return True
        return False

    def arriving_bytes(self, count: int) -> bool:
        """Count ``count`` more bytes buffered for an arriving request; True when the
        worker holds more than ``ARRIVING_BYTES_CAP`` of them."""
        self.arriving += count
        return self.arriving > ARRIVING_BYTES_CAP

    def _recount_arriving(self) -> None:
        """Bytes buffered by connections not being served; resume the starved ones
        while there is room."""
        self.arriving = sum(len(c.buffer) for c in self.connections if not c.serving)
        for connection in self.connections:
            if self.arriving > ARRIVING_BYTES_CAP:
                return
            if connection.starved:
                connection.starved = False
                if connection.transport is not None and not connection.serving:
                    connection.transport.resume_reading()

    def _tick(self) -> None:
        """The worker's clock: heartbeat, board, deadlines, parent, and accepting."""
        self.notify()
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
        now = time.monotonic()
        for connection in list(self.connections):
            connection.expire(now)
        self._recount_arriving()
        if not self.alive and not self._stopped.done():
            self._stopped.set_result(None)
        self._rebalance()
        self.loop.call_later(_TICK_S, self._tick)

    # spreading connections: the ConnectionBoard's protocol (ingest/gunicorn_worker.py)
    @property
    def held(self) -> int:
        """Connections accepted and not yet closed (what the board is told)."""
        return len(self.handshakes) + len(self.connections)

    def _rebalance(self) -> None:
        """After this worker's count changed (or a ring, or a tick): post it, accept
        or pause by the board, and wake the paused workers that may accept now."""
        held = self.held
        self._listen(self.alive and BOARD.may_accept(self.board_slot, held))
        if self.alive and not self.accepting and BOARD.may_accept(self.board_slot, held):
            # A peer grew between the reading above and the post: it may not have seen
            # this worker paused, so it rang no one.
            self._listen(True)
        for slot in BOARD.to_wake(self.board_slot):
            BOARD.ring(slot)

    def _listen(self, accept: bool) -> None:
        """Take new connections or leave them to the others; post the state."""
        if accept != self.accepting:
            for listener in self.sockets:
                if accept:
                    self.loop.add_reader(listener.fileno(), self._accept, listener)
                else:
                    self.loop.remove_reader(listener.fileno())
            self.accepting = accept
        state = ACCEPTING if accept else PAUSED if self.alive else OUT
        BOARD.post(self.board_slot, self.held, state)
        if state == PAUSED and self._recheck is None:
            # In case a ring is lost (or there is no bell): look again soon.
            self._recheck = self.loop.call_later(_RECHECK_S, self._look_again)

    def _look_again(self) -> None:
        self._recheck = None
        if self.alive and not self.accepting:
            self._rebalance()

    def _on_bell(self) -> None:
        """Another worker rang: the board says this one may accept again."""
        assert self.bell is not None
        try:
            while self.bell.recv(64):
                pass
        except OSError:  # drained (BlockingIOError)
            pass
        if self.alive and not self.accepting:
            self._rebalance()

    def _accept(self, listener: Any) -> bool:
        """Take one connection off ``listener``'s queue; False when none was there."""
        try:
            client, _ = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return error.errno == errno.ECONNABORTED
        client.setblocking(False)
        if client.family in (socket.AF_INET, socket.AF_INET6):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = listener.getsockname()
        queued_s = waited_before_accept(client)  # counted in an inline answer's deadline
        connecting = self.loop.create_task(
            self.loop.connect_accepted_socket(
                lambda: Connection(self, server, client, queued_s), client
            )
        )
        connecting.add_done_callback(partial(self._connected, client))
        self.handshakes.add(client)
        self._rebalance()  # the next ones may be for the other workers
        return True

    def _connected(self, client: socket.socket, connecting: asyncio.Task[Any]) -> None:
        """A client gone before its transport was made is closed, quietly."""
        if client in self.handshakes:  # no Connection was made for it
            self.handshakes.discard(client)
            self._rebalance()
        if connecting.cancelled() or connecting.exception() is not None:
            client.close()
        self._stop_when_empty()

    def connection_gone(self, connection: Connection) -> None:
        """A connection closed."""
        self.connections.discard(connection)
        self._rebalance()
        self._stop_when_empty()

    def _stop_when_empty(self) -> None:
        if not self.alive and not self.held and not self._stopped.done():
            self._stopped.set_result(None)

    def request_done(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self._graceful_exit()

    def _graceful_exit(self) -> None:
        if self.alive:
            self.stopping_at = time.monotonic()
            # Whatever blocks the exit, the answered calls' records not durable are
            # named before the master's SIGKILL (ingest/late_records.py).
            from ingest.late_records import late_records

            late_records().arm_watchdog(time.monotonic() + self.cfg.graceful_timeout)
        self.alive = False
        self._rebalance()  # out of the board: the others take every new connection
        for connection in list(self.connections):
            connection.expire(time.monotonic())
        if not self._stopped.done():
            self._stopped.set_result(None)

    def _quick_exit(self) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        sys.exit(0)

    def _abort(self) -> None:
        """gunicorn's abort (its master's SIGABRT to a worker past its ``timeout``):
        status 1 after the ``worker_abort`` hook, as gunicorn's ``handle_abort``. In the
        loop: gunicorn's own handler ran inside whatever callback the signal landed in,
        and uvloop took the exit for that connection's error and went on (status 0 at
        the stop, the master none the wiser)."""
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)

    async def _drain(self) -> None:
        """Let in-flight requests finish (and arriving ones arrive), then the inbound
        calls' late records (ingest/late_records.py), within ``graceful_timeout``; then
        the loop ends and the process exits."""
        self._rebalance()
        self._close_listeners()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        # The connections still being set up too (taken off the accept queue just now):
        # their requests were sent before the listeners closed.
        while (self.connections or self.handshakes) and time.monotonic() < deadline:
            for connection in list(self.connections):
                connection.expire(time.monotonic())
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()
        if self.deliveries is not None and self.deliveries.claims is not None:
            await self.deliveries.claims.aclose()
        # Answered inbound calls Redis has not taken yet: tried for the rest of the
        # graceful window (the heartbeat goes on meanwhile), the rest kept in the database.
        # A thread of its own: request threads may still be busy when the drain gave up.
        from ingest.late_records import late_records

        with ThreadPoolExecutor(1, thread_name_prefix="late-records") as leaving:
            self.records_lost = await self.loop.run_in_executor(
                leaving, late_records().finish, deadline
            )

    def _close_listeners(self) -> None:
        """Take what is in the accept queues (served below), then close this worker's
        copies of the listening sockets: the master closed its own before SIGTERM
        (gunicorn ``Arbiter.stop``), so once every worker has, a new connection is
        refused at once. A copy kept open let the kernel queue calls no one served
        until the window's end (18 s; Retell waits 10 s)."""
        listeners = list(self.sockets)
        self.sockets.clear()
        for listener in listeners:
            try:
                self.loop.remove_reader(listener.fileno())
            except (ValueError, OSError):
                pass
            take_queued_then_close(listener, self._accept)

    # requests
    def trusts(self, peer: Any) -> bool:
        """Whether ``peer`` may set the scheme headers (``forwarded_allow_ips``), as
        gunicorn's ``HeaderPolicy._peer_is_trusted_proxy``."""
        if not isinstance(peer, tuple | list):
            return True
        allowed = self.cfg.forwarded_allow_ips
        if "*" in allowed:
            return True
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        return any(address in network for network in self.cfg.forwarded_allow_networks())

    def connection_environ(self, peer: Any, server: Any) -> dict[str, Any]:
        """The environ's keys that are the same for every request of a connection."""
        environ = dict(self.base_environ)
        if isinstance(peer, tuple | list):
            environ["REMOTE_ADDR"] = str(peer[0])
            environ["REMOTE_PORT"] = str(peer[1])
        else:
            environ["REMOTE_ADDR"] = str(peer or "")
        if isinstance(server, tuple | list):
            environ["SERVER_NAME"], environ["SERVER_PORT"] = str(server[0]), str(server[1])
        # The listener by its socket (ingest/listeners.py): SERVER_PORT of a unix socket
        # comes from the request's Host.
        environ[LISTENER_PORT] = listener_name(server)
        environ["SCRIPT_NAME"] = os.environ.get("SCRIPT_NAME", "")
        return environ

    def environ_for(
        self, request: Plain, connection_environ: dict[str, Any], trusted: bool
    ) -> dict[str, Any] | None:
        """The PEP 3333 environ gunicorn's ``http/wsgi.py`` ``create`` builds; None for
        scheme headers that disagree (gunicorn's parser refuses those)."""
        secure = self.secure_scheme_headers if trusted else {}
        scheme = ""
        url = request.url
        if b"?" in url or b"#" in url or b"%" in url:
            parts = httptools.parse_url(url)
            raw_path, query = parts.path or b"/", parts.query or b""
        else:
            raw_path, query = url, b""
        environ = dict(connection_environ)
        environ["wsgi.input"] = BytesIO(request.body)
        environ["REQUEST_METHOD"] = request.method
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["RAW_URI"] = url.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
        environ["PATH_INFO"] = (
            unquote_to_bytes(raw_path).decode("latin-1")
            if b"%" in raw_path
            else raw_path.decode("latin-1")
        )
        host = None
        repeated: dict[str, list[str]] = {}
        for name, value in request.fields:
            if name == "CONTENT-TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if name == "CONTENT-LENGTH":
                environ["CONTENT_LENGTH"] = value
                continue
            if name == "HOST":
                host = value
            elif name in secure:
                said = "https" if value == secure[name] else "http"
                if scheme and said != scheme:
                    return None
                scheme = said
            key = "HTTP_" + name.replace("-", "_")
            if key in environ:
                repeated.setdefault(key, [environ[key]]).append(value)
            else:
                environ[key] = value
        for key, values in repeated.items():
            environ[key] = ",".join(values)
        if repeated:  # ingest/request.py refuses a repeated id or signature
            environ[REPEATED_HEADERS] = repeated_names(request.fields)
        environ["wsgi.url_scheme"] = scheme or "http"
        if "SERVER_PORT" not in environ:  # a unix socket: the Host header names the server
            name, _, port = (host or "").partition(":")
            environ["SERVER_NAME"], environ["SERVER_PORT"] = name, port or "80"
        return environ

    def call_app(
        self, connection: Connection, environ: dict[str, Any], version: str, keep_alive: bool
    ) -> bool:
        """Run the WSGI app for a plain request (in a thread), write its answer, then
        close its iterable. Whether the connection stays open."""
        started: list[Any] = []
        written: list[bytes] = []  # PEP 3333's legacy write() callable

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return written.append

        try:
            result = self.wsgi(environ, start_response)
        except Exception as error:  # noqa: BLE001 (gunicorn's 500, as its workers do)
            self.handle_error(None, _Writer(connection), connection.peer, error)
            return False
        try:
            body = b"".join([*written, *result])
            status, headers = started
            if not any(name.lower() == "content-length" for name, _ in headers):
                headers = [*headers, ("Content-Length", str(len(body)))]
            # Not waited for: queued to the loop before the iterable is closed below.
            connection.write_from_thread(
                response_head(version, status, headers, keep_alive) + body, wait=False
            )
        except Exception as error:  # noqa: BLE001 (gunicorn's 500, as its workers do)
            self.handle_error(None, _Writer(connection), connection.peer, error)
            return False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return keep_alive

    def handle_with_gunicorn(self, connection: Connection) -> tuple[bool, bytes]:
        """A request that is not plain, parsed and answered by gunicorn's own parser
        and response, as its gthread worker would (in a thread). Whether the
        connection stays open, and the bytes read past the request."""
        fed = connection.fed
        assert fed is not None
        client, server = connection.peer, connection.server
        request = None
        try:
            parser = RequestParser(self.cfg, fed, client)
            request = next(parser)
            if not request:
                return False, b""
            if connection.dechunked is not None and isinstance(request.body.reader, ChunkedReader):
                request.body = Body(DechunkedReader(request, connection.dechunked))
            # Sent on the first read, below (unless the loop sent it already).
            expects_continue = request._expected_100_continue and not connection.continue_sent
            request._expected_100_continue = False
            response, environ = answer_as_http11(request, fed, client, server, self.cfg)
            environ["wsgi.multithread"] = True
            environ[LISTENER_PORT] = connection.environ.get(LISTENER_PORT, "")
            environ[ARRIVED] = connection.arrived
            repeated = repeated_names(request.headers)
            if repeated:  # ingest/request.py refuses a repeated id or signature
                environ[REPEATED_HEADERS] = repeated
            if expects_continue:
                environ["wsgi.input"] = ContinueOnRead(environ["wsgi.input"], fed)
            if not self.alive or connection.early:
                # Early: handed on before it was whole (413 unread, a client gone): the
                # rest is not read, the connection closes, and the answer says so.
                response.force_close()
            result = self.wsgi(environ, response.start_response)
            if (
                isinstance(environ["wsgi.input"], ContinueOnRead)
                and not environ["wsgi.input"].continued
            ):
                # The client waits for a 100 Continue it will not get: what it sends next
                # (the body, after its own timeout) is not a request.
                response.force_close()
            try:
                for item in result:
                    response.write(item)
                response.close()
            finally:
                if hasattr(result, "close"):
                    result.close()
            if response.should_close() or not self.alive:
                return False, b""
            # What the app left of the body, if it has come: no thread waits for more.
            if not parser.finish_body(time.monotonic() + _DRAIN_S):
                return False, b""
            return True, parser.unreader.take_buffered()
        except http_errors.NoMoreData:
            return False, b""
        except StopIteration:
            return False, b""
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                self.log.exception("Socket error processing request.")
            return False, b""
        except Exception as error:  # noqa: BLE001 (gunicorn's handle_error answers it)
            self.handle_error(request, fed, client, error)
            return False, b""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Hookfleet's JSON 4xx for what gunicorn's parser refuses (ingest/gunicorn_worker.py)."""
        raw = logged_refusal(self.log, addr, exc)
        if raw is None:
            super().handle_error(req, client, addr, exc)
            return
        client.sendall(raw)

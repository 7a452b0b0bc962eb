"""One asyncio connection to Redis on which commands are pipelined: written at once, their
replies matched to them in order (Redis answers a connection's commands in the order it
received them: https://redis.io/docs/latest/develop/use/pipelining/).

Replies are parsed by ``hiredis.Reader`` with redis-py's own error mapping
(``redis._parsers.BaseParser.parse_error``: ``-OOM ...`` becomes ``OutOfMemoryError``,
``-NOSCRIPT`` ``NoScriptError`` and so on), handed back as values, not raised. The wire
format is RESP2: https://redis.io/docs/latest/develop/reference/protocol-spec/.

A request waits at most its timeout; when the oldest one has waited that long the
connection is aborted and *every* waiting request fails (``redis.TimeoutError``): a reply
that comes later arrives on no connection, so it can never be taken for another
request's. A closed or broken connection fails them with ``redis.ConnectionError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import hiredis
import redis
from redis._parsers import BaseParser
from redis.exceptions import InvalidResponse


class RedisPipe(asyncio.Protocol):
    """The protocol of one connection; made by ``loop.create_connection``. Use from the
    loop's thread only."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        # (reply future, deadline on the loop's clock), oldest first.
        self._waiting: deque[tuple[asyncio.Future[object], float]] = deque()
        self._outgoing: list[bytes] = []  # commands not yet written (see request)
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._broken: redis.RedisError | None = None
        #: The loop's time of the last reply (or of the connect): how long it sat idle.
        self.last_heard = self._loop.time()

    @property
    def open(self) -> bool:
        return self._transport is not None and self._broken is None

    @property
    def busy(self) -> bool:
        """Requests are waiting for their replies."""
        return bool(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A write transport, though not an asyncio.Transport instance under uvloop.
        self._transport = cast(asyncio.Transport, transport)
        self.last_heard = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(redis.ConnectionError(f"Connection closed by server{reason}"))

    def eof_received(self) -> bool:
        return False  # close the transport: Redis never half-closes a connection it serves

    def request(self, packed: bytes, timeout_s: float) -> asyncio.Future[object]:
        """Write ``packed`` (one command in RESP) and return the future of its reply: the
        reply value, an error reply as a ``redis.ResponseError`` value; or the future
        fails with ``redis.ConnectionError`` / ``redis.TimeoutError``. Raises
        ``redis.ConnectionError`` when the connection is already closed."""
        if self._transport is None or self._broken is not None:
            raise self._broken or redis.ConnectionError("Connection not open")
        reply = self._loop.create_future()
        deadline = self._loop.time() + timeout_s
        self._waiting.append((reply, deadline))
        # Written once per loop iteration: the claims of every delivery the iteration
        # served go out in one send() (a system call apiece cost more than the claim).
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
        return reply

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and self._broken is None:
            self._transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                if not waiting:
                    raise InvalidResponse("a reply to no request")
                future, _ = waiting.popleft()
                if not future.done():  # its caller may have been cancelled
                    future.set_result(reply)
        except InvalidResponse as error:
            self.abort(redis.ConnectionError(f"Protocol error: {error}"))
        self.last_heard = self._loop.time()

    def abort(self, error: redis.RedisError) -> None:
        """Drop the connection now (unsent data too) and fail every waiting request with
        ``error``."""
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _check_deadline(self) -> None:
        # One timer for the whole queue: armed for the oldest request's deadline, and
        # re-armed for the next oldest when that one has been answered meanwhile.
        self._watchdog = None
        if not self._waiting or self._broken is not None:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() + _CLOCK_SLACK_S >= deadline:
            self.abort(redis.TimeoutError("Timeout reading from redis"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)

    def _fail(self, error: redis.RedisError) -> None:
        if self._broken is None:
            self._broken = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


# A timer may fire up to the clock's resolution early (asyncio runs handles due within it).
_CLOCK_SLACK_S = 0.001

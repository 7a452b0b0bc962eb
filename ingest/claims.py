"""Claims pipelined over one asyncio connection: :meth:`DedupGate.admit` for a receiver
that serves deliveries in an event loop.

A blocking claim holds its thread for the round trip, so a loop serving deliveries would
either stall on it or pay a thread hand-off per delivery. Here every delivery's claim
script is written to the process's one Redis connection at once (``EVALSHA``, RESP2)
and its reply awaited; replies come back in order and are matched to a FIFO of futures
(:class:`ingest.redis_pipe.RedisPipe`). Same script, same arguments, same answers and
the same errors as the gate's, at a fraction of its CPU per claim: redis-py's clients
(``redis.asyncio`` included, which also takes one pooled connection per concurrent
command) spend far more Python around a command than the command costs.

What the gate's connection does, this one does too (:mod:`models.broker.redis_links`,
``ingest.dedup._Lane``): it dials with the gate's client's own parameters (address,
``unix://``, TLS, username / password, database, timeouts, TCP keepalive; a Sentinel
pool is asked for the primary on every dial, in a thread), sends the script itself once
when Redis answers ``NOSCRIPT`` (a restart, a failover, ``SCRIPT FLUSH``), drops the
connection on a failover reply (``READONLY``, ``MASTERDOWN``, ``LOADING``,
``UNBLOCKED``), tries once more on a new dial after a connection error while the socket
timeout allows (a claim the first send made answers the second as a duplicate), never
after a timeout, and pings a connection idle past its health-check interval before using
it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import redis
from redis.asyncio.connection import RedisSSLContext
from redis.exceptions import NoScriptError
from redis.sentinel import SentinelConnectionPool

from ingest.dedup import (
    Admission,
    DedupGate,
    PipelineSetup,
    RateLimit,
    admission_from,
    pack_command,
    script_arguments,
)
from ingest.redis_pipe import RedisPipe
from models.broker.redis_links import FailoverReply, failover_code

log = logging.getLogger("hookfleet.ingest.claims")

_PING = pack_command(("PING",))


class PipelinedClaims:
    """One per event loop (per worker process). Claims over one Redis connection,
    pipelined; the connection is dialled at the first claim and again after it broke."""

    def __init__(self, setup: PipelineSetup) -> None:
        self._dial = _Dialler(setup.client.connection_pool)
        self._sha = setup.script_sha
        self._script = setup.script
        kwargs = setup.client.connection_pool.connection_kwargs
        self._timeout_s = float(kwargs.get("socket_timeout") or 2.0)
        self._idle_s = float(kwargs.get("health_check_interval") or 0)
        self._ping_timeout_s = min(1.0, self._timeout_s / 2)
        self._pipe: RedisPipe | None = None
        self._opening: asyncio.Future[RedisPipe] | None = None
        self._closed = False

    @classmethod
    def for_gate(cls, gate: DedupGate) -> PipelinedClaims | None:
        """A client doing what ``gate.admit`` does, or None when the gate's set-up needs
        the blocking path, so the caller runs ``gate.admit`` in a thread: dedup and
        broker on separate servers (no one script spans both; claim, publish and give
        back depend on each other's answers), or ``min_replicas`` > 0 (its ``WAIT``
        blocks the connection until the replicas answer, holding up every claim
        pipelined behind it)."""
        setup = gate.pipeline_setup
        return None if setup is None else cls(setup)

    async def admit(
        self,
        key: str,
        claim: str,
        ttl_s: int,
        queue: str,
        message: str,
        shed_depth: int = 0,
        *,
        confirm: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> Admission:
        """Same arguments, same :class:`Admission`, same exceptions as
        :meth:`DedupGate.admit` (``confirm`` has nothing to confirm: a gate with
        replicas to wait for is not pipelined). Raises ``redis.ConnectionError`` when
        Redis cannot be reached (:class:`FailoverReply` when it answers like a demoted
        node), ``redis.TimeoutError`` when it does not answer within the gate's socket
        timeout, ``redis.ResponseError`` (``OutOfMemoryError``, ...) for a refused
        script: nothing was claimed or queued. Call it from the loop's thread."""
        keys, args = script_arguments(
            key, claim, ttl_s, queue, message, shed_depth, False, rate_limit
        )
        evalsha = pack_command(("EVALSHA", self._sha, len(keys), *keys, *args))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self._run(evalsha, keys, args)
        except redis.ConnectionError:
            if loop.time() - started >= self._timeout_s:
                raise
            reply = await self._run(evalsha, keys, args)
        return admission_from(reply)

    async def aclose(self) -> None:
        """Close the connection (after a dial in progress, within its timeout); claims
        still waiting and any made later fail with ``redis.ConnectionError``, and none
        dials again."""
        self._closed = True
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._opening)
        if self._pipe is not None:
            self._pipe.abort(redis.ConnectionError("Connection closed by the client"))
            self._pipe = None

    async def _run(self, evalsha: bytes, keys: list[str], args: list[Any]) -> bytes | int | None:
        pipe = await self._ready_pipe()
        reply = await pipe.request(evalsha, self._timeout_s)
        if isinstance(reply, NoScriptError):
            # Redis restarted, failed over or flushed its scripts: send the script once
            # (Redis caches it again for the next EVALSHA).
            command = ("EVAL", self._script, len(keys), *keys, *args)
            reply = await pipe.request(pack_command(command), self._timeout_s)
        if isinstance(reply, redis.ResponseError):
            code = failover_code(reply)
            if code is not None:
                error = FailoverReply(code, str(reply))
                log.warning(
                    "redis failover reply: connection dropped, dialling again",
                    extra={"code": code, "address": self._dial.where},
                )
                pipe.abort(error)
                raise error
            raise reply  # out of memory, a script error: nothing written
        if isinstance(reply, redis.RedisError):
            # An error reply redis-py maps outside ResponseError, e.g. LOADING (a restarted
            # Redis reading its AOF) as BusyLoadingError, a ConnectionError: transient,
            # answered 503 with a warning as the blocking gate answers it.
            raise reply
        if reply is not None and not isinstance(reply, bytes | int):
            raise redis.ResponseError(f"unexpected reply to the claim script: {reply!r}")
        return reply

    async def _ready_pipe(self) -> RedisPipe:
        if self._closed:
            raise redis.ConnectionError("The claim client is closed")
        pipe = self._pipe
        if pipe is not None and pipe.open and not self._idle_too_long(pipe):
            return pipe
        if self._opening is None:
            opening = asyncio.ensure_future(self._open(pipe))
            opening.add_done_callback(self._opened)
            self._opening = opening
        # Shielded: a delivery whose caller went away must not cancel everyone's dial.
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[RedisPipe]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved: each waiting claim raises it itself

    def _idle_too_long(self, pipe: RedisPipe) -> bool:
        loop_time = asyncio.get_running_loop().time()
        return bool(self._idle_s) and not pipe.busy and loop_time - pipe.last_heard > self._idle_s

    async def _open(self, pipe: RedisPipe | None) -> RedisPipe:
        """``pipe`` if it is open and answers a ping (it was idle), else a new dial."""
        if pipe is not None and pipe.open:
            try:
                await pipe.request(_PING, self._ping_timeout_s)
                return pipe
            except (redis.ConnectionError, redis.TimeoutError) as error:
                # A NAT or proxy dropped it silently: this costs one delivery a fraction
                # of a second rather than a 503.
                log.warning(
                    "idle redis connection did not answer a ping: dialling again",
                    extra={"error": type(error).__name__},
                )
                pipe.abort(redis.ConnectionError("idle connection dropped"))
        pipe = await self._dial()
        if self._closed:  # closed while dialling: not to be left open
            pipe.abort(redis.ConnectionError("Connection closed by the client"))
            raise redis.ConnectionError("The claim client is closed")
        self._pipe = pipe
        return pipe


class _Dialler:
    """Opens a :class:`RedisPipe` the way the gate's redis-py pool opens a connection,
    from its ``connection_kwargs`` (redis-py ``Connection`` / ``SSLConnection`` /
    ``UnixDomainSocketConnection`` parameters; a ``SentinelConnectionPool`` names the
    primary) and its connection class."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        kwargs = pool.connection_kwargs
        self._kwargs = kwargs
        self._connect_timeout_s = float(
            kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 2.0
        )
        is_tls = issubclass(pool.connection_class, redis.SSLConnection)
        self._tls = _tls_context(kwargs) if is_tls else None
        self.where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"

    async def __call__(self) -> RedisPipe:
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if "path" in self._kwargs:
                    transport, pipe = await loop.create_unix_connection(
                        RedisPipe, self._kwargs["path"]
                    )
                else:
                    host, port = await self._address()
                    self.where = f"{host}:{port}"
                    transport, pipe = await loop.create_connection(
                        RedisPipe,
                        host,
                        port,
                        ssl=self._tls,
                        server_hostname=host if self._tls is not None else None,
                    )
                    self._keepalive(transport)
                await self._handshake(pipe)
        except TimeoutError:
            _close(transport)
            raise redis.TimeoutError(f"Timeout connecting to {self.where}") from None
        except OSError as error:
            _close(transport)
            raise redis.ConnectionError(f"Error connecting to {self.where}: {error}") from None
        except BaseException:
            _close(transport)
            raise
        return pipe

    async def _address(self) -> tuple[str, int]:
        pool = self._pool
        if isinstance(pool, SentinelConnectionPool) and pool.is_master:
            # Asked on every dial (a blocking client: in a thread), so a dial after a
            # failover reaches whatever Sentinel now names.
            return await asyncio.to_thread(pool.get_master_address)
        return self._kwargs.get("host") or "localhost", int(self._kwargs.get("port") or 6379)

    def _keepalive(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is None or not self._kwargs.get("socket_keepalive"):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (self._kwargs.get("socket_keepalive_options") or {}).items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

    async def _handshake(self, pipe: RedisPipe) -> None:
        """AUTH, SELECT and CLIENT SETNAME as redis-py's ``on_connect`` sends them (RESP2),
        pipelined; an error reply raises it (``AuthenticationError`` is a
        ``redis.ConnectionError``)."""
        kwargs = self._kwargs
        username, password = kwargs.get("username"), kwargs.get("password")
        provider = kwargs.get("credential_provider")
        if provider is not None:
            credentials = await asyncio.to_thread(provider.get_credentials)
            username, password = (None, *credentials)[-2:]
        commands: list[tuple[object, ...]] = []
        if password is not None:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if kwargs.get("client_name"):
            commands.append(("CLIENT", "SETNAME", kwargs["client_name"]))
        if kwargs.get("db"):
            commands.append(("SELECT", kwargs["db"]))
        replies = [pipe.request(pack_command(c), self._connect_timeout_s) for c in commands]
        for reply in replies:
            answer = await reply
            if isinstance(answer, Exception):
                pipe.abort(redis.ConnectionError(str(answer)))
                raise answer


def _tls_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py's ``SSLConnection`` would use, built by redis-py's own
    asyncio ``RedisSSLContext`` from the same ``ssl_*`` parameters."""
    # SSLConnection's defaults where the URL set nothing: verify the certificate and name.
    options: dict[str, Any] = {
        "cert_reqs": kwargs.get("ssl_cert_reqs", "required"),
        "check_hostname": kwargs.get("ssl_check_hostname", True),
    }
    for name in (
        "keyfile",
        "certfile",
        "ca_certs",
        "ca_data",
        "ca_path",
        "min_version",
        "ciphers",
        "password",
    ):
        if kwargs.get(f"ssl_{name}") is not None:
            options[name] = kwargs[f"ssl_{name}"]
    return RedisSSLContext(**options).get()


def _close(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None:
        transport.close()

"""The dedup gate: claim an idempotency key and enqueue its job as one step.

With the dedup store and the broker on one Redis (the default), a single Lua script
checks the key, pushes the Celery message and sets the key, atomically: there is no
moment at which the key exists and the job does not. The push runs *before* the SET, so
even a script cut short by an error (OOM) can only leave a job without its key — a
harmless duplicate the database's unique constraint absorbs — never a key without its
job.

On two different Redis servers no script can span both; then the gate claims, publishes,
and releases the claim when the publish fails (see :meth:`DedupGate._claim_then_publish`).

A provider may be rate limited (:class:`RateLimit`): a token bucket in Redis, checked
and spent inside the same script, so a limit costs no round trip (see
``ingest/token_bucket.lua``).

With ``min_replicas`` the gate also asks Redis to ``WAIT`` until that many replicas hold
the write, sent together with the write itself, and raises :class:`NotReplicated` when
they do not confirm it in time: a failover to a replica cannot then lose a delivery the
receiver accepted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from models.broker.lua import lua

log = logging.getLogger("hookfleet.ingest.dedup")

# KEYS: dedup key, queue[, rate bucket]. ARGV: claim, ttl, message, shed depth (0: never
# shed), '1' when a WAIT follows[, rate, burst]. Returns false (accepted), the prior
# claim (duplicate), 0 (shed: the queue is full) or a positive integer (rate limited:
# milliseconds until the bucket holds a token). The order: duplicate, shed, limited.
# A duplicate writes nothing, and WAIT waits for the replication offset of this
# connection's last command — in newer Redis versions, only of its last *write* (Redis
# 7.0 moves it with every command). So before a WAIT the script writes the claim it found
# again, unchanged (KEEPTTL): on every version the WAIT then confirms that the replicas
# hold the claim, and with it the original message pushed before it.
_CLAIM_AND_ENQUEUE = lua("ingest", "token_bucket", "claim_and_enqueue")
_TAKE_TOKEN = lua("ingest", "token_bucket", "take_token")

KEY_PREFIX = "hookfleet:dedup:"
RATE_PREFIX = "hookfleet:rate:"


def dedup_key(provider: str, event_id: str) -> str:
    """A compact key: 16 bytes of BLAKE2b over the event id, whatever its length."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()
    return f"{KEY_PREFIX}{provider}:{digest}"


@dataclass(frozen=True)
class RateLimit:
    """A sender's token bucket: ``per_second`` tokens (deliveries) flow in, up to
    ``burst`` (at least 1) wait; each accepted delivery takes one. Kept in Redis under
    ``key`` (:func:`rate_key`), by Redis's clock, so every receiver shares it."""

    key: str
    per_second: float
    burst: int


def rate_key(provider: str) -> str:
    """The Redis hash holding ``provider``'s bucket (``tokens``, ``at``)."""
    return f"{RATE_PREFIX}{provider}"


@dataclass(frozen=True)
class Admission:
    """What the gate decided. ``prior_claim`` is set for a duplicate: the value the
    first delivery stored (its correlation id). ``shed``: refused because the queue is
    at its limit; ``limited_ms``: refused by the sender's rate limit, a token will be
    there in this many milliseconds (at least 1). Refused, nothing was claimed or
    queued."""

    accepted: bool
    prior_claim: str | None = None
    shed: bool = False
    limited_ms: int = 0


class NotReplicated(Exception):
    """Fewer than ``wanted`` replicas confirmed the write within the wait. On one server
    the claim and its message stay on the primary, where a retry finds the claim (a
    duplicate), unless a failover loses both (then the retry is new). With a separate
    broker the claim has been given back: a retry is new."""

    def __init__(self, confirmed: int, wanted: int, wait_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas confirmed within {wait_ms} ms")
        self.confirmed = confirmed
        self.wanted = wanted
        self.wait_ms = wait_ms


@dataclass(frozen=True)
class PipelineSetup:
    """A gate's claim, for a pipelined client: the Redis client whose connection
    parameters it dials with, and the claim script (its SHA-1 for ``EVALSHA``)."""

    client: redis.Redis
    script_sha: str
    script: str


def script_arguments(
    key: str,
    claim: str,
    ttl_s: int,
    queue: str,
    message: str,
    shed_depth: int,
    wait_follows: bool,
    rate_limit: RateLimit | None,
) -> tuple[list[str], list[str | int | float]]:
    """KEYS and ARGV of the claim script (``claim_and_enqueue.lua``) for one delivery."""
    keys = [key, queue]
    args: list[str | int | float] = [claim, ttl_s, message, shed_depth, int(wait_follows)]
    if rate_limit is not None:
        keys.append(rate_limit.key)
        args += [rate_limit.per_second, rate_limit.burst]
    return keys, args


def admission_from(prior: bytes | str | int | None) -> Admission:
    """The claim script's answer as an :class:`Admission`: nil accepted, an integer
    shed (0) or rate limited (milliseconds), a string the prior claim (duplicate)."""
    if prior is None:
        return Admission(accepted=True)
    if isinstance(prior, int):
        return Admission(accepted=False, shed=prior == 0, limited_ms=prior)
    return Admission(accepted=False, prior_claim=_text(prior))


class DedupGate:
    """Claims idempotency keys and enqueues jobs. Raises ``redis.RedisError`` when it
    cannot do both; then nothing is left behind and the caller answers 503. With
    ``min_replicas``, raises :class:`NotReplicated` when too few replicas confirm."""

    def __init__(
        self,
        dedup: redis.Redis,
        broker: redis.Redis,
        *,
        same_server: bool,
        min_replicas: int = 0,
        replica_wait_ms: int = 200,
    ) -> None:
        self._dedup = dedup
        self._broker = broker
        self._same_server = same_server
        self._script = dedup.register_script(_CLAIM_AND_ENQUEUE)
        self._take_token = dedup.register_script(_TAKE_TOKEN)
        self._lane = _Lane(broker)
        self._min_replicas = min_replicas
        self._replica_wait_ms = replica_wait_ms

    def admit(
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
        """Claim ``key`` for ``ttl_s`` seconds and push ``message`` onto ``queue``.

        Accepted: the message is on the queue and the key is set. Duplicate: nothing
        was pushed. Shed: ``queue`` already holds ``shed_depth`` messages (0: no limit),
        so nothing was claimed or pushed and a retry later is a fresh delivery — the
        duplicate check comes first, so a duplicate is still answered as one.
        Limited (``rate_limit``, checked after the queue's depth): the bucket holds no
        token; nothing was claimed or pushed and no token taken. A duplicate takes no
        token either: only an accepted delivery does. Idempotent by construction:
        calling it again for the same key is a duplicate until the TTL ends.

        With ``min_replicas`` and ``confirm``, an accepted or duplicate admission is
        returned only once that many replicas hold the claim and its message; otherwise
        it raises :class:`NotReplicated`. ``confirm=False`` skips the wait.
        """
        replicas = self._min_replicas if confirm else 0
        if self._same_server:
            keys, args = script_arguments(
                key, claim, ttl_s, queue, message, shed_depth, bool(replicas), rate_limit
            )
            prior = self._run_script(keys, args, replicas)
        else:
            prior = self._claim_then_publish(
                key, claim, ttl_s, queue, message, shed_depth, replicas, rate_limit
            )
        return admission_from(prior)

    @property
    def pipeline_setup(self) -> PipelineSetup | None:
        """What a pipelined client (:mod:`ingest.claims`) needs to do what :meth:`admit`
        does, or None when this gate's set-up cannot be pipelined: dedup and broker on
        different servers (claim, publish and give back are separate round trips that
        depend on each other), or ``min_replicas`` (a ``WAIT`` blocks its connection
        until the replicas answer, stalling every claim pipelined behind it)."""
        if not self._same_server or self._min_replicas:
            return None
        return PipelineSetup(
            client=self._dedup, script_sha=self._script.sha, script=_CLAIM_AND_ENQUEUE
        )

    def _run_script(
        self, keys: list[str], args: list[str | int | float], replicas: int
    ) -> bytes | str | int | None:
        """The script, and with ``replicas`` a ``WAIT`` for them, in one round trip
        (without MULTI: inside a transaction WAIT would not block). ``EVALSHA``, and the
        script itself only when Redis does not have it cached."""
        wait = [("WAIT", replicas, self._replica_wait_ms)] if replicas else []
        for command, script in (("EVALSHA", self._script.sha), ("EVAL", self._script.script)):
            prior, *confirmed = self._lane.call((command, script, len(keys), *keys, *args), *wait)
            # A promoted replica or a restarted primary has no scripts cached: send the
            # script itself once (Redis caches it), waiting again for what it wrote.
            if not isinstance(prior, NoScriptError):
                break
        if isinstance(prior, Exception):
            raise prior  # out of memory, too few replicas to write, ...: nothing written
        if not replicas:
            return prior
        if isinstance(confirmed[0], Exception):
            raise confirmed[0]
        if not isinstance(prior, int) and confirmed[0] < replicas:  # refused: nothing written
            raise NotReplicated(confirmed[0], replicas, self._replica_wait_ms)
        return prior

    def _claim_then_publish(
        self,
        key: str,
        claim: str,
        ttl_s: int,
        queue: str,
        message: str,
        shed_depth: int,
        replicas: int,
        rate_limit: RateLimit | None,
    ) -> bytes | str | int | None:
        prior = self._dedup.get(key)
        if prior is not None:
            # Not confirmed: the claim is on the dedup Redis, out of the broker's WAIT.
            # Its original was confirmed (202) or gave it back (503) — or, for a retry
            # racing its original, is still waiting: the gap of this setup.
            return prior
        if shed_depth and self._broker.llen(queue) >= shed_depth:
            return 0
        if rate_limit is not None:
            # A round trip more, in this setup only. A token taken here is spent even
            # if the claim then finds a racing duplicate or the publish fails.
            wait_ms = int(
                self._take_token([rate_limit.key], [rate_limit.per_second, rate_limit.burst])
            )
            if wait_ms:
                return wait_ms
        if not self._dedup.set(key, claim, nx=True, ex=ttl_s):
            return self._dedup.get(key) or b""
        try:
            confirmed = self._publish(queue, message, replicas)
        except redis.RedisError:
            # Give the key back so the provider's retry is not mistaken for a duplicate.
            # If the dedup store fails too, the claim lapses with its TTL: the one window
            # where this (non-atomic) setup can drop a retry — the README says so.
            self._dedup.delete(key)
            raise
        if confirmed < replicas:
            # The broker may lose the message in a failover while the dedup store keeps
            # the claim: give it back, so the retry is accepted anew. If the message
            # survives after all, the second copy meets the database's unique constraint.
            self._dedup.delete(key)
            raise NotReplicated(confirmed, replicas, self._replica_wait_ms)
        return None

    def _publish(self, queue: str, message: str, replicas: int) -> int:
        """Push ``message``; with ``replicas``, WAIT for them in the same round trip.
        Returns how many replicas confirmed (0 when none are wanted)."""
        if not replicas:
            self._broker.lpush(queue, message)
            return 0
        with self._broker.pipeline(transaction=False) as pipe:
            pipe.lpush(queue, message)
            pipe.wait(replicas, self._replica_wait_ms)
            _, confirmed = pipe.execute()
        return int(confirmed)


class _Lane:
    """A connection of the receiver thread's own for the gate's one command per delivery.

    The claim is the only Redis call on the receiver's hot path, and redis-py's pooled
    client spends more CPU around a command than the round trip itself: checking out a
    connection asks the socket for unread data (a system call, for every command), then
    locks, timeout switches and bookkeeping. A connection per thread, made by the same
    pool (address, TLS, password, database, timeouts, Sentinel), sent one packed write
    and read back, costs about half: see the README's Performance section.

    What the pool would otherwise do for it, it does itself, within one request:

    - A connection Redis closed (a restart, an idle timeout) or that answered like a
      demoted or loading node (``READONLY``, ``MASTERDOWN``, ``LOADING``: see
      :mod:`models.broker.redis_links`, whose connections drop themselves then) is dialled
      again once, if the first try left time within the socket timeout; the dial
      reaches the current primary. Sending twice is safe: a claim made by the first send
      answers the second as a duplicate. A timeout is not retried: the answer is 503
      within the timeout.
    - A connection idle for longer than its health-check interval is pinged first,
      with a short timeout, and replaced when the ping gets no answer: a connection a
      NAT or proxy dropped silently costs the delivery that finds it a fraction of a
      second, not a 503.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        timeout = self._pool.connection_kwargs.get("socket_timeout") or 2.0
        self._budget_s = float(timeout)
        self._ping_timeout_s = min(1.0, self._budget_s / 2)

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked process makes its own
            local.connection, local.pid = self._pool.make_connection(), os.getpid()
        return local.connection

    def call(self, *commands: Sequence[object]) -> list[Any]:
        """Send ``commands`` in one write and read their replies; an error reply (a
        ``ResponseError``) takes its command's place. Raises ``redis.RedisError`` when
        Redis cannot be reached, or :class:`models.broker.redis_links.FailoverReply` when the
        node dialled again still answers like a demoted one."""
        connection = self._connection()
        packed = b"".join(pack_command(command) for command in commands)
        started = monotonic()

        def round_trip() -> list[Any]:
            self._check_idle(connection)
            if not connection.is_connected:
                # Dial through connect(): with Sentinel, that is where the primary's
                # address is asked for (a send would dial the configured one).
                connection.connect()
            connection.send_packed_command([packed], check_health=False)
            return [_reply(connection) for _ in commands]

        try:
            return round_trip()
        except redis.ConnectionError:
            connection.disconnect()
            if monotonic() - started >= self._budget_s:
                raise
            return round_trip()

    def _check_idle(self, connection: Any) -> None:
        """Ping a connection idle past its health-check interval; drop it (to be dialled
        again by the send) when the ping fails or is not answered in time."""
        interval = getattr(connection, "health_check_interval", 0)
        if (
            not interval
            or not connection.is_connected
            or monotonic() < connection.next_health_check
        ):
            return
        try:
            connection.send_packed_command([pack_command(("PING",))], check_health=False)
            connection.read_response(timeout=self._ping_timeout_s)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning(
                "idle redis connection did not answer a ping: dialling again",
                extra={"error": type(error).__name__},
            )
            connection.disconnect()


def pack_command(command: Sequence[object]) -> bytes:
    """One command in RESP (a bulk string per argument; str() of a number), the way
    redis-py packs it but in a single bytes object."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        # The common types first, and a long argument (the message) copied once only,
        # by the join: this runs for every delivery.
        if type(arg) is str:
            data = arg.encode()
        elif type(arg) is bytes:
            data = arg
        else:
            data = str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except ResponseError as error:
        return error


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

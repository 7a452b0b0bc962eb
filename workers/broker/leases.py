"""Who holds an unacknowledged message: a lease of the live consumer that took it.

Stock kombu brings a message back only when it has been unacknowledged for the
visibility timeout, whether its worker died a second ago or is still busy with it. Here
every consuming process has an id and a lease key in Redis (``hookfleet.lease.<id>``,
``lease_s`` long) that a thread of that process renews every ``renew_s``; the pop
script (:mod:`workers.broker.transport`) records the owner of each message it takes
(``hookfleet.unacked_owner``: tag -> id; ``hookfleet.held.<id>``: tag -> the list it
came from). Every consumer, at start and then every few seconds, runs
:data:`RESTORE_LAPSED`: the messages of every owner whose lease key is gone go back to
the front of the list they came from, in one atomic step. A process that is alive keeps
its lease however long its tasks run; a process killed (or frozen past its lease) loses
its messages within ``lease_s`` plus one sweep. The layout kombu reads (``unacked``,
``unacked_index``, the queue lists, the message JSON) is unchanged, so a stock kombu
consumer still works, restoring by the visibility timeout only.

What a process has in hand is what its live channels hold (``Lease.in_hand``): after a
reconnect it keeps only the messages its running requests will settle
(``Lease.keep_only``), and the orphan check gives the rest back at once, counted.

Settling checks ownership: a consumer acknowledges or requeues a message only while it
still owns it. A frozen worker that wakes after its messages went to another consumer
settles nothing of theirs (its late work itself is made harmless by the database:
``workers.pipeline.record`` claims each event once).

Anchors: dramatiq's Redis broker (heartbeats, requeue of dead workers' messages),
BullMQ (lock renewal, stalled-job check), Sidekiq Pro ``super_fetch``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from models.broker.lua import lua
from models.perprocess import PerProcess

log = logging.getLogger("hookfleet.worker.leases")

LEASE_PREFIX = "hookfleet.lease."
HELD_PREFIX = "hookfleet.held."
OWNER_KEY = "hookfleet.unacked_owner"
CONSUMERS_KEY = "hookfleet.consumers"
#: kombu's ``Channel.sep``: a list key is the queue name, then this and a priority.
PRIORITY_SEP = "\x06\x16"

#: Held this long (seconds) without being in this process's hands, a message it still
#: owns in Redis is given back (an ack that could not reach Redis, a lost reply). A
#: message is in hand milliseconds after its pop, so a short age risks nothing; a pop
#: run later by the server side of a silently dropped connection (still blocked in its
#: wait there) comes back seconds after that pop, not minutes later.
ORPHAN_AFTER_S = 5.0

# KEYS: consumers set, unacked, unacked_index, owner hash. ARGV: lease prefix, held
# prefix. Returns {owner, list key, count} per list a lapsed owner held messages of.
RESTORE_LAPSED = lua("workers.broker", "raw_message", "restore_lapsed")

# KEYS: unacked, unacked_index, owner hash, this owner's held hash. ARGV: tag, owner,
# how ('ack'; 'front' or 'back': requeue at that end of its list). Returns 1 if
# settled, 0 if the message is not (or no longer) this owner's: nothing is touched.
SETTLE = lua("workers.broker", "raw_message", "settle")

# KEYS: unacked_index, owner hash. ARGV: the oldest index time still visible, lease
# prefix, limit. Tags unacknowledged since before it whose owner is unknown or lapsed:
# the visibility timeout's share (messages a stock consumer or basic_get took).
OVERDUE_UNLEASED = lua("workers.broker", "overdue_unleased")


@dataclass(frozen=True)
class Restored:
    """Messages of one lapsed owner put back on one list."""

    owner: str
    queue: str
    count: int


@cache
def restored_counter() -> Any:
    # Created on first use, after the worker chose its metrics directory.
    from prometheus_client import Counter

    return Counter(
        "hookfleet_messages_restored",
        "Unacknowledged messages put back on their queue, by queue and why: "
        "lease_expired (their consumer died or froze), visibility_timeout (an "
        "unleased message, e.g. taken by a stock worker), orphaned, shutdown.",
        ["queue", "reason"],
    )


def count_restored(queue: str, reason: str, n: int = 1) -> None:
    """Adds to ``hookfleet_messages_restored_total{queue,reason}``."""
    restored_counter().labels(queue=queue, reason=reason).inc(n)


def report_lapsed(rows: Iterable[Any], sep: str) -> list[Restored]:
    """Log and count what :data:`RESTORE_LAPSED` returned; ``sep`` splits priority."""
    restored = []
    for owner, key, count in rows:
        queue = _text(key).split(sep, 1)[0]
        item = Restored(_text(owner), queue, int(count))
        restored.append(item)
        count_restored(queue, "lease_expired", item.count)
        log.warning(
            "restored messages of a consumer whose lease lapsed",
            extra={"owner": item.owner, "queue": queue, "restored": item.count},
        )
    return restored


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Lease:
    """This process's lease: its consumer id, renewed by a daemon thread.

    One per process (messages taken on a channel that Celery since replaced are still
    this process's to finish), with the lease options of the first channel that
    consumed. ``attach(channel)`` starts it; Redis errors are logged and retried at the
    next renewal, never raised into the consumer. The thread ends with the process: a
    lease outlives a clean exit by at most ``lease_s`` (with nothing left to restore).
    """

    def __init__(self, lease_s: float, renew_s: float) -> None:
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.key = LEASE_PREFIX + self.consumer_id
        self.held_key = HELD_PREFIX + self.consumer_id
        #: Delivery tags this process took and has not settled, each with what holds it
        #: (the QoS of the channel it came on). Only that holder settles it: after a
        #: reconnect the same message may come back to this process on a new channel.
        self.in_hand: dict[str, object] = {}
        self.client: Any = None
        self._params: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_error_logged = float("-inf")
        #: Until then (monotonic), settles do not try Redis (a settle just failed to
        #: reach it); a successful renewal ends it early.
        self._unreachable_until = 0.0

    def take(self, tag: str, holder: object) -> None:
        """``holder`` (a channel's QoS) now has ``tag`` in hand."""
        self.in_hand[tag] = holder

    def holds(self, tag: str, holder: object) -> bool:
        return self.in_hand.get(tag) is holder

    def keep_only(self, tags: Iterable[str]) -> int:
        """What this process really holds after a reconnect: ``tags`` (messages a live
        request will still settle). Everything else it had in hand was dropped with the
        old connection (Celery forgets its reserved and scheduled requests then, and
        our collectors theirs) and would stay recorded as this live worker's, which no
        sweep restores; it is let go here, and the orphan check gives it back to its
        queue (at the next attach, or within ``renew_s`` once Redis answers). Returns
        how many were let go."""
        keep = set(tags)
        dropped = [tag for tag in list(self.in_hand) if tag not in keep]
        for tag in dropped:
            holder = self.in_hand.pop(tag, None)
            forget = getattr(holder, "forget", None)
            if forget is not None:
                forget(tag)
        if dropped:
            log.warning(
                "broker connection replaced: %d message(s) this worker no longer holds "
                "go back to their queue",
                len(dropped),
                extra={"consumer": self.consumer_id, "dropped": len(dropped)},
            )
        return len(dropped)

    def attach(self, channel: Any) -> None:
        """Use ``channel``'s server (a new one after a reconnect) and hold the lease.

        The lease talks to Redis on connections of its own (never the consumer's, which
        carry the pending pop and may be the half-open ones): short socket timeouts and
        no retries inside redis-py, a settle tried once more on a fresh connection, so
        a settle or a renewal fails within seconds whatever the network does."""
        params = channel._connparams()
        with self._lock:
            if params != self._params:
                self.client = redis.Redis(connection_pool=own_pool(channel))
                self._params = params
        self.renew()
        # Called on the consuming thread, between pops: whatever this process owns in
        # Redis but has not in hand is a reply lost with the previous connection.
        self.give_back_orphans(min_age_s=0)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hookfleet-lease", daemon=True)
            self._thread.start()

    def renew(self) -> bool:
        try:
            self.client.set(self.key, str(time.time()), px=int(self.lease_s * 1000))
            self._unreachable_until = 0.0
            return True
        except (RedisError, OSError) as error:
            self._log_error("renew", error)
            return False

    def _run(self) -> None:
        # The orphan check at every renewal (two small reads of this process's own
        # keys): an orphan comes back ORPHAN_AFTER_S + at most renew_s after its pop.
        while True:
            time.sleep(self.renew_s)
            self.renew()
            self.give_back_orphans(ORPHAN_AFTER_S)

    def give_back_orphans(self, min_age_s: float) -> None:
        """Messages Redis says this process owns, taken at least ``min_age_s`` ago, but
        it has not in hand: a pop whose reply was lost with its connection, a settle
        that never reached Redis. Back to the front of their list."""
        given: dict[str, int] = {}
        try:
            held = self.client.hkeys(self.held_key)
            scores = self.client.zmscore("unacked_index", held) if held else []
            in_hand = set(self.in_hand)
            cutoff = time.time() - min_age_s
            orphans = [
                _text(tag)
                for tag, score in zip(held, scores, strict=True)
                if _text(tag) not in in_hand and (score is None or score <= cutoff)
            ]
            for tag, list_key in zip(orphans, self._lists_of(orphans), strict=True):
                if self.settle(self.client, tag, "front"):
                    queue = _text(list_key or b"?").split(PRIORITY_SEP, 1)[0]
                    given[queue] = given.get(queue, 0) + 1
        except (RedisError, OSError) as error:
            self._log_error("orphan check", error)
        for queue, count in given.items():
            count_restored(queue, "orphaned", count)
            log.warning(
                "gave back messages this worker owned but no longer held",
                extra={"consumer": self.consumer_id, "queue": queue, "restored": count},
            )

    def _lists_of(self, tags: list[str]) -> list[Any]:
        return list(self.client.hmget(self.held_key, tags)) if tags else []

    def settle(self, client: Any, tag: str, how: str) -> bool:
        """Ack (``how='ack'``) or requeue (``'front'``/``'back'``) ``tag`` if this
        process still owns it; False when it does not (nothing touched)."""
        done = client.eval(script_text(client, SETTLE), *self._settle_call(tag, how))
        self.in_hand.pop(tag, None)
        return bool(done)

    def settle_many(self, tags: list[str], how: str) -> list[bool]:
        """:meth:`settle` for many tags in one round trip on the lease's own
        connection (a batch's acks, a shutdown's hand-back). Raises RedisError/OSError
        when Redis cannot be reached: the caller lets go of the tags then
        (:meth:`let_go`), and the orphan check or the lease sweep gives them back."""
        if not tags:
            return []
        if time.monotonic() < self._unreachable_until:
            # One bounded failure is enough to know: a shutdown with a batch's acks
            # and a hand-back to send does not wait on a dead network for each.
            raise RedisConnectionError("broker unreachable a moment ago; not retried yet")
        try:
            try:
                done = self._settle_all(tags, how)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # The connection was dropped (half-open, a failover reply): once more,
                # on a fresh one. The script is owner-checked: a second run of a settle
                # that did land changes nothing.
                done = self._settle_all(tags, how)
        except (RedisError, OSError):
            self._unreachable_until = time.monotonic() + self.lease_s
            raise
        for tag in tags:
            self.in_hand.pop(tag, None)
        return [bool(d) for d in done]

    def _settle_all(self, tags: list[str], how: str) -> list[Any]:
        client = self.client
        script = script_text(client, SETTLE)
        with client.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.eval(script, *self._settle_call(tag, how))
            return list(pipe.execute())

    def _settle_call(self, tag: str, how: str) -> tuple[Any, ...]:
        """SETTLE's key count, keys and arguments (settle.lua) for ``tag``."""
        keys = ("unacked", "unacked_index", OWNER_KEY, self.held_key)
        return (len(keys), *keys, tag, self.consumer_id, how)

    def let_go(self, tag: str) -> None:
        """No longer in hand (a settle that could not reach Redis): the orphan check
        gives it back once Redis answers."""
        self.in_hand.pop(tag, None)

    def _log_error(self, what: str, error: BaseException) -> None:
        if time.monotonic() - self._last_error_logged >= 5:
            self._last_error_logged = time.monotonic()
            log.warning("lease %s failed, retrying: %r", what, error)


#: The lease's own connections: each dial and each command gives up after this long.
LEASE_SOCKET_TIMEOUT_S = 2.0


def own_pool(channel: Any) -> redis.ConnectionPool:
    """A new connection pool to ``channel``'s server (kombu's ``_get_pool`` builds a
    fresh one each call, Sentinel included) whose connections give up after
    :data:`LEASE_SOCKET_TIMEOUT_S` and never retry by themselves: redis-py nests a
    connection's retries (the dial, its health check, the command), which multiplied a
    few seconds into minutes on a dead network. :meth:`Lease.settle_many` tries once
    more on a fresh connection instead."""
    pool = channel._get_pool()
    pool.connection_kwargs.update(
        socket_timeout=LEASE_SOCKET_TIMEOUT_S,
        socket_connect_timeout=LEASE_SOCKET_TIMEOUT_S,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )
    return pool


# Which servers know script flags, by connection pool: a fact about a server, not a
# connection, so a forked child may inherit it (no PerProcess needed).
_flags: dict[int, str] = {}


def script_text(client: Any, body: str) -> str:
    """``body`` with ``allow-oom`` where the server knows script flags (Redis 7):
    settling frees memory, so a full Redis must still run it."""
    key = id(client.connection_pool)
    if key not in _flags:
        major = int(str(client.info("server")["redis_version"]).split(".")[0])
        _flags[key] = "#!lua flags=allow-oom\n" if major >= 7 else ""
    return _flags[key] + body


# A forked child (a prefork pool process) gets its own lease: the parent's renewal
# thread and connections are not the child's (models.perprocess).
_lease: PerProcess[Lease] = PerProcess()


def process_lease(lease_s: float, renew_s: float) -> Lease:
    """This process's lease (created on first use; a forked child gets its own)."""
    return _lease.get(lambda: Lease(lease_s, renew_s))


def current_lease() -> Lease | None:
    """This process's lease, or None if no Hookfleet consumer took one (a stock
    transport)."""
    return _lease.peek()

"""kombu's Redis transport, with a pop that cannot lose a message and leases.

Stock kombu consumes with ``BRPOP`` and records the message as unacknowledged
(``ZADD unacked_index`` + ``HSET unacked``) in a second round trip. A worker killed, or a
Redis restarted, between the two loses the message: it is in no queue, not in
``unacked``, and no database row exists yet. Under a steady stream that gap is hit by a
plain ``kill -9`` (the fault suite found it). Here the pop and the record are one Lua
script, so at every instant a message is either on its queue or in ``unacked``; the
same script records this process as the message's owner (:mod:`workers.broker.leases`).

A script cannot block, so an idle consumer waits with ``BLMOVE q q RIGHT RIGHT`` on its
first queue -- a blocking no-op rotation that returns as soon as that list has an item,
pops nothing -- pipelined with the pop script. A busy consumer sends only the script.
Acks, requeues and restores of the messages it took go through the owner-checked
script of :mod:`workers.broker.leases`; kombu's periodic ``restore_visible`` runs the lease
sweep (and the visibility timeout only for messages no lease covers). Publishing and
fanout are kombu's own.

Selected by ``broker_transport`` in :mod:`workers.celery_app`; the broker URL stays
``redis://``. Needs Redis 7 for ``allow-oom`` (below); older servers get the same
script without it and stop consuming while Redis is full, as stock kombu does.
Private kombu names this relies on are listed (and checked) in tests/integration/test_transport.py.
"""

from __future__ import annotations

import logging
from time import monotonic, time
from typing import Any
from weakref import WeakSet

from kombu.exceptions import InconsistencyError
from kombu.transport import redis as kredis
from kombu.transport import virtual
from kombu.utils.json import loads
from kombu.utils.objects import cached_property
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError
from redis.retry import Retry

from models.broker.lua import lua
from models.broker.redis_links import HEALTH_CHECK_S
from workers.broker.leases import (
    CONSUMERS_KEY,
    HELD_PREFIX,
    LEASE_PREFIX,
    OVERDUE_UNLEASED,
    OWNER_KEY,
    RESTORE_LAPSED,
    Lease,
    count_restored,
    process_lease,
    report_lapsed,
    script_text,
)

log = logging.getLogger(__name__)

#: Where a message that is not kombu JSON goes instead of wedging the consumer.
UNREADABLE_KEY = "hookfleet.unreadable"

# KEYS: the queue keys in poll order, then unacked, unacked_index, the unreadable list,
# the owner hash, this consumer's held hash, the consumers set (workers.broker.leases).
# ARGV: the number of queue keys, the time to index the message at, the consumer's id.
# Reads and checks before the first write: a script that fails part way is not undone.
# ``allow-oom``: consuming moves bytes from a list into the hash, it does not grow
# Redis; without the flag a full Redis (noeviction) would refuse the script and the
# workers could not drain the very queue that filled it.
_POP_BODY = lua("workers.broker", "pop")

# KEYS: unacked, unacked_index; ARGV: the delivery tag. kombu acknowledges in a
# MULTI/EXEC block, and a full Redis refuses every command queued in one: the workers
# could take messages but not let go of them.
_ACK_BODY = lua("workers.broker", "ack")

#: Longest idle wait when a consumer reads several queues (it wakes only for the first).
MULTI_QUEUE_WAIT_S = 0.1
#: At most one "connection was replaced" line per channel this often (seconds).
SKIP_LOG_EVERY_S = 5.0
#: A key nobody pushes to: ``BLPOP`` on it is a sleep that a full Redis still allows.
IDLE_KEY = "hookfleet.consumer.idle"
#: The idle sleep while Redis is full, and how long to keep using it before trying the
#: waking wait again.
FULL_REDIS_WAIT_S = 0.1
FULL_REDIS_RETRY_S = 10.0


class QoS(kredis.QoS):
    """Settles through the owner-checked script of :mod:`workers.broker.leases` the messages
    the pop script took (and recorded as this process's), and restores by lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags taken by the pop script on this channel and not settled yet.
        self._leased: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.recorded:
            self.channel.recorded.remove(delivery_tag)
            self._leased.add(delivery_tag)
            self.channel.lease.take(delivery_tag, self)
            virtual.QoS.append(self, message, delivery_tag)
        else:  # basic_get and other paths that did not go through the script
            super().append(message, delivery_tag)

    def forget(self, delivery_tag: str) -> None:
        """The lease let go of this message (workers.broker.leases.Lease.keep_only): nothing of
        this channel may settle it any more, nor restore it when the channel closes."""
        # Still "leased" here: a late ack or reject of it is then bookkeeping only,
        # never kombu's own restore through the (maybe dead) channel.
        self._delivered.pop(delivery_tag, None)

    # A channel outlives its broker connection: after a connection loss Celery
    # reconnects on a new channel, while batches taken on the old one still finish
    # (or are cancelled) and ack or requeue their messages on it. kombu has by then
    # torn down the old transport, and touching Redis through it raises an
    # AttributeError that Celery treats as unrecoverable: the worker exits instead of
    # consuming again (found by the fault suite's Redis restart). So a detached channel
    # settles through the process lease's own connection; if Redis cannot be reached
    # at all the message stays this process's in ``unacked`` and the lease thread gives
    # it back later (workers.broker.leases.ORPHAN_AFTER_S).

    _skipped = 0
    _skip_logged_at = float("-inf")

    def _detached(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return transport is None or getattr(transport, "client", None) is None

    def _skip(self, what: str, count: int) -> None:
        # A cancelled batch settles fifty messages at once: one line per few seconds.
        self._skipped += count
        if monotonic() - self._skip_logged_at < SKIP_LOG_EVERY_S:
            return
        log.warning(
            "broker unreachable: %d message(s) left to the lease's orphan check or the "
            "visibility timeout (latest: %s)",
            self._skipped,
            what,
        )
        self._skipped = 0
        self._skip_logged_at = monotonic()

    _lost = 0
    _lost_logged_at = float("-inf")

    def _taken_over(self, how: str) -> None:
        # A thawed worker settles its whole backlog at once: one line per few seconds.
        self._lost += 1
        if monotonic() - self._lost_logged_at < SKIP_LOG_EVERY_S:
            return
        log.warning(
            "this worker's lease had lapsed: %d message(s) it held were taken over and "
            "are left to their new holder (latest: %s)",
            self._lost,
            how,
        )
        self._lost = 0
        self._lost_logged_at = monotonic()

    def _settle_leased(self, tag: str, how: str) -> None:
        """Ack or requeue a message this process owns; a copy another consumer took
        over meanwhile (our lease lapsed) is left alone."""
        self.settle_many([tag], how)
        self._leased.discard(tag)

    def settle_many(self, tags: list[str], how: str) -> int:
        """Ack (``how='ack'``) or requeue (``'front'``/``'back'``) the messages among
        ``tags`` this channel still holds, in one round trip on the lease's own
        connection (never the channel's: it carries the pending pop, and may be the
        half-open one). Tags already settled, or let go after a reconnect, are left
        alone. If Redis cannot be reached the messages are let go: the lease's orphan
        check gives them back once it answers, or the others' sweep if this worker dies."""
        lease = self.channel.lease
        mine = [tag for tag in dict.fromkeys(tags) if lease.holds(tag, self)]
        if not mine:
            return 0
        try:
            settled = lease.settle_many(mine, how)
        except (RedisError, OSError, AttributeError):
            for tag in mine:
                lease.let_go(tag)
            self._skip(how, len(mine))
            return 0
        for done in settled:
            if not done:
                self._taken_over(how)
        return sum(settled)

    def restore_unacked(self, client: Any = None) -> None:
        # The channel closes (a reconnect or a shutdown): what it still holds goes back
        # to the front of its queue, in one round trip, counted.
        leased = [t for t in self._delivered if t in self._leased]
        queue = self._queue_of(leased[0]) if leased else ""
        if restored := self.settle_many(leased, "front"):
            count_restored(queue, "channel_closed", restored)  # a channel consumes one queue
        for tag in leased:
            self._leased.discard(tag)
            virtual.QoS.ack(self, tag)
        self._flush()
        if not self._delivered:
            return
        if not self._detached():
            try:
                return super().restore_unacked(client)
            except self.channel.connection_errors:
                pass
        self._skip("restore", len(self._delivered))
        self._delivered.clear()

    def _queue_of(self, tag: str) -> str:
        message = self._delivered.get(tag)
        info = getattr(message, "delivery_info", None) or {}
        return str(info.get("routing_key") or "?")

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Every call: the messages of lapsed leases. Every ``interval``-th call, as
        kombu does: unleased messages older than the visibility timeout."""
        self._vrestore_count += 1
        with self.channel.conn_or_acquire() as client:
            lapsed = client.eval(
                script_text(client, RESTORE_LAPSED),
                4,
                CONSUMERS_KEY,
                self.unacked_key,
                self.unacked_index_key,
                OWNER_KEY,
                LEASE_PREFIX,
                HELD_PREFIX,
            )
            report_lapsed(lapsed, self.channel.sep)
            if (self._vrestore_count - 1) % (interval or 1):
                return
            overdue = client.eval(
                OVERDUE_UNLEASED,
                2,
                self.unacked_index_key,
                OWNER_KEY,
                time() - self.visibility_timeout,
                LEASE_PREFIX,
                num or 1000,
            )
            for tag in overdue:
                entry = client.hget(self.unacked_key, tag)
                self.restore_by_tag(tag, client)
                client.hdel(OWNER_KEY, tag)
                if entry:
                    queue = str(loads(kredis.bytes_to_str(entry))[2])
                    count_restored(queue, "visibility_timeout")
                    log.warning(
                        "restored an unleased message after the visibility timeout",
                        extra={"queue": queue, "tag": kredis.bytes_to_str(tag)},
                    )

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:
            self.ack(delivery_tag)
        elif delivery_tag in self._leased:
            # To the front: a batch whose pool process died was next in line.
            self._settle_leased(delivery_tag, "front")
            virtual.QoS.ack(self, delivery_tag)
        elif self._detached():
            self._skip("requeue", 1)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().reject(delivery_tag, requeue=True)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self._leased:
            self._settle_leased(delivery_tag, "ack")
        elif self._detached():
            self._skip("ack", 1)
        else:
            with self.channel.conn_or_acquire() as client:
                client.eval(
                    self.channel.script(_ACK_BODY),
                    2,
                    self.unacked_key,
                    self.unacked_index_key,
                    delivery_tag,
                )
        virtual.QoS.ack(self, delivery_tag)


class Channel(kredis.Channel):
    QoS = QoS

    #: Seconds a consumer's lease lasts unrenewed, and how often it is renewed
    #: (transport options ``hookfleet_lease_s``, ``hookfleet_lease_renew_s``).
    hookfleet_lease_s = 10.0
    hookfleet_lease_renew_s = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:  # keys would need prefixing inside the scripts
            raise InconsistencyError("global_keyprefix is not supported by Hookfleet")
        options = self.connection.client.transport_options
        self.hookfleet_lease_s = float(options.get("hookfleet_lease_s", self.hookfleet_lease_s))
        self.hookfleet_lease_renew_s = float(
            options.get("hookfleet_lease_renew_s", self.hookfleet_lease_renew_s)
        )
        #: Delivery tags popped by the script whose QoS.append is still to come.
        self.recorded: set[str] = set()
        CHANNELS.add(self)
        self._idle = True
        self._pending = 0
        self._plain_wait_until = 0.0

    @property
    def lease(self) -> Lease:
        return process_lease(self.hookfleet_lease_s, self.hookfleet_lease_renew_s)

    def _receive_one(self, c: Any) -> Any:
        """kombu's read of one pub/sub reply (broadcast, remote control), never without
        a time limit.

        kombu calls ``PubSub.parse_response()``, which in redis-py 8 blocks: it dials a
        dropped connection again and reads with *no* socket timeout
        (``redis/client.py`` ``PubSub.parse_response``, ``read_timeout = None``). After
        kombu dropped a silent pub/sub connection (a half-open proxy), the re-dialled
        one answered nothing and the main thread waited in ``recvfrom`` for good: the
        worker renewed its lease but never consumed again, and SIGTERM did not end it
        (issue 17). Here the wait is the channel's ``socket_timeout``: no reply by then
        is no message; a reply cut off is a TimeoutError, a connection error kombu
        reconnects on."""
        original = c.parse_response
        timeout = self.socket_timeout or 1.0

        def bounded(block: bool = True, timeout_s: float = 0) -> Any:
            return original(block=False, timeout=timeout)

        c.parse_response = bounded
        try:
            return super()._receive_one(c)
        finally:
            del c.parse_response

    def settle_many(self, tags: list[str], how: str) -> int:
        """Settle many messages taken on this channel in one round trip (a batch's
        acks or requeues, a shutdown's hand-back); see :meth:`QoS.settle_many`. The
        per-message ``ack``/``reject`` that follow are then bookkeeping only. Returns
        how many were settled."""
        return int(self.qos.settle_many(tags, how))

    def _size(self, queue: str) -> int:
        """The messages waiting on ``queue`` (kombu's count over its priority lists),
        read without ``MULTI``.

        kombu sends the ``LLEN`` commands in a transaction; Redis 7 refuses every command
        queued in ``MULTI`` while used memory is over ``maxmemory`` (``src/server.c``
        ``processCommand``: "queuing may consume an unlimited amount of memory"), so the
        queue declaration a consumer makes when it (re)connects failed with
        ``OutOfMemoryError`` and Celery stopped the worker ("Unrecoverable error").
        The count needs no atomicity: it is only the declaration's message count."""
        with self.conn_or_acquire() as client:
            with client.pipeline(transaction=False) as pipe:
                for priority in self.priority_steps:
                    pipe.llen(self._q_for_pri(queue, priority))
                return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """kombu's binding of ``queue`` to ``exchange``; while Redis refuses writes for
        memory, a binding it already holds (or one kombu refreshes on its own) is kept
        as it is and the consumer starts anyway.

        Every consumer start and reconnect binds its queues again: ``SADD`` commands, and for
        a queue with a time to live (Celery's remote-control queue) a script that
        pushes its deadline. Redis refuses both while used memory is over
        ``maxmemory`` (``noeviction``), even for a member already there, and a worker
        (re)started against a full Redis stopped ("Unrecoverable error:
        OutOfMemoryError") instead of consuming, which is what frees the memory. A
        task queue's binding outlives its consumers, so it is there; a queue with a
        time to live is re-bound by kombu's periodic refresh once Redis has room
        (``maybe_refresh_binding_expiry``). A task queue never bound before still
        needs the write, and the worker stops as it did."""
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except OutOfMemoryError:
            member = self.sep.join([routing_key or "", pattern or "", queue or ""])
            with self.conn_or_acquire() as client:
                bound = client.sismember(self.keyprefix_queue % (exchange,), member)
            if not bound and queue not in self._expires:
                raise
            log.warning(
                "queue binding left as it is: redis is over maxmemory; consuming anyway",
                extra={"queue": queue, "exchange": exchange},
            )

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        consumer_tag = super().basic_consume(queue, *args, **kwargs)
        self.lease.attach(self)  # before the first message is taken under it
        return consumer_tag

    @cached_property
    def _script_flags(self) -> str:
        """``allow-oom`` where the server knows script flags (Redis 7), else nothing."""
        with self.conn_or_acquire() as client:
            major = int(str(client.info("server")["redis_version"]).split(".")[0])
        return "#!lua flags=allow-oom\n" if major >= 7 else ""

    def script(self, body: str) -> str:
        return self._script_flags + body

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        script = self.script(_POP_BODY)
        connection = self.client.connection
        commands: list[tuple[Any, ...]] = []
        if self._idle:
            commands.append(self._wait_command(keys[0], len(queues), timeout))
        commands.append(
            (
                "EVAL",
                script,
                len(keys) + 6,
                *keys,
                self.unacked_key,
                self.unacked_index_key,
                UNREADABLE_KEY,
                OWNER_KEY,
                self.lease.held_key,
                CONSUMERS_KEY,
                len(keys),
                time(),
                self.lease.consumer_id,
            )
        )
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._pending = len(commands)
        connection.send_packed_command(connection.pack_commands(commands))

    def _wait_command(self, first_key: str, queues: int, timeout: float | None) -> tuple[Any, ...]:
        wait = timeout or self.brpop_timeout or 1
        if monotonic() < self._plain_wait_until:
            # BLMOVE may push, so a full Redis refuses it; BLPOP on a key nobody
            # fills is a plain sleep it still allows.
            return ("BLPOP", IDLE_KEY, min(wait, FULL_REDIS_WAIT_S))
        if queues > 1:
            wait = min(wait, MULTI_QUEUE_WAIT_S)
        return ("BLMOVE", first_key, first_key, "RIGHT", "RIGHT", wait)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            popped = self._read_replies(**options)
            if not popped:
                self._idle = True
                raise virtual.Empty()
            self._idle = False
            key, item = popped
            dest = kredis.bytes_to_str(key).rsplit(self.sep, 1)[0]
            if not item:
                log.error("An unreadable message on %s was moved to %s", dest, UNREADABLE_KEY)
                raise virtual.Empty()
            self._queue_cycle.rotate(dest)
            payload = loads(kredis.bytes_to_str(item))
            self.recorded.add(payload["properties"]["delivery_tag"])
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._pending = 0
            self._flush_brpop_reauth()

    def _read_replies(self, **options: Any) -> Any:
        """Every reply sent for, so the connection stays in step; the pop's is returned."""
        replies: list[Any] = []
        for _ in range(self._pending):
            try:
                replies.append(
                    self.client.parse_response(self.client.connection, "EVAL", **options)
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except self.ResponseError as exc:
                replies.append(exc)
        if not replies:
            # Nothing was sent on this connection (a wait torn down by a reconnect, then
            # the poller woke for it anyway): no message, not an error. Raising here
            # (IndexError) once made Celery stop the whole worker.
            return None
        popped = replies[-1]
        if any(isinstance(r, self.ResponseError) for r in replies[:-1]):
            # The wait was refused (a full Redis): sleep instead of waking on a push
            # for a while; the pop itself is unaffected.
            self._plain_wait_until = monotonic() + FULL_REDIS_RETRY_S
        if isinstance(popped, Exception):
            self._idle = True  # wait before asking again
            raise popped
        return popped


#: How often the event loop checks the pub/sub and the waiting BRPOP connection for
#: silence (kombu runs both checks every ``health_check_interval``).
HEALTH_TICK_S = HEALTH_CHECK_S / 2


class Transport(kredis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's registration, with the two silence checks run every
        :data:`HEALTH_TICK_S` instead of every ``health_check_interval``.

        A pub/sub connection (broadcast and remote control) that went silent is dropped
        once two pings went unanswered, and redis-py pings it only when it has been idle
        ``health_check_interval`` (5 s): at kombu's pace of one check per 5 s that is
        up to 5 + 3 x 5 s, measured 15.7-17.3 s (issue 17). At 2.5 s, about 12.5 s at
        most; a silent BRPOP is dropped within 1 + 5 + 2.5 s. (kombu cancels these
        timers by the same attribute names on every reconnect.)"""
        super().register_with_event_loop(connection, loop)
        cycle: Any = self.cycle  # kombu's MultiChannelPoller (typed as the base FairCycle)
        for name, check in (
            ("_subclient_health_tref", cycle.maybe_check_subclient_health),
            ("_brpop_health_tref", cycle.maybe_check_brpop_health),
        ):
            old = getattr(cycle, name, None)
            if old is not None:
                old.cancel()
            setattr(cycle, name, loop.call_repeatedly(HEALTH_TICK_S, check))


#: Every channel of this process (for :func:`bound_for_shutdown`).
CHANNELS: WeakSet[Channel] = WeakSet()
#: At shutdown, each broker command gives up after this long, without retries.
SHUTDOWN_BROKER_TIMEOUT_S = 1.0


def bound_for_shutdown(timeout_s: float = SHUTDOWN_BROKER_TIMEOUT_S) -> None:
    """Bound every broker call the shutdown still makes (Celery's remote-control
    channel deleting its queue, the consumer's cancel and close) to ``timeout_s``, with
    no retry, on open connections and on those dialled from now on. Configured, those
    calls wait 5 s each and are retried (a failover reply or timeout); on a network
    that swallows everything, one shutdown waited minutes. The lease's own connections
    are bounded already (workers.broker.leases.own_pool)."""
    for channel in list(CHANNELS):
        for pool in (channel._pool, channel._async_pool):
            if pool is None:
                continue
            bounded = {"socket_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}
            pool.connection_kwargs.update(
                bounded, socket_connect_timeout=timeout_s, retry_on_timeout=False
            )
            # redis-py's own lists (no public accessor); Celery's shutdown bounds the
            # consumer's sockets the same way (celery.utils.threads).
            open_now = [
                *getattr(pool, "_available_connections", []),
                *getattr(pool, "_in_use_connections", []),
            ]
            for connection in open_now:
                connection.socket_timeout = timeout_s
                connection.retry = Retry(NoBackoff(), 0)
                sock = getattr(connection, "_sock", None)
                if sock is not None:
                    try:
                        sock.settimeout(timeout_s)
                    except OSError:
                        pass

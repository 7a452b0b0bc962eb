"""Running a task's messages in batches: one pool job and one transaction for many.

A Celery worker normally hands every message to a pool process on its own; for
``hookfleet.process_event`` that means one database commit per delivery, which costs
about as much as everything else together. A :class:`BatchTask` instead has the worker's
main process collect its messages (up to ``batch_size`` and ``batch_bytes`` of message
bodies, or whatever arrived within ``batch_wait_s`` of the first) and run them as one
pool job, ``run_batch(entries)``, which answers with one :class:`Verdict` per message.
The messages are acknowledged only after that job returned — the same promise as
``acks_late``, kept for the whole batch:

- the job returns: each message is acknowledged, or requeued where its verdict says so;
- the pool process dies, or the hard time limit kills it: every message of the batch is
  requeued (``task_reject_on_worker_lost`` / ``task_acks_on_timeout=False`` for one task);
- the worker stops (SIGTERM) with messages collected but not started: they go back to
  their queue at once (:class:`ReleaseReserved`), whatever the running batch waits for;
- the worker loses its broker connection, or dies: they were never acknowledged, so the
  broker gives them out again (the worker's lease lapses, see ``workers.broker.leases``).

A batch goes to the pool only when a pool process is free for it: a batch waiting
inside the pool for a busy process could not be handed back at shutdown.

So a message is never acknowledged before its outcome is on record, and ``run_batch``
must be idempotent: a requeued message may meet work already done.

The worker must prefetch at least ``batch_size`` messages per pool process (see
``workers.celery_app``), or batches never fill and each waits out ``batch_wait_s``.

Learned from celery-batches (BSD), which needs a Celery older than the 5.7 Hookfleet
relies on for ``task_acks_on_timeout``, and acknowledges a batch that raised.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakSet, ref

from celery import Celery, Task, bootsteps, signals
from celery.utils.imports import symbol_by_name
from celery.utils.time import timezone
from celery.worker.request import Request, create_request_cls
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.asynchronous.timer import to_timestamp

from workers.broker.leases import count_restored, current_lease
from workers.broker.shutdown import arm_on_signal, bound_shutdown
from workers.broker.transport import bound_for_shutdown

log = logging.getLogger("hookfleet.worker.batching")


class Verdict(enum.StrEnum):
    ACK = "ack"  # done (processed, failed or dead on record, or retried on a new message)
    REQUEUE = "requeue"  # not settled: give the message out again


@dataclass(frozen=True)
class Entry:
    """What the pool process gets of one message (it must pickle)."""

    task_id: str
    kwargs: dict[str, Any]
    retries: int
    queue: str
    # The message's trace context headers (traceparent, tracestate), when it has them.
    trace: dict[str, str] = field(default_factory=dict)


class BatchTask(Task):
    """Base for a task whose messages run in batches (see the module docstring).

    ``run_batch`` names a module-level function ``(list[Entry]) -> list[Verdict]``;
    calling the task directly (``apply``, tests) runs a batch of one.
    """

    Strategy = "workers.broker.batching:strategy"
    run_batch: str = ""
    batch_size: int = 50
    batch_wait_s: float = 0.01


class Batch:
    """One pool job's messages and how they end: each is settled exactly once."""

    def __init__(self, requests: list[Request], on_settled: Callable[[], None]) -> None:
        self.requests = requests
        self.settled = False
        self.on_settled = on_settled

    def entries(self) -> list[Entry]:
        return [
            Entry(
                task_id=r.id,
                kwargs=dict(r.kwargs),
                retries=int(r.request_dict.get("retries") or 0),
                queue=str((r.delivery_info or {}).get("routing_key") or ""),
                trace=trace_headers(r.request_dict),
            )
            for r in self.requests
        ]

    def accepted(self, pid: int, time_accepted: float) -> None:
        # Celery's bookkeeping of running tasks: `celery inspect active`, and the
        # shutdown and connection-loss paths that cancel what is still running.
        for request in self.requests:
            request.on_accepted(pid, time_accepted)

    def returned(self, verdicts: list[str]) -> None:
        if len(verdicts) != len(self.requests):  # cannot happen; never guess
            log.error("batch returned %d verdicts for %d messages", len(verdicts), len(self))
            verdicts = [Verdict.REQUEUE] * len(self.requests)
        self._settle(verdicts)

    def failed(self, exc_info: Any = None) -> None:
        """The pool process died (SIGKILL, OOM killer) or the job raised."""
        if not self.settled:
            log.error(
                "batch of %d did not finish (%s); its messages are requeued",
                len(self),
                getattr(exc_info, "exception", exc_info),
            )
        self._settle([Verdict.REQUEUE] * len(self.requests))

    def timed_out(self, soft: bool, timeout: float) -> None:
        if not soft:  # the hard limit: the process is being killed
            log.error("batch of %d outlived the hard time limit (%ss)", len(self), timeout)
            self._settle([Verdict.REQUEUE] * len(self.requests))

    def _settle(self, verdicts: list[str]) -> None:
        if self.settled:
            return
        self.settled = True
        acks = [r for r, v in zip(self.requests, verdicts, strict=True) if v == Verdict.ACK]
        settle_in_bulk(acks, "ack")
        settle_in_bulk([r for r in self.requests if r not in acks], "front")
        for request, verdict in zip(self.requests, verdicts, strict=True):
            if verdict == Verdict.ACK:
                request.acknowledge()
            else:
                request.reject(requeue=True)
            task_ready(request)
        self.on_settled()

    def __len__(self) -> int:
        return len(self.requests)


#: The W3C Trace Context headers a message may carry (models.tracing).
TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: Any) -> dict[str, str]:
    """The trace context headers among a message's ``headers``."""
    return {k: str(headers[k]) for k in TRACE_HEADERS if (headers or {}).get(k)}


def settle_in_bulk(requests: list[Request], how: str) -> int | None:
    """Ack or requeue (``'front'``) the messages of ``requests`` in one round trip per
    channel, where the channel can (Hookfleet's transport: ``settle_many``); the
    requests' own ``acknowledge``/``reject`` that follow are then bookkeeping only. A
    batch's 50 acks cost one bounded call, not 50 that each wait on a dead connection.
    Returns how many were settled (None where no channel settles in bulk)."""
    by_channel: dict[int, tuple[Any, list[str]]] = {}
    for request in requests:
        message = request.message
        channel = getattr(message, "channel", None)
        by_channel.setdefault(id(channel), (channel, []))[1].append(message.delivery_tag)
    settled: int | None = None  # None: no channel could settle in bulk (stock kombu)
    for channel, tags in by_channel.values():
        settle_many = getattr(channel, "settle_many", None)
        if settle_many is not None:
            settled = (settled or 0) + int(settle_many(tags, how))
    return settled


class Collector:
    """The worker main process's buffer for one batch task."""

    def __init__(self, task: BatchTask, pool: Any, timer: Any) -> None:
        self.task = task
        self.pool = pool
        self.timer = timer
        self.target: Callable[[list[Entry]], list[str]] = symbol_by_name(task.run_batch)
        self.buffer: list[Request] = []
        #: Message bytes in ``buffer``.
        self.buffered_bytes = 0
        self.flush_entry: Any = None
        #: Batches given to the pool and not settled yet.
        self.running = 0
        self.batches: set[Batch] = set()
        #: Retries waiting out their countdown: id(request) -> (request, timer entry).
        self.waiting: dict[int, tuple[Request, Any]] = {}
        self.released = False
        COLLECTORS.add(self)
        conf = task.app.conf
        self.batch_size = int(conf.get("hookfleet_batch_size") or task.batch_size)
        # 0: no byte bound (count only).
        self.batch_bytes = int(conf.get("hookfleet_batch_bytes") or 0)
        self.batch_wait_s = float(conf.get("hookfleet_batch_wait_s", task.batch_wait_s))
        self.soft_limit = task.soft_time_limit or conf.task_soft_time_limit
        self.hard_limit = task.time_limit or conf.task_time_limit

    def add(self, request: Request) -> None:
        if self.released:  # arrived during shutdown: straight back
            self._hand_back([request])
            return
        task_reserved(request)
        self.buffer.append(request)
        self.buffered_bytes += message_bytes(request)
        if len(self.buffer) >= self.batch_size or self._bytes_full(self.buffered_bytes):
            self.flush()
        elif self.flush_entry is None:
            self.flush_entry = self.timer.call_after(self.batch_wait_s, self.flush)

    def hold(self, eta: float, request: Request, due: Callable[[Request], None]) -> None:
        """Keep a retry's message until its countdown is over, then ``due(request)``."""

        def fire() -> None:
            self.waiting.pop(id(request), None)
            due(request)

        entry = self.timer.call_at(eta, fire, (), priority=6)
        self.waiting[id(request)] = (request, entry)

    def flush(self) -> None:
        if self.flush_entry is not None:
            self.timer.cancel(self.flush_entry)
            self.flush_entry = None
        while self.buffer and self.running < self._processes():
            taken = self._next_batch()
            self.buffer = self.buffer[len(taken) :]
            self.buffered_bytes = sum(message_bytes(request) for request in self.buffer)
            self.running += 1
            batch = Batch(taken, self._settled)
            self.batches.add(batch)
            self._submit(batch)

    def _next_batch(self) -> list[Request]:
        """The buffer's first messages, at most ``batch_size`` of them and, past the
        first, at most ``batch_bytes`` of message bytes in all: a pool process's memory
        follows the bytes of the batch it decodes and applies, not its count."""
        taken: list[Request] = []
        used = 0
        for request in self.buffer[: self.batch_size]:
            size = message_bytes(request)
            if taken and self.batch_bytes > 0 and used + size > self.batch_bytes:
                break
            taken.append(request)
            used += size
        return taken

    def _bytes_full(self, used: int) -> bool:
        return self.batch_bytes > 0 and used >= self.batch_bytes

    def release(self) -> None:
        """Shutdown: every message collected or held but not started goes back to its
        queue now (one round trip); messages arriving later go straight back."""
        self._hand_back(self._take_unstarted())

    def drop(self) -> None:
        """The broker connection was replaced: Celery has forgotten the requests not
        yet running (``Consumer.on_close``) and makes a new collector; this one lets
        go of its own the same way. Their messages are given back by the lease
        (:func:`let_go_of_dropped`), not here: Redis may not answer yet."""
        self._take_unstarted()

    def in_hand(self) -> list[Request]:
        """Requests of batches given to the pool and not settled yet."""
        return [r for batch in self.batches if not batch.settled for r in batch.requests]

    def _take_unstarted(self) -> list[Request]:
        self.released = True
        if self.flush_entry is not None:
            self.timer.cancel(self.flush_entry)
            self.flush_entry = None
        held = [request for request, _ in self.waiting.values()]
        for _, entry in self.waiting.values():
            self.timer.cancel(entry)
        self.waiting.clear()
        buffered, self.buffer = self.buffer, []
        self.buffered_bytes = 0
        for request in buffered:
            task_ready(request)
        return buffered + held

    def _hand_back(self, requests: list[Request]) -> None:
        if not requests:
            return
        settled = settle_in_bulk(requests, "front")
        for request in requests:
            request.reject(requeue=True)
        handed = len(requests) if settled is None else settled
        queue = str((requests[0].delivery_info or {}).get("routing_key") or "")
        if handed:
            count_restored(queue, "shutdown", handed)
        # Those not handed back (Redis unreachable) were let go: the lease's sweep by
        # the other workers brings them back once this one is gone.
        log.warning(
            "handed %d of %d message(s) not started back to their queue",
            handed,
            len(requests),
        )

    def _processes(self) -> int:
        return max(1, int(getattr(self.pool, "num_processes", 1) or 1))

    def _settled(self) -> None:
        self.running -= 1
        self.batches = {batch for batch in self.batches if not batch.settled}
        if self.buffer and not self.released:
            self.flush()

    def _submit(self, batch: Batch) -> None:
        result = self.pool.apply_async(
            self.target,
            args=(batch.entries(),),
            accept_callback=batch.accepted,
            callback=batch.returned,
            error_callback=batch.failed,
            timeout_callback=batch.timed_out,
            soft_timeout=self.soft_limit,
            timeout=self.hard_limit,
        )
        # Lets Celery's request.cancel() (shutdown, connection loss) stop the job.
        for request in batch.requests:
            request._apply_result = ref(result) if result is not None else None


def message_bytes(request: Request) -> int:
    """The size of a reserved message's body (the task arguments with the delivery)."""
    body = request.body
    return len(body) if isinstance(body, bytes | str) else 0


#: Every collector of this process, for :class:`ReleaseReserved`.
COLLECTORS: WeakSet[Collector] = WeakSet()


class ReleaseReserved(bootsteps.StartStopStep):
    """A consumer step that keeps what the worker holds true at every stop.

    - Warm or cold shutdown: the messages collected but not started go back to their
      queue at once. Celery would keep them until the running batches finished
      (however long a hung database makes that) and restore them only when it closes
      its connection.
    - A reconnect (the broker connection was lost, e.g. a failover): Celery forgot its
      reserved and scheduled requests, and the collectors are made anew; the lease
      keeps only the messages running batches and tasks will still settle, and gives
      the others back (:func:`let_go_of_dropped`). Without this they stayed recorded as
      this live worker's — no sweep restores a live worker's messages — until it exited.

    Stops before the task consumer does."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def stop(self, c: Any) -> None:
        from celery.worker import state

        if state.should_stop is None and state.should_terminate is None:
            let_go_of_dropped()
            return
        # Whatever the network does now, the shutdown's broker calls end in seconds,
        # and whatever the database does, the running batches end with the soft
        # shutdown period (Celery bounds only a cold shutdown; workers.broker.shutdown).
        bound_for_shutdown()
        bound_shutdown(float(c.app.conf.worker_soft_shutdown_timeout))
        for collector in list(COLLECTORS):
            collector.release()


def let_go_of_dropped() -> int:
    """After a lost broker connection: what this process still holds is the messages of
    requests running in the pool (Celery's ``active_requests``) and of batches given to
    it; the lease lets go of the rest (workers.broker.leases.Lease.keep_only), and its orphan
    check gives them back at once when Redis answers. Returns how many."""
    from celery.worker.state import active_requests

    lease = current_lease()
    running: list[Request] = [r for r in active_requests if not r.acknowledged]
    for collector in list(COLLECTORS):
        running += collector.in_hand()
        collector.drop()
    if lease is None:
        return 0
    return lease.keep_only(r.message.delivery_tag for r in running if r.message is not None)


def send_received_event(dispatcher: Any, request: Request) -> None:
    """Celery's ``task-received`` event, with the fields its default strategy sends
    (celery/worker/strategy.py), for monitors such as Flower."""
    dispatcher.send(
        "task-received",
        uuid=request.id,
        name=request.name,
        args=request.argsrepr,
        kwargs=request.kwargsrepr,
        root_id=request.root_id,
        parent_id=request.parent_id,
        retries=request.request_dict.get("retries", 0),
        eta=request.eta and request.eta.isoformat(),
        expires=request.expires and request.expires.isoformat(),
    )


def reject_invalid_eta(request: Request, error: BaseException) -> None:
    """What Celery's default strategy does with an ETA it cannot convert (a time out of
    the platform's range): log, record the failure in the result backend (none in
    Hookfleet), and reject the message without requeueing it — it would fail the same
    way forever. Hookfleet never writes such an ETA (retries use short countdowns)."""
    log.error(
        "Couldn't convert ETA %r to timestamp: %r; message rejected",
        request.eta,
        error,
        extra={"task_id": request.id},
    )
    request.task.backend.mark_as_failure(
        request.id, error, request=request._context, store_result=request.store_errors
    )
    request.reject(requeue=False)


def strategy(task: BatchTask, app: Celery, consumer: Any, **_: Any) -> Callable[..., None]:
    """The consumer's handler for ``task``'s messages: decode, then collect.

    Modelled on ``celery.worker.strategy.default`` (Celery 5.7), which hands each
    request to the pool at once. Kept from it: the ``task_received`` signal, the
    ``task-received`` event when the worker sends task events (``-E``), expiry and
    revocation, and the rejection (not requeued) of a message whose ETA cannot be
    turned into a time. Rate limits are not supported for batch tasks.
    """
    Req = create_request_cls(
        symbol_by_name(task.Request),
        task,
        consumer.pool,
        consumer.hostname,
        consumer.event_dispatcher,
        app=app,
    )
    revoked = consumer.controller.state.revoked
    collector = Collector(task, consumer.pool, consumer.timer)

    def events_on() -> bool:
        # As Celery's default strategy: the worker sends task events (``-E``) and the
        # task does not opt out.
        dispatcher = consumer.event_dispatcher
        return bool(dispatcher and dispatcher.enabled and task.send_events)

    def eta_due(request: Request) -> None:
        consumer.qos.decrement_eventually()
        collector.add(request)

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = (
                message.body,
                message.headers,
                False,
                app.uses_utc_timezone(),
            )
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        request = Req(
            message,
            on_ack=ack,
            on_reject=reject,
            app=app,
            hostname=consumer.hostname,
            eventer=consumer.event_dispatcher,
            task=task,
            connection_errors=consumer.connection_errors,
            body=body,
            headers=headers,
            decoded=decoded,
            utc=utc,
        )
        if (request.expires or request.id in revoked) and request.revoked():
            return
        signals.task_received.send(sender=consumer, request=request)
        if events_on():
            send_received_event(consumer.event_dispatcher, request)
        if request.eta:
            # A retry's countdown: held here, outside the prefetch window, until due.
            try:
                eta = (
                    to_timestamp(timezone.to_system(request.eta))
                    if request.utc
                    else to_timestamp(request.eta, app.timezone)
                )
            except (OverflowError, ValueError) as error:
                reject_invalid_eta(request, error)
                return
            consumer.qos.increment_eventually()
            collector.hold(eta, request, eta_due)
            return
        collector.add(request)

    return handler


@signals.worker_ready.connect
def _bound_shutdown_from_the_signal(sender: Any = None, **_: Any) -> None:
    """Once Celery's own SIGTERM/SIGINT handlers are installed: arm the shutdown bound
    from the signal itself too (``workers.broker.shutdown.arm_on_signal``), so a main
    thread blocked on a dead broker socket still exits within the bound."""
    app = getattr(sender, "app", None)
    if app is not None:
        arm_on_signal(float(app.conf.worker_soft_shutdown_timeout))

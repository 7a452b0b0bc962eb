"""Celery tasks: thin wrappers around :mod:`workers.pipeline.record`."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from models import tracing
from models.contract import (
    PROCESS_EVENT,
    EventMessage,
    MalformedMessage,
    Queue,
)
from models.events import EventStatus
from models.logs import log_context
from models.settings import Settings
from workers.broker.batching import BatchTask, Entry, Verdict, trace_headers
from workers.celery_app import app, soft_time_limit
from workers.metrics import (
    batch_finished,
    event_dead,
    event_processed,
    task_retried,
)
from workers.pipeline.record import (
    IncomingEvent,
    Outcome,
    mark_failed,
    record_batch,
    record_event,
    record_malformed,
)
from workers.pipeline.tracing import (
    batch_spans,
    event_scope,
    remember_trace,
)
from workers.pipeline.tracing import failed as traced_failure
from workers.pipeline.tracing import outcome as traced_outcome
from workers.pipeline.tracing import retried as traced_retry
from workers.retries import RetryPolicy, is_lock_wait_timeout, is_transient
from workers.runtime import sessions, settings

log = logging.getLogger("hookfleet.worker")


def _retry_countdown(retries: int) -> int:
    """Exponential backoff, capped well below the broker's visibility timeout."""
    cap = app.conf.broker_transport_options["visibility_timeout"] // 3
    return int(min(cap, 2 ** (retries + 1)))


@app.task(
    name=PROCESS_EVENT,
    base=BatchTask,
    bind=True,
    run_batch="workers.pipeline.tasks:process_batch",
)
def process_event(self: Task, **kwargs: Any) -> str:
    """Record one delivery and apply its effect (a batch of one). Safe to run any
    number of times. The worker runs this task's messages in batches
    (``workers.broker.batching``): see :func:`process_batch`."""
    queue = (self.request.delivery_info or {}).get("routing_key") or kwargs.get("queue", "")
    trace = trace_headers(vars(self.request))
    entry = Entry(self.request.id or "", kwargs, self.request.retries or 0, queue, trace)
    return process_batch([entry])[0].value


def process_batch(entries: list[Entry]) -> list[Verdict]:
    """Record and apply a batch of deliveries; one verdict per message.

    First all at once (``record_batch``: two commits for the lot). If that raises —
    a handler's permanent error, a deadlock, the database away — nothing of it stuck,
    and each event is settled on its own instead: quick tries inside this job (a
    deadlock or a dropped connection usually clears in well under a second), then a
    retry on a new message with a growing countdown; when ``task_max_retries`` is
    spent the event is ``dead``. Permanent failures are ``failed`` at once. Either way
    the payload stays for ``hookfleet replay``.
    """
    started = time.perf_counter()
    config = settings()
    # Past this, nothing more is tried here: the soft time limit must find the job
    # handing over, not halfway through an event.
    deadline = started + soft_time_limit(config.task_time_limit_s) / 2
    verdicts = [Verdict.REQUEUE] * len(entries)
    events: list[IncomingEvent | None] = []
    for index, entry in enumerate(entries):
        try:
            events.append(EventMessage.from_kwargs(entry.kwargs))
        except MalformedMessage as error:
            events.append(None)
            verdicts[index] = _refuse_malformed(entry, error)
    with batch_spans(entries, events):
        events = [e if e is None else remember_trace(entries[i], e) for i, e in enumerate(events)]
        if not _run_batch(entries, events, verdicts, config, deadline):
            return verdicts
    if len(entries) > 1:
        log.debug("batch done", extra={"batch": len(entries)})
    batch_finished(time.perf_counter() - started, len(entries))
    return verdicts


def _run_batch(
    entries: list[Entry],
    events: list[IncomingEvent | None],
    verdicts: list[Verdict],
    config: Settings,
    deadline: float,
) -> bool:
    """:func:`process_batch`'s work: the batch at once, then one by one what is left.
    False when the soft time limit cut the batch short (the rest is requeued)."""
    started = time.perf_counter()
    batched = [i for i, e in enumerate(events) if e is not None and not e.replay]
    try:
        if batched:

            def in_context(position: int) -> None:
                # A handler's own log lines carry the event it is applying.
                index = batched[position]
                log_context.set(_context(entries[index], events[index]))  # type: ignore[arg-type]

            outcomes = record_batch(
                sessions(),
                [events[i] for i in batched],  # type: ignore[misc]
                before_apply=in_context,
                apply_scope=lambda position: event_scope(entries[batched[position]]),
            )
            for index, outcome in zip(batched, outcomes, strict=True):
                verdicts[index] = Verdict.ACK
                with event_scope(entries[index]):  # its log line carries its trace
                    _done(entries[index], events[index], outcome, started)  # type: ignore[arg-type]
    except SoftTimeLimitExceeded:
        return False
    except Exception as error:  # noqa: BLE001 - every failure is settled below, one by one
        log.warning(
            "batch failed, settling its events one by one",
            # lock_wait: a row lock held past ROW_LOCK_WAIT_S (a slow or frozen
            # transaction elsewhere), the one failure an operator should look into.
            extra={
                "error": type(error).__name__,
                "batch": len(batched),
                "lock_wait": is_lock_wait_timeout(error),
            },
        )
    try:
        for index, event in enumerate(events):
            if event is not None and verdicts[index] is Verdict.REQUEUE:
                with event_scope(entries[index]):
                    verdicts[index] = _settle_one(entries[index], event, config, deadline)
    except SoftTimeLimitExceeded:
        log.warning("soft time limit reached; the rest of the batch is requeued")
    return True


def _refuse_malformed(entry: Entry, error: MalformedMessage) -> Verdict:
    """A message that is not an event message (no receiver version wrote it) is never
    applied with fields filled in: it is kept as a ``failed`` row saying why, when it
    names its provider and event id, and acknowledged; without those there is nothing
    to record it under, so it is logged (an error) and acknowledged. Requeued while
    the database is away (a transient error); dropped with an error line when even
    the row cannot be written (it would fail the same way on every redelivery)."""
    log_context.set({"task": PROCESS_EVENT, "task_id": entry.task_id, "queue": entry.queue})
    try:
        recorded = record_malformed(sessions(), entry.kwargs, entry.queue, error.reason)
    except Exception as record_error:  # noqa: BLE001 - classified just below
        transient = is_transient(record_error)
        log.error(
            "cannot record a malformed task message; " + ("requeued" if transient else "dropped"),
            extra={"error": repr(record_error), "reason": error.reason},
        )
        return Verdict.REQUEUE if transient else Verdict.ACK
    if recorded:
        event_dead(str(entry.kwargs["provider"]))
        log.error(
            "malformed task message: failed",
            extra={"reason": error.reason, "event_id": entry.kwargs["event_id"]},
        )
    else:
        log.error("malformed task message dropped", extra={"reason": error.reason})
    return Verdict.ACK


def _done(entry: Entry, event: IncomingEvent, outcome: Outcome, started: float) -> None:
    log_context.set(_context(entry, event))
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    log.info(outcome.value, extra={"outcome": outcome.value, "duration_ms": duration_ms})
    traced_outcome(entry, outcome.value)
    if outcome is Outcome.PROCESSED:
        event_processed(event.provider, event.received_at)


def _context(entry: Entry, event: IncomingEvent) -> dict[str, Any]:
    return {
        "correlation_id": event.correlation_id,
        "provider": event.provider,
        "event_id": event.event_id,
        "queue": event.queue,
        "task": PROCESS_EVENT,
        "task_id": entry.task_id,
        "attempt": entry.retries + 1,
    }


def _settle_one(entry: Entry, event: IncomingEvent, config: Settings, deadline: float) -> Verdict:
    """One event on its own: processed, failed, dead or retried later."""
    started = time.perf_counter()
    log_context.set(_context(entry, event))
    remaining = deadline - started
    if remaining <= 0:
        return Verdict.REQUEUE
    try:
        in_task = RetryPolicy(attempts=config.db_retry_attempts, within_s=remaining)
        outcome = in_task.call(lambda: record_event(sessions(), event))
    except SoftTimeLimitExceeded:
        raise
    except Exception as error:  # noqa: BLE001 - classified: failed, dead or retried
        reason = f"{type(error).__name__}: {error}"
        trace = traceback.format_exc()
        if not is_transient(error):
            # Permanent (workers.retries): retrying would fail the same way.
            return _record_failure(entry, event, reason, trace, EventStatus.FAILED, error)
        if entry.retries < config.task_max_retries:
            log.warning("transient failure, will retry", extra={"error": type(error).__name__})
            return _retry_later(entry, error)
        return _record_failure(entry, event, reason, trace, EventStatus.DEAD, error)
    _done(entry, event, outcome, started)
    return Verdict.ACK


def _retry_later(entry: Entry, error: BaseException) -> Verdict:
    """Publish the delivery again with a countdown; the old message is then acked.

    If even that fails (Redis away), the message is requeued as it is."""
    countdown = _retry_countdown(entry.retries)
    try:
        process_event.apply_async(
            kwargs=entry.kwargs,
            queue=entry.queue or entry.kwargs.get("queue") or Queue.DEFAULT,
            countdown=countdown,
            retries=entry.retries + 1,
            # The retry's span is a child of this attempt's: one trace (models.tracing).
            headers=tracing.trace_headers(),
        )
    except Exception as publish_error:  # noqa: BLE001 - the message is requeued instead
        log.error("cannot publish the retry; requeued", extra={"error": repr(publish_error)})
        return Verdict.REQUEUE
    task_retried(PROCESS_EVENT, error)
    traced_retry(entry, countdown, error)
    return Verdict.ACK


def _record_failure(
    entry: Entry,
    event: IncomingEvent,
    reason: str,
    trace: str,
    status: EventStatus,
    error: BaseException,
) -> Verdict:
    """Mark the event failed or dead. If even that cannot be written (the database is
    away), retry later: a message is acknowledged only once its outcome is on record,
    so nothing accepted is ever silently dropped."""
    try:
        mark_failed(sessions(), event, reason, status, trace, attempt=entry.retries + 1)
    except Exception as mark_error:
        if not is_transient(mark_error):
            log.exception("cannot record the failure; requeued")
            return Verdict.REQUEUE
        log.error("cannot record the failure yet; will retry", extra={"error": reason})
        return _retry_later(entry, mark_error)
    event_dead(event.provider)
    traced_failure(entry, status.value, error)
    message = "event failed" if status is EventStatus.FAILED else "retry budget spent: dead"
    log.error(message, extra={"error": reason, "status": status.value})
    return Verdict.ACK

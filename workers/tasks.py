"""Celery tasks: thin wrappers around :mod:`workers.events`."""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.backlog import read_backlog
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus
from models.logs import log_context
from models.redis_links import redis_client
from models.settings import QUEUES, Settings
from workers.batching import BatchTask, Entry, Verdict
from workers.celery_app import app, soft_time_limit
from workers.events import IncomingEvent, Outcome, mark_failed, record_batch, record_event
from workers.metrics import (
    PROCESS_EVENT_TASK,
    batch_finished,
    event_dead,
    event_processed,
    integrity_found,
    task_retried,
)
from workers.retries import RetryPolicy, is_transient

log = logging.getLogger("hookfleet.worker")

_engine: tuple[int, Engine, sessionmaker[Session], Settings] | None = None


def sessions() -> sessionmaker[Session]:
    """This process's session factory. Built on first use after a fork, never shared."""
    return _process()[2]


def settings() -> Settings:
    return _process()[3]


def engine() -> Engine:
    return _process()[1]


#: Seconds a worker's statement waits for a row lock (MariaDB ``innodb_lock_wait_timeout``
#: for its sessions) before it fails with 1205, a transient error.
ROW_LOCK_WAIT_S = 3


def _process() -> tuple[int, Engine, sessionmaker[Session], Settings]:
    global _engine
    if _engine is None or _engine[0] != os.getpid():
        config = Settings.from_env(os.environ)
        # Database waits end well inside the task's soft time limit as ordinary,
        # retryable errors: a task interrupted by the limit while blocked in the driver
        # would first have to wait for the blocked statement before it could roll back.
        # Row locks are waited for ROW_LOCK_WAIT_S at most: a lock held by a frozen or
        # slow transaction then costs the one event that needs it (the batch fails
        # fast, its events are settled one by one, the contended one retried later),
        # not a whole batch waiting out MariaDB's default 50 s.
        soft = soft_time_limit(config.task_time_limit_s)
        engine = make_engine(
            config,
            io_timeout_s=max(2, soft - 2),
            lock_wait_s=min(ROW_LOCK_WAIT_S, max(1, soft // 4)),
        )
        _engine = (os.getpid(), engine, make_sessionmaker(engine), config)
    return _engine


@worker_process_shutdown.connect
def _dispose_engine(**_: Any) -> None:
    global _engine
    if _engine is not None and _engine[0] == os.getpid():
        _engine[1].dispose()
    _engine = None


def _retry_countdown(retries: int) -> int:
    """Exponential backoff, capped well below the broker's visibility timeout."""
    cap = app.conf.broker_transport_options["visibility_timeout"] // 3
    return int(min(cap, 2 ** (retries + 1)))


@app.task(
    name="hookfleet.process_event",
    base=BatchTask,
    bind=True,
    run_batch="workers.tasks:process_batch",
)
def process_event(self: Task, **kwargs: Any) -> str:
    """Record one delivery and apply its effect (a batch of one). Safe to run any
    number of times. The worker runs this task's messages in batches
    (``workers.batching``): see :func:`process_batch`."""
    queue = (self.request.delivery_info or {}).get("routing_key") or kwargs.get("queue", "")
    entry = Entry(self.request.id or "", kwargs, self.request.retries or 0, queue)
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
            events.append(IncomingEvent.from_task(entry.kwargs))
        except (KeyError, TypeError, ValueError) as error:
            # Not a message the receiver wrote: nothing to record it under.
            log.error("malformed task message dropped", extra={"error": repr(error)})
            events.append(None)
            verdicts[index] = Verdict.ACK
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
            )
            for index, outcome in zip(batched, outcomes, strict=True):
                verdicts[index] = Verdict.ACK
                _done(entries[index], events[index], outcome, started)  # type: ignore[arg-type]
    except SoftTimeLimitExceeded:
        return verdicts
    except Exception as error:  # noqa: BLE001 - every failure is settled below, one by one
        log.warning(
            "batch failed, settling its events one by one",
            extra={"error": type(error).__name__, "batch": len(batched)},
        )
    try:
        for index, event in enumerate(events):
            if event is not None and verdicts[index] is Verdict.REQUEUE:
                verdicts[index] = _settle_one(entries[index], event, config, deadline)
    except SoftTimeLimitExceeded:
        log.warning("soft time limit reached; the rest of the batch is requeued")
    if len(entries) > 1:
        log.debug("batch done", extra={"batch": len(entries)})
    batch_finished(time.perf_counter() - started, len(entries))
    return verdicts


def _done(entry: Entry, event: IncomingEvent, outcome: Outcome, started: float) -> None:
    log_context.set(_context(entry, event))
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    log.info(outcome.value, extra={"outcome": outcome.value, "duration_ms": duration_ms})
    if outcome is Outcome.PROCESSED:
        event_processed(event.provider, event.received_at)


def _context(entry: Entry, event: IncomingEvent) -> dict[str, Any]:
    return {
        "correlation_id": event.correlation_id,
        "provider": event.provider,
        "event_id": event.event_id,
        "queue": event.queue,
        "task": PROCESS_EVENT_TASK,
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
    try:
        process_event.apply_async(
            kwargs=entry.kwargs,
            queue=entry.queue or entry.kwargs.get("queue") or "hookfleet.default",
            countdown=_retry_countdown(entry.retries),
            retries=entry.retries + 1,
        )
    except Exception as publish_error:  # noqa: BLE001 - the message is requeued instead
        log.error("cannot publish the retry; requeued", extra={"error": repr(publish_error)})
        return Verdict.REQUEUE
    task_retried(PROCESS_EVENT_TASK, error)
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
        mark_failed(sessions(), event, reason, status, trace)
    except Exception as mark_error:
        if not is_transient(mark_error):
            log.exception("cannot record the failure; requeued")
            return Verdict.REQUEUE
        log.error("cannot record the failure yet; will retry", extra={"error": reason})
        return _retry_later(entry, mark_error)
    event_dead(event.provider)
    message = "event failed" if status is EventStatus.FAILED else "retry budget spent: dead"
    log.error(message, extra={"error": reason, "status": status.value})
    return Verdict.ACK


@app.task(name="hookfleet.report_queue_depths")
def report_queue_depths() -> dict[str, int]:
    """Log how many messages wait on each queue (beat: every minute) — the same
    reading as ``/metrics`` and ``hookfleet stats``, reserved ones logged beside."""
    client = redis_client(settings().broker_url, timeout_s=5)  # follows a failover
    try:
        reading = read_backlog(client, None, QUEUES, rates=False)
    finally:
        client.close()
    depths = {q.queue: q.waiting for q in reading.queues}
    unacked = {q.queue: q.unacked for q in reading.queues}
    log.info("queue depths", extra={"depths": depths, "unacked": unacked, "errors": reading.errors})
    return depths


@app.task(name="hookfleet.integrity_report")
def integrity_report() -> dict[str, int]:
    """Run ``hookfleet integrity check`` and export what it finds (beat: hourly).

    It reports and never fixes: merging customers is a decision for a person
    (``hookfleet integrity fix --dry-run`` first).
    """
    from workers.integrity import check

    report = check(engine())
    counts = {finding.kind: finding.count for finding in report.findings.values()}
    integrity_found(counts)
    log.info("integrity check", extra={"problems": report.problems, "counts": counts})
    return counts

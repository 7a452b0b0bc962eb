"""Celery tasks: thin wrappers around :mod:`workers.events`."""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

import redis
from celery import Task
from celery.signals import worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.backlog import read_backlog
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus
from models.logs import log_context
from models.settings import QUEUES, Settings
from workers.celery_app import app, soft_time_limit
from workers.events import IncomingEvent, mark_failed, record_event
from workers.metrics import event_dead, integrity_found
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


def _process() -> tuple[int, Engine, sessionmaker[Session], Settings]:
    global _engine
    if _engine is None or _engine[0] != os.getpid():
        config = Settings.from_env(os.environ)
        # Database waits end well inside the task's soft time limit as ordinary,
        # retryable errors: a task interrupted by the limit while blocked in the driver
        # would first have to wait for the blocked statement before it could roll back.
        soft = soft_time_limit(config.task_time_limit_s)
        engine = make_engine(
            config, io_timeout_s=max(2, soft - 2), lock_wait_s=min(50, max(1, soft // 4))
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


@app.task(name="hookfleet.process_event", bind=True)
def process_event(self: Task, **kwargs: Any) -> str:
    """Record one delivery and apply its effect. Safe to run any number of times.

    Transient failures: quick tries inside the task (a deadlock or a dropped connection
    usually clears in well under a second), then Celery retries with growing
    countdowns; when ``task_max_retries`` is spent the event is ``dead``. Permanent
    failures: ``failed`` at once. Either way the payload stays for ``hookfleet replay``.
    """
    event = IncomingEvent.from_task(kwargs)
    log_context.set(
        {
            "correlation_id": event.correlation_id,
            "provider": event.provider,
            "event_id": event.event_id,
            "queue": event.queue,
            "task": self.name,
            "attempt": self.request.retries + 1,
        }
    )
    started = time.perf_counter()
    config = settings()
    try:
        in_task = RetryPolicy(
            attempts=config.db_retry_attempts,
            within_s=soft_time_limit(config.task_time_limit_s) / 2,
        )
        outcome = in_task.call(lambda: record_event(sessions(), event))
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        if not is_transient(error):
            # Permanent (workers.retries): retrying would fail the same way.
            _record_failure(self, event, reason, traceback.format_exc(), EventStatus.FAILED)
            raise
        if self.request.retries < config.task_max_retries:
            log.warning("transient failure, will retry", extra={"error": type(error).__name__})
            countdown = _retry_countdown(self.request.retries)
            raise self.retry(exc=error, countdown=countdown, max_retries=None) from None
        _record_failure(self, event, reason, traceback.format_exc(), EventStatus.DEAD)
        raise
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    log.info(outcome.value, extra={"outcome": outcome.value, "duration_ms": duration_ms})
    return outcome.value


def _record_failure(
    task: Task, event: IncomingEvent, reason: str, trace: str, status: EventStatus
) -> None:
    """Mark the event failed or dead. If even that cannot be written (the database is
    away), retry the task later: a message is acknowledged only once its outcome is on
    record, so nothing accepted is ever silently dropped."""
    try:
        mark_failed(sessions(), event, reason, status, trace)
        event_dead(event.provider)
    except Exception as error:
        if not is_transient(error):
            raise
        log.error("cannot record the failure yet; will retry", extra={"error": reason})
        countdown = _retry_countdown(task.request.retries)
        raise task.retry(exc=error, countdown=countdown, max_retries=None) from None
    message = "event failed" if status is EventStatus.FAILED else "retry budget spent: dead"
    log.error(message, extra={"error": reason, "status": status.value})


@app.task(name="hookfleet.report_queue_depths")
def report_queue_depths() -> dict[str, int]:
    """Log how many messages wait on each queue (beat: every minute) — the same
    reading as ``/metrics`` and ``hookfleet stats``, reserved ones logged beside."""
    client = redis.Redis.from_url(settings().broker_url, socket_timeout=5)
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

"""Celery tasks: thin wrappers around :mod:`workers.events`."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Task
from celery.signals import worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from models.engine import make_engine, make_sessionmaker
from models.logs import log_context
from models.settings import QUEUES, Settings
from workers.celery_app import app
from workers.events import IncomingEvent, mark_failed, record_event
from workers.metrics import event_dead

log = logging.getLogger("hookfleet.worker")

# Errors worth another try: the database went away, was busy or locked. Anything else
# (a payload the code cannot map) fails at once and keeps its row for a replay.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, PoolTimeout)

_engine: tuple[int, Engine, sessionmaker[Session]] | None = None


def sessions() -> sessionmaker[Session]:
    """This process's session factory. Built on first use after a fork, never shared."""
    global _engine
    if _engine is None or _engine[0] != os.getpid():
        engine = make_engine(Settings.from_env(os.environ))
        _engine = (os.getpid(), engine, make_sessionmaker(engine))
    return _engine[2]


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


@app.task(name="hookfleet.process_event", bind=True, max_retries=8)
def process_event(self: Task, **kwargs: Any) -> str:
    """Record one delivery and apply its effect. Safe to run any number of times."""
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
    try:
        outcome = record_event(sessions(), event)
    except TRANSIENT_ERRORS as error:
        if self.request.retries >= self.max_retries:
            mark_failed(sessions(), event, f"{type(error).__name__}: {error}")
            event_dead(event.provider)
            raise
        log.warning("transient failure, will retry", extra={"error": type(error).__name__})
        raise self.retry(exc=error, countdown=_retry_countdown(self.request.retries)) from None
    except Exception as error:
        mark_failed(sessions(), event, f"{type(error).__name__}: {error}")
        event_dead(event.provider)
        raise
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    log.info(outcome.value, extra={"outcome": outcome.value, "duration_ms": duration_ms})
    return outcome.value


@app.task(name="hookfleet.report_queue_depths")
def report_queue_depths() -> dict[str, int]:
    """Log how many messages wait on each queue (beat runs it every minute)."""
    settings = Settings.from_env(os.environ)
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    try:
        depths = {queue: int(client.llen(queue)) for queue in QUEUES}
    finally:
        client.close()
    log.info("queue depths", extra={"depths": depths})
    return depths

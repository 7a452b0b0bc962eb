"""Task metrics from Celery's signals, written into the host's shared metrics directory.

Prefork children each write their own file; a scrape of the receiver's ``/metrics`` on
the same host adds them up. A worker that runs apart from any receiver (a Kubernetes
pod) serves the same on ``HOOKFLEET_WORKER_METRICS_PORT`` from its main process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_shutdown,
    worker_ready,
)
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from models.contract import PROCESS_EVENT
from models.metrics import declare_shared_metrics, mark_process_dead, scrape_registry
from workers.broker.leases import restored_counter

log = logging.getLogger("hookfleet.worker")


TASK_DURATION = Histogram(
    "hookfleet_task_duration_seconds",
    "Time a task ran, by task name and outcome (success, retry, failure).",
    ["task", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
TASK_RETRIES = Counter(
    "hookfleet_task_retries",
    "Task retries scheduled, by task and the error that caused them.",
    ["task", "reason"],
)
EVENTS_DEAD = Counter(
    "hookfleet_events_dead",
    "Events given up on (failed permanently, payload kept for a replay), by provider.",
    ["provider"],
)
END_TO_END = Histogram(
    "hookfleet_end_to_end_seconds",
    "From the receiver taking a delivery to a worker having processed it.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)

# hookfleet_messages_restored_total{queue,reason}: counted by workers.broker.leases, declared
# with the others so a scrape lists it before the first restore.
MESSAGES_RESTORED = restored_counter()

BATCH_SIZE = Histogram(
    "hookfleet_worker_batch_size",
    "Deliveries a worker recorded and applied together (one pool job, two commits).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)

INTEGRITY_PROBLEMS = Gauge(
    "hookfleet_integrity_problems",
    "What the hourly integrity check found, by kind (hookfleet integrity check).",
    ["kind"],
    multiprocess_mode="mostrecent",
)

EVENTS_REQUEUED = Counter(
    "hookfleet_events_requeued",
    "Events the stuck-work sweeper put back on their queue (recorded, never finished), "
    "by provider.",
    ["provider"],
)
EVENTS_STUCK = Gauge(
    "hookfleet_events_stuck",
    "Events recorded over HOOKFLEET_STUCK_AFTER_S ago and still unfinished, as the last "
    "sweep found them (before requeueing).",
    multiprocess_mode="mostrecent",
)

# Start times of the tasks this process runs, by task id (a child inherits only ids of
# tasks its parent ran, which it never finishes: harmless).
_started: dict[str, float] = {}
_started_lock = threading.Lock()


def integrity_found(counts: dict[str, int]) -> None:
    """Export the latest integrity check: every kind it looks for, zeros included."""
    for kind, count in counts.items():
        INTEGRITY_PROBLEMS.labels(kind=kind).set(count)


def stuck_swept(stuck: int, requeued: dict[str, int]) -> None:
    """Export one sweep: how many events it found stuck, how many it requeued."""
    EVENTS_STUCK.set(stuck)
    for provider, count in requeued.items():
        EVENTS_REQUEUED.labels(provider=provider).inc(count)


def event_dead(provider: str) -> None:
    """Count an event that will not be retried any more. Call it where that is decided."""
    EVENTS_DEAD.labels(provider=provider).inc()


def event_processed(provider: str, received_at: datetime) -> None:
    """An event's effect committed: how long after the receiver took it."""
    END_TO_END.labels(provider=provider).observe(max(0.0, time.time() - received_at.timestamp()))


def batch_finished(seconds: float, size: int) -> None:
    """A batch of ``hookfleet.process_event`` messages ran: each of its events took the
    batch's time (the task duration of a batched event)."""
    BATCH_SIZE.observe(size)
    duration = TASK_DURATION.labels(task=PROCESS_EVENT, outcome="success")
    for _ in range(size):
        duration.observe(seconds)


def task_retried(task: str, error: BaseException) -> None:
    """A retry was published. The error's class, never its text: labels must stay few."""
    TASK_RETRIES.labels(task=task, reason=type(error).__name__).inc()


@task_prerun.connect
def _task_started(task_id: str, task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == PROCESS_EVENT:
        return  # batched: measured by batch_finished
    with _started_lock:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    with _started_lock:
        started = _started.pop(task_id, None)
    if started is not None:
        outcome = (state or "unknown").lower()
        TASK_DURATION.labels(task=task.name, outcome=outcome).observe(time.perf_counter() - started)


@task_retry.connect
def _task_retried(sender: Any = None, reason: Any = None, **_: Any) -> None:
    # The error's class, never its text: labels must stay few.
    cause = type(reason).__name__ if isinstance(reason, BaseException) else "unknown"
    TASK_RETRIES.labels(task=getattr(sender, "name", "unknown"), reason=cause).inc()


@worker_process_shutdown.connect
def _process_gone(**_: Any) -> None:
    mark_process_dead(os.getpid())


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's main process, after the pool started: serve this host's metrics
    directory when a port is configured."""
    declare_shared_metrics()
    from workers.runtime import settings

    port = settings().worker_metrics_port
    if port:
        start_http_server(port, registry=scrape_registry())
        log.info("serving metrics", extra={"port": port})

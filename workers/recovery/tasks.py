"""Beat's recovery and housekeeping tasks: thin wrappers around this package's functions.

Each runs on beat's schedule (``workers.celery_app``) and can be called by hand with
``celery -A workers.celery_app call <name>``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from models.broker.backlog import read_backlog
from models.broker.redis_links import redis_client
from models.contract import PRUNE_EVENTS, QUEUES, REPORT_QUEUE_DEPTHS, SWEEP_STUCK
from workers.celery_app import app
from workers.metrics import stuck_swept
from workers.recovery.deadletters import send_to_workers
from workers.recovery.retention import prune_events
from workers.recovery.sweeper import BEAT_LIMIT, sweep
from workers.runtime import sessions, settings

# The names these lines have always been logged under (log shippers filter on them).
log = logging.getLogger("hookfleet.worker")
sweep_log = logging.getLogger("hookfleet.worker.sweeper")
retention_log = logging.getLogger("hookfleet.worker.retention")


@app.task(name=SWEEP_STUCK)
def sweep_stuck() -> dict[str, int]:
    """Beat, every minute: requeue what HOOKFLEET_STUCK_AFTER_S calls stuck, export the
    counts (hookfleet_events_stuck, hookfleet_events_requeued_total), log one line."""
    after_s = settings().stuck_after_s
    if after_s == 0:
        return {}
    report = sweep(sessions(), send_to_workers, timedelta(seconds=after_s), limit=BEAT_LIMIT)
    stuck_swept(report.stuck, report.by_provider)
    oldest_s = None if report.oldest_age is None else round(report.oldest_age.total_seconds())
    sweep_log.log(
        logging.WARNING if report.requeued else logging.INFO,
        "requeued stuck events",
        extra={
            "stuck": report.stuck,
            "requeued": report.requeued,
            "by_provider": report.by_provider,
            "oldest_age_s": oldest_s,
            "stuck_after_s": after_s,
        },
    )
    return report.by_provider


@app.task(name=PRUNE_EVENTS)
def prune_events_task() -> int:
    """Beat's daily retention run: processed rows older than HOOKFLEET_RETENTION_DAYS."""
    days = settings().retention_days
    if days == 0:
        retention_log.info("retention off (HOOKFLEET_RETENTION_DAYS=0)")
        return 0
    result = prune_events(sessions(), timedelta(days=days))
    retention_log.info(
        "pruned webhook_events", extra={"deleted": result.deleted, "older_than_days": days}
    )
    return result.deleted


@app.task(name=REPORT_QUEUE_DEPTHS)
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

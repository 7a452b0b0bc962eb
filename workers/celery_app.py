"""The Celery app. ``celery -A workers.celery_app worker -Q hookfleet.high`` runs it.

Importing this module reads no environment and opens no connection: the configuration
is built from ``HOOKFLEET_*`` the first time Celery asks for it (``on_configure``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from kombu import Exchange, Queue

from models.logs import configure_logging, json_handler
from models.metrics import use_metrics_dir
from models.phones import configure_regions
from models.settings import QUEUES, Settings
from workers.batching import ReleaseReserved

app = Celery(
    "hookfleet",
    include=[
        "workers.tasks",
        "workers.provisioning.tasks",
        "workers.metrics",
        "workers.retention",
        "workers.sweeper",
    ],
    set_as_current=False,
)
# SIGTERM hands back the messages reserved but not started at once (workers.batching).
app.steps["consumer"].add(ReleaseReserved)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting Hookfleet relies on, and why."""
    transport = {
        # Ownership of an unacknowledged message is a lease of the live worker that took
        # it (workers.leases): renewed every lease_s / 5 by a thread of the worker's main
        # process; a dead or frozen worker's messages are restored by the others' sweep.
        "hookfleet_lease_s": settings.lease_s,
        "hookfleet_lease_renew_s": settings.lease_renew_s,
        # Only for messages no lease covers (a stock kombu consumer took them): they
        # come back after this long. A leased message is never restored by it.
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "health_check_interval": 30,
        "retry_on_timeout": True,
        # The sweep for lapsed leases runs this often (and once at start); the
        # visibility-timeout sweep every tenth time.
        "unacked_restore_interval": settings.lease_renew_s,
        "unacked_restore_throttle": 10,
    }
    return {
        "broker_url": settings.broker_url,
        # kombu's Redis transport with a pop that records the message as unacknowledged
        # in the same step: stock kombu loses a message to a kill between the two.
        "broker_transport": "workers.transport:Transport",
        "broker_transport_options": transport,
        # Celery reads the visibility timeout from here too when a Redis result backend
        # is configured; keep the two equal so nothing disagrees.
        "result_backend_transport_options": dict(transport),
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Acknowledge after the task ran, not when it was received: a worker that dies
        # mid-task leaves the message to be delivered again.
        "task_acks_late": True,
        # ...and a pool child killed by the OOM killer or SIGKILL does too.
        "task_reject_on_worker_lost": True,
        # ...and so does a task killed by the hard time limit: it goes back on its queue
        # instead of being acknowledged as failed (which would drop the event).
        "task_acks_on_timeout": False,
        # Deliveries are recorded in batches (workers.batching): each process reserves
        # enough for one batch running and the next one filling. A worker killed with
        # SIGKILL holds these until its lease lapses (HOOKFLEET_LEASE_S).
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "hookfleet_batch_size": settings.batch_size,
        "hookfleet_batch_wait_s": settings.batch_wait_ms / 1000,
        "hookfleet_batch_bytes": settings.batch_bytes,
        # KiB; checked by the pool process after each job (one batch). None: off.
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,
        "task_time_limit": settings.task_time_limit_s,
        # The soft limit raises inside the task, which then retries later on a fresh
        # message (workers.tasks); the hard limit is only a backstop: a task killed by it
        # is acknowledged as failed, so the soft limit must leave room to hand over.
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit_s),
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        "task_default_queue": "hookfleet.default",
        "task_create_missing_queues": False,
        "broker_connection_retry_on_startup": True,
        # Never give up on the broker: a worker that exits while Redis restarts has to be
        # restarted by hand.
        "broker_connection_max_retries": None,
        # Tasks still running when the broker connection drops will be redelivered;
        # cancelling them avoids the same work running twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # SIGTERM is a warm shutdown: no new jobs, the running ones finish (database waits
        # are bounded well inside the time limit, see workers.tasks), reserved messages
        # go back to the queue. A cold shutdown (SIGQUIT, a second SIGTERM) first allows
        # this long for running tasks, then cancels them and restores their messages.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "report-queue-depths": {"task": "hookfleet.report_queue_depths", "schedule": 60.0},
            # Daily retention of processed webhook_events (HOOKFLEET_RETENTION_DAYS).
            "prune-events": {"task": "hookfleet.prune_events", "schedule": 24 * 3600.0},
            # Reports (never fixes) orphans, duplicate customers and raw phones.
            "integrity-report": {"task": "hookfleet.integrity_report", "schedule": 3600.0},
            # Requeues events recorded but never finished (HOOKFLEET_STUCK_AFTER_S).
            "sweep-stuck": {"task": "hookfleet.sweep_stuck", "schedule": 60.0},
        },
        "beat_schedule_filename": os.path.join(settings.var_dir, "celerybeat-schedule"),
    }


def soft_time_limit(hard_s: int) -> int:
    """15 s before the hard limit, or 80 % of a short one."""
    return max(1, hard_s - 15 if hard_s >= 75 else int(hard_s * 0.8))


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    settings = Settings.from_env(os.environ)
    # Before workers.metrics is imported (include=, after configuration): one metrics
    # directory per host, so prefork children add up.
    use_metrics_dir()
    configure_logging(settings.log_level)
    configure_regions(settings.phone_regions)
    sender.conf.update(celery_config(settings))


@setup_logging.connect
def _json_logs(loglevel: Any = None, **_: Any) -> None:
    """Celery's own lines (worker ready, task received/succeeded, errors) as JSON lines
    on stdout too, like Hookfleet's: one format for journald or the log shipper.
    Connecting this signal also stops Celery from installing its own handlers."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(sys.stdout)]
    root.setLevel(loglevel or logging.INFO)

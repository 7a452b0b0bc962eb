"""The Celery app. ``celery -A workers.celery_app worker -Q hookfleet.high`` runs it.

Importing this module reads no environment and opens no connection: the configuration
is built from ``HOOKFLEET_*`` the first time Celery asks for it (``on_configure``).
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any
from urllib.parse import quote

from celery import Celery
from celery.signals import setup_logging
from kombu import Exchange
from kombu import Queue as KombuQueue

from models.broker.redis_links import (
    HEALTH_CHECK_S,
    is_sentinel_url,
    keepalive_options,
    parse_sentinel_url,
)
from models.contract import (
    INTEGRITY_REPORT,
    PRUNE_EVENTS,
    QUEUES,
    REPORT_QUEUE_DEPTHS,
    SWEEP_STUCK,
    Queue,
)
from models.logs import configure_logging, logging_config
from models.metrics import use_metrics_dir
from models.settings import Settings
from workers.broker.batching import ReleaseReserved

app = Celery(
    "hookfleet",
    include=[
        "workers.pipeline.tasks",
        "workers.provisioning.tasks",
        "workers.recovery.tasks",
        "workers.integrity.tasks",
        "workers.metrics",
        # Not tasks: the signal handlers that start tracing in each process.
        "workers.tracing",
    ],
    set_as_current=False,
)
# SIGTERM hands back the messages reserved but not started at once (workers.broker.batching).
app.steps["consumer"].add(ReleaseReserved)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting Hookfleet relies on, and why."""
    transport = {
        # Ownership of an unacknowledged message is a lease of the live worker that took
        # it (workers.broker.leases): renewed every lease_s / 5 by a thread of the worker's main
        # process; a dead or frozen worker's messages are restored by the others' sweep.
        "hookfleet_lease_s": settings.lease_s,
        "hookfleet_lease_renew_s": settings.lease_renew_s,
        # Only for messages no lease covers (a stock kombu consumer took them): they
        # come back after this long. A leased message is never restored by it.
        "visibility_timeout": settings.visibility_timeout_s,
        **broker_socket_options(),
        "retry_on_timeout": True,
        # The sweep for lapsed leases runs this often (and once at start); the
        # visibility-timeout sweep every tenth time.
        "unacked_restore_interval": settings.lease_renew_s,
        "unacked_restore_throttle": 10,
    }
    broker_url, broker_transport, sentinel_options = kombu_broker(settings.broker_url)
    transport.update(sentinel_options)
    return {
        "broker_url": broker_url,
        # kombu's Redis transport with a pop that records the message as unacknowledged
        # in the same step: stock kombu loses a message to a kill between the two.
        "broker_transport": broker_transport,
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
        # Deliveries are recorded in batches (workers.broker.batching): each process reserves
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
        # message (workers.pipeline.tasks); the hard limit is only a backstop: a task killed by it
        # is acknowledged as failed, so the soft limit must leave room to hand over.
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit_s),
        # kombu gets the plain names (the contract's values), not the enum members.
        "task_queues": [
            KombuQueue(q.value, Exchange(q.value), routing_key=q.value) for q in QUEUES
        ],
        "task_default_queue": Queue.DEFAULT.value,
        "task_create_missing_queues": False,
        "broker_connection_retry_on_startup": True,
        # Never give up on the broker: a worker that exits while Redis restarts has to be
        # restarted by hand.
        "broker_connection_max_retries": None,
        # Tasks still running when the broker connection drops will be redelivered;
        # cancelling them avoids the same work running twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # SIGTERM is a warm shutdown: no new jobs, the running ones finish (database waits
        # are bounded well inside the time limit, see workers.pipeline.tasks), reserved messages
        # go back to the queue. A cold shutdown (SIGQUIT, a second SIGTERM) first allows
        # this long for running tasks, then cancels them and restores their messages.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "report-queue-depths": {"task": REPORT_QUEUE_DEPTHS, "schedule": 60.0},
            # Daily retention of processed webhook_events (HOOKFLEET_RETENTION_DAYS).
            "prune-events": {"task": PRUNE_EVENTS, "schedule": 24 * 3600.0},
            # Reports (never fixes) orphans, duplicate customers and raw phones.
            "integrity-report": {"task": INTEGRITY_REPORT, "schedule": 3600.0},
            # Requeues events recorded but never finished (HOOKFLEET_STUCK_AFTER_S).
            "sweep-stuck": {"task": SWEEP_STUCK, "schedule": 60.0},
        },
        "beat_schedule_filename": os.path.join(settings.var_dir, "celerybeat-schedule"),
    }


def broker_socket_options() -> dict[str, Any]:
    """How the workers notice a broker connection that died without a word.

    A NAT or load balancer that forgets an idle flow sends neither FIN nor RST. kombu
    5.7 drops a consumer's ``BRPOP`` connection whose reply is overdue by
    ``brpop_timeout`` (1 s) + ``health_check_interval``, checked every
    ``health_check_interval`` (kombu/transport/redis.py, ``maybe_check_brpop_health``):
    with 5 s an idle worker dials again within 1 + 2 x 5 = 11 s. ``socket_timeout``
    bounds the synchronous commands (acks, publishes) of a busy one, and redis-py's
    ``health_check_interval`` pings a pooled connection idle that long before use.
    TCP keepalive (5 s idle, 3 probes 2 s apart) and ``TCP_USER_TIMEOUT`` (10 s) let the
    kernel give up on a peer that vanished even while nothing is being read.
    (Celery's ``broker_heartbeat`` applies to AMQP only; kombu's Redis transport has
    no heartbeats.)
    """
    return {
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": HEALTH_CHECK_S,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }


def kombu_broker(url: str) -> tuple[str, str, dict[str, Any]]:
    """The broker URL, transport and extra transport options kombu needs for ``url``.

    A Sentinel URL (``redis+sentinel://[:password@]h1:26379,h2:26379/service[/db]``,
    the receiver's format) becomes kombu's own (``sentinel://h1:26379/db;sentinel://
    h2:26379/db`` with the ``master_name`` transport option, kombu/transport/redis.py
    ``SentinelChannel``), served by Hookfleet's transport on kombu's Sentinel channel
    (:mod:`workers.broker.links`). Anything else is passed on as it is.
    """
    if not is_sentinel_url(url):
        return url, "workers.broker.links:Transport", {}
    address = parse_sentinel_url(url)
    credentials = ""
    if address.password:
        credentials = f"{quote(address.username or '')}:{quote(address.password)}@"
    sentinels = ";".join(
        f"sentinel://{credentials}{host}:{port}/{address.db}" for host, port in address.sentinels
    )
    timeouts = {"socket_timeout": 5, "socket_connect_timeout": 5}
    return (
        sentinels,
        "workers.broker.links:SentinelTransport",
        {"master_name": address.service, "sentinel_kwargs": timeouts},
    )


class _ReconnectIsAWarning(logging.Filter):
    """What a broker reconnect makes Celery, kombu and the batches log, as one warning
    line each instead of ERROR lines and tracebacks: the reconnect is retried forever
    (as configured here) and a Redis restart or failover is expected to pass; nothing
    was lost, so nothing should page anyone.

    - Celery logs each failed dial at ERROR ("consumer: Cannot connect to ...: ...
      Trying again in N seconds"); its "Connection to broker lost" is a warning already.
    - kombu logs its periodic binding refresh failing on the old connection with a
      traceback ("...: Redis error, will retry").
    - A batch cancelled because the connection was lost (Celery terminates running tasks
      then, ``worker_cancel_long_running_tasks_on_connection_loss``) ends with
      billiard's ``Terminated``: its messages are requeued, as designed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if record.name == "celery.worker.consumer.consumer":
            demote = text.startswith("consumer: Cannot connect")
        elif record.name == "kombu.transport.redis":
            demote = text.endswith("will retry")
        else:  # hookfleet.worker.batching
            demote = text.startswith("batch of") and "Terminated" in record.getMessage()
        if not demote:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            record.msg = f"{text} ({type(error).__name__}: {error})"
        elif text.startswith("batch of") and isinstance(record.args, tuple):
            record.msg = "batch of %d cancelled: the broker connection was lost; requeued"
            record.args = record.args[:1]
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = None
        record.exc_text = None
        return True


_RECONNECT_LOGGERS = (
    "celery.worker.consumer.consumer",
    "kombu.transport.redis",
    "hookfleet.worker.batching",
)


def soft_time_limit(hard_s: int) -> int:
    """15 s before the hard limit, or 80 % of a short one."""
    return max(1, hard_s - 15 if hard_s >= 75 else int(hard_s * 0.8))


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    from workers.runtime import settings as process_settings

    settings = process_settings()
    # Before workers.metrics is imported (include=, after configuration): one metrics
    # directory per host, so prefork children add up.
    use_metrics_dir()
    configure_logging(settings.log_level, settings.log_format)
    sender.conf.update(celery_config(settings))


@setup_logging.connect
def _json_logs(loglevel: Any = None, **_: Any) -> None:
    """Celery's own lines (worker ready, task received/succeeded, errors) as JSON lines
    on stdout too, like Hookfleet's: one format for journald or the log shipper.
    Connecting this signal also stops Celery from installing its own handlers."""
    from workers.runtime import settings as process_settings

    log_format = process_settings().log_format
    logging.config.dictConfig(logging_config(loglevel or logging.INFO, log_format))
    for name in _RECONNECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ReconnectIsAWarning) for f in logger.filters):
            logger.addFilter(_ReconnectIsAWarning())

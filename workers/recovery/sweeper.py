"""Stuck work: events a worker recorded (``received``) whose message is gone.

A worker records a batch of deliveries as ``received`` rows, then applies them. A row
left ``received`` long after the broker would have redelivered its message (a live
worker holds one at most the task time limit; a dead worker's comes back within its
lease, see ``workers.broker.leases``) lost that message: a Redis failover to a replica
without the latest writes, a retry message lost on the way. The sweep publishes such rows again
as ``process_event`` on their own queue, built from the row; the worker
claims a ``received`` row once and applies it once, so a requeue that races a late
original changes nothing.

What it cannot see: a message lost before any worker recorded it has no row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.base import utcnow
from models.contract import QUEUES, EventMessage, Queue
from models.events import EventStatus, WebhookEvent
from workers.recovery.deadletters import Publish, event_message
from workers.retries import is_transient

log = logging.getLogger("hookfleet.worker.sweeper")

FALLBACK_QUEUE = Queue.DEFAULT
# Per beat run: a large loss drains over a few minutes instead of one long task that
# the next run (a minute later) would overlap and publish again.
BEAT_LIMIT = 5000


@dataclass
class SweepReport:
    """What one sweep found and did. ``publish=None`` (a dry run) leaves ``requeued`` 0."""

    cutoff: datetime
    dry_run: bool
    # Received rows recorded before the cutoff: accepted, not finished in time — the
    # ones requeued by an earlier sweep and still waiting included.
    stuck: int = 0
    oldest_age: timedelta | None = None
    # Of those, the rows also untouched since the cutoff (at most ``limit``): the ones
    # this sweep requeues, or would.
    selected: int = 0
    requeued: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)


def sweep(
    sessions: sessionmaker[Session],
    publish: Publish | None,
    older_than: timedelta,
    *,
    limit: int | None,
    batch_size: int = 500,
    now: datetime | None = None,
) -> SweepReport:
    """Requeue ``received`` rows unchanged for longer than ``older_than``, oldest id
    first, at most ``limit`` (None: all); ``publish=None`` only counts.

    Rows are read ``batch_size`` at a time by keyset pagination, each batch in its own
    short session, so memory holds one batch of payloads whatever the total. A batch is
    published first, then its rows still ``received`` get ``updated_at = now``: the
    next sweep leaves them alone until ``older_than`` has passed again, and a crash
    between the two steps means a second requeue, never none. Safe to run concurrently
    with the workers and with itself (a duplicate message finds the row processed).
    """
    now = now or utcnow()
    cutoff = now - older_than
    # A row is created no later than it is updated: created_at narrows the search to
    # the (status, created_at) index.
    overdue = (WebhookEvent.status == EventStatus.RECEIVED, WebhookEvent.created_at < cutoff)
    with sessions() as session:
        stuck, oldest = session.execute(
            select(func.count(), func.min(WebhookEvent.created_at)).where(*overdue)
        ).one()
    report = SweepReport(
        cutoff=cutoff,
        dry_run=publish is None,
        stuck=int(stuck),
        oldest_age=None if oldest is None else now - oldest,
    )
    due = (*overdue, WebhookEvent.updated_at < cutoff)
    last = 0
    while limit is None or report.selected < limit:
        size = batch_size if limit is None else min(batch_size, limit - report.selected)
        ids, batch = _next_batch(sessions, due, after_id=last, size=size)
        if not batch:
            break
        last = ids[-1]
        report.selected += len(batch)
        for event in batch:
            report.by_provider[event.provider] = report.by_provider.get(event.provider, 0) + 1
        if publish is not None:
            publish(batch)
            _touch(sessions, ids, now)
            report.requeued += len(batch)
    return report


def _next_batch(
    sessions: sessionmaker[Session], due: tuple[Any, ...], *, after_id: int, size: int
) -> tuple[list[int], list[EventMessage]]:
    """Ids and messages of the next ``size`` due rows after ``after_id``."""
    with sessions() as session:
        rows = session.scalars(
            select(WebhookEvent)
            .where(*due, WebhookEvent.id > after_id)
            .options(undefer(WebhookEvent.payload))
            .order_by(WebhookEvent.id)
            .limit(size)
        ).all()
        return [row.id for row in rows], [
            event_message(row, queue=_own_queue(row.queue), replay=False) for row in rows
        ]


def _own_queue(queue: str) -> str:
    """The queue the receiver chose; :data:`FALLBACK_QUEUE` for a row without one (or one
    this version no longer declares, which Celery would refuse)."""
    return queue if queue in QUEUES else FALLBACK_QUEUE


def _touch(sessions: sessionmaker[Session], ids: list[int], now: datetime) -> None:
    try:
        with sessions() as session:
            session.execute(
                update(WebhookEvent)
                # A row a worker finished meanwhile keeps its own updated_at.
                .where(WebhookEvent.id.in_(ids), WebhookEvent.status == EventStatus.RECEIVED)
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
            session.commit()
    except DBAPIError as error:
        if not is_transient(error):
            raise
        # The workers are already applying the batch just published (their claims lock
        # its rows: MariaDB saw a deadlock or a lock wait). Left untouched, a row still
        # unfinished at the next sweep is published once more: applied once all the same.
        log.warning(
            "requeued stuck events left unmarked",
            extra={"events": len(ids), "error": type(error.orig).__name__},
        )

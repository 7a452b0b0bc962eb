"""Replaying failed events: queue them again from the row that kept their payload.

``record_event`` finishes a row whose status is ``received`` or ``failed`` (the
conditional UPDATE makes a replay racing a late redelivery apply once), so a replay is
the same task with the row's own arguments, on ``hookfleet.low`` by default so it never
delays live traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.events import EventStatus, WebhookEvent

PROCESS_EVENT_TASK = "hookfleet.process_event"
# Statuses record_event will finish when the task arrives again.
REPLAYABLE = (EventStatus.FAILED,)

Send = Callable[[str, dict[str, Any], dict[str, str]], None]


def task_arguments(row: WebhookEvent) -> dict[str, Any]:
    """The keyword arguments the receiver queued for this event, rebuilt from its row."""
    return {
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "queue": row.queue,
        "correlation_id": row.correlation_id,
        "received_at": row.received_at.isoformat(),
        "headers": dict(row.headers or {}),
        "payload": row.payload,
    }


def replay_failed(
    sessions: sessionmaker[Session],
    send: Send,
    *,
    provider: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    dry_run: bool = False,
) -> int:
    """Queue up to ``limit`` failed events again (oldest first); return how many.

    ``send(task_name, kwargs, headers)`` publishes one task. Idempotent in effect: an
    event that meanwhile succeeded is not applied twice.
    """
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.status.in_(REPLAYABLE))
        .order_by(WebhookEvent.id)
        .limit(limit)
        .options(undefer(WebhookEvent.payload))
    )
    if provider:
        query = query.where(WebhookEvent.provider == provider)
    if since:
        query = query.where(WebhookEvent.created_at >= since)
    with sessions() as session:
        rows = session.scalars(query).all()
        if not dry_run:
            for row in rows:
                send(
                    PROCESS_EVENT_TASK,
                    task_arguments(row),
                    {"hookfleet_correlation_id": row.correlation_id},
                )
    return len(rows)

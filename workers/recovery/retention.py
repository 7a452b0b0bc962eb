"""Retention: delete old processed ``webhook_events`` in small batches.

Dead letters (``failed``, ``dead``) stay until they are replayed or pruned on purpose
(``include_dead``); rows still in flight (``received``) are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.events import EventStatus, WebhookEvent

# Small enough that one DELETE holds its locks briefly next to the workers' inserts.
BATCH_SIZE = 1000


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    statuses: tuple[str, ...]
    deleted: int  # or, in a dry run, would be deleted
    dry_run: bool


def prunable_statuses(include_dead: bool) -> tuple[EventStatus, ...]:
    if include_dead:
        return (EventStatus.PROCESSED, EventStatus.FAILED, EventStatus.DEAD)
    return (EventStatus.PROCESSED,)


def prune_events(
    sessions: sessionmaker[Session],
    older_than: timedelta,
    *,
    include_dead: bool = False,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    now: datetime | None = None,
) -> PruneResult:
    """Delete rows created before ``now - older_than`` with a prunable status.

    Batches by primary key, one transaction per batch, so a large backlog never holds a
    long lock or a huge undo log. Safe to interrupt and to run again.
    """
    cutoff = (now or utcnow()) - older_than
    statuses = prunable_statuses(include_dead)
    where = (WebhookEvent.status.in_(statuses), WebhookEvent.created_at < cutoff)
    names = tuple(s.value for s in statuses)
    with sessions() as session:
        if dry_run:
            count = session.scalar(select(func.count()).where(*where)) or 0
            return PruneResult(cutoff, names, int(count), True)
        deleted = 0
        while True:
            ids = session.scalars(
                select(WebhookEvent.id).where(*where).order_by(WebhookEvent.id).limit(batch_size)
            ).all()
            if not ids:
                break
            session.execute(
                delete(WebhookEvent)
                .where(WebhookEvent.id.in_(ids), *where)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            deleted += len(ids)
    return PruneResult(cutoff, names, deleted, False)

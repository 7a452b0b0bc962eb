"""Retention: delete old processed ``webhook_events`` in small batches.

Dead letters (``failed``, ``dead``) stay until they are replayed or pruned on purpose
(``include_dead``); rows still in flight (``received``) are never touched.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.contract import PRUNE_EVENTS
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from workers.celery_app import app

log = logging.getLogger("hookfleet.worker.retention")

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Small enough that one DELETE holds its locks briefly next to the workers' inserts.
BATCH_SIZE = 1000


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s``; raises ValueError otherwise."""
    match = _AGE.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not an age like 30d, 12h, 90m")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


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


@app.task(name=PRUNE_EVENTS)
def prune_events_task() -> int:
    """Beat's daily retention run: processed rows older than HOOKFLEET_RETENTION_DAYS."""
    from workers.tasks import sessions

    days = Settings.from_env(os.environ).retention_days
    if days == 0:
        log.info("retention off (HOOKFLEET_RETENTION_DAYS=0)")
        return 0
    result = prune_events(sessions(), timedelta(days=days))
    log.info("pruned webhook_events", extra={"deleted": result.deleted, "older_than_days": days})
    return result.deleted

"""Dead letters and replays: finding what did not take effect, and running it again.

Listing never loads payloads; replaying streams the selected events in batches by
keyset pagination (``id > last``), so a million events never sit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.contract import PROCESS_EVENT, EventMessage, Queue
from models.events import EventStatus, WebhookEvent

REPLAY_QUEUE = Queue.LOW
_Statement = TypeVar("_Statement", bound=Select)
# Hands a batch of event messages to the workers (send_to_workers); None: a dry run.
Publish = Callable[[list[EventMessage]], None]


@dataclass(frozen=True)
class Selection:
    """Which events: by id, or by provider / type / time range / status."""

    event_ids: Sequence[str] = ()
    provider: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: Sequence[EventStatus] = (EventStatus.DEAD,)

    def where(self, statement: _Statement) -> _Statement:
        if self.event_ids:
            statement = statement.where(WebhookEvent.event_id.in_(list(self.event_ids)))
        else:
            statement = statement.where(WebhookEvent.status.in_(list(self.statuses)))
        if self.provider:
            statement = statement.where(WebhookEvent.provider == self.provider)
        if self.event_type:
            statement = statement.where(WebhookEvent.event_type == self.event_type)
        if self.since:
            statement = statement.where(WebhookEvent.created_at >= self.since)
        if self.until:
            statement = statement.where(WebhookEvent.created_at < self.until)
        return statement


@dataclass(frozen=True)
class Letter:
    """One line of ``hookfleet dlq list``: no payload, the first line of the error."""

    id: int
    provider: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    error: str
    updated_at: datetime


LIST_COLUMNS = (
    WebhookEvent.id,
    WebhookEvent.provider,
    WebhookEvent.event_id,
    WebhookEvent.event_type,
    WebhookEvent.status,
    WebhookEvent.attempts,
    WebhookEvent.last_error,
    WebhookEvent.updated_at,
)


def list_letters(
    session: Session, selection: Selection, *, after_id: int = 0, limit: int = 50
) -> list[Letter]:
    """A page of matching events, oldest first, starting after ``after_id``."""
    statement = selection.where(select(*LIST_COLUMNS).where(WebhookEvent.id > after_id))
    rows = session.execute(statement.order_by(WebhookEvent.id).limit(limit)).all()
    return [
        Letter(
            id=r.id,
            provider=r.provider,
            event_id=r.event_id,
            event_type=r.event_type,
            status=r.status.value,
            attempts=r.attempts,
            error=(r.last_error or "").splitlines()[0][:160] if r.last_error else "",
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def show_letter(session: Session, event_pk: int) -> WebhookEvent | None:
    """One event with everything: payload, headers, error and traceback."""
    return session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.id == event_pk)
        .options(undefer(WebhookEvent.payload), undefer(WebhookEvent.last_traceback))
    ).first()


def event_message(row: WebhookEvent, *, queue: str, replay: bool) -> EventMessage:
    """The message that runs ``row`` again on ``queue``, as the receiver wrote it.

    ``replay=True`` is a deliberate replay (the effect is applied again whatever the
    row's status); ``replay=False`` is a plain redelivery, which the worker finishes only
    if the row is still unfinished. ``row.payload`` must be loaded (it is deferred).
    """
    return EventMessage(
        provider=row.provider,
        event_id=row.event_id,
        event_type=row.event_type,
        queue=queue,
        correlation_id=row.correlation_id,
        received_at=row.received_at,
        headers=dict(row.headers or {}),
        payload=row.payload,
        replay=replay,
    )


def send_to_workers(batch: list[EventMessage]) -> None:
    """Publish each of ``batch`` as ``process_event`` on its own queue, over one
    broker connection (the Celery app's)."""
    from models.tracing import trace_headers
    from workers.celery_app import app
    from workers.pipeline.tracing import publish_span

    with app.producer_or_acquire() as producer:
        for event in batch:
            with publish_span(event):  # linked to the event's first trace (tracing on)
                app.send_task(
                    PROCESS_EVENT,
                    kwargs=event.to_kwargs(),
                    queue=event.queue,
                    producer=producer,
                    headers=trace_headers(),
                )


@dataclass
class ReplayReport:
    selected: int = 0
    published: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)


def batches(
    sessions: sessionmaker[Session], selection: Selection, batch_size: int = 500
) -> Iterator[list[EventMessage]]:
    """The selected events as replay messages, ``batch_size`` at a time, by ascending id.

    Each batch is read in its own short session and handed over detached from it, so
    memory holds one batch whatever the total.
    """
    last = 0
    while True:
        with sessions() as session:
            statement = selection.where(
                select(WebhookEvent)
                .where(WebhookEvent.id > last)
                .options(undefer(WebhookEvent.payload))
            )
            rows = session.scalars(statement.order_by(WebhookEvent.id).limit(batch_size)).all()
            if not rows:
                return
            last = rows[-1].id
            batch = [event_message(row, queue=REPLAY_QUEUE, replay=True) for row in rows]
        yield batch


def replay(
    sessions: sessionmaker[Session],
    selection: Selection,
    publish: Publish | None,
    *,
    batch_size: int = 500,
    progress: Callable[[ReplayReport], None] | None = None,
) -> ReplayReport:
    """Publish every selected event as a replay on :data:`REPLAY_QUEUE`; ``publish=None``
    is a dry run that only counts. Replays bypass the receiver's dedup on purpose and
    stay idempotent downstream (``record_event`` with ``replay=True``)."""
    report = ReplayReport()
    for batch in batches(sessions, selection, batch_size):
        report.selected += len(batch)
        for event in batch:
            report.by_provider[event.provider] = report.by_provider.get(event.provider, 0) + 1
        if publish is not None:
            publish(batch)
            report.published += len(batch)
        if progress is not None:
            progress(report)
    return report

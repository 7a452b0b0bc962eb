"""Finding recorded events: one selection for ``events list``, ``dlq list`` and ``replay``.

Every filter runs in SQL, the payload search too (:mod:`models.payload_search`), and
listing selects the small columns only: the deferred ``payload`` is never loaded to
list. Pages are keyset pages (``id > after``, ascending id), stable while rows are
added or change status.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.events import EventStatus, WebhookEvent
from models.payload_search import PayloadCondition, PayloadEquals, TextEquals, parse_condition

_Statement = TypeVar("_Statement", bound=Select)
PAGE = 1000  # rows per query when streaming more than one page


@dataclass(frozen=True)
class Selection:
    """Which events. ``event_ids`` (provider event ids) select by id whatever the status;
    otherwise ``statuses`` (empty: any). The rest narrow either: ``since`` inclusive,
    ``until`` exclusive (on ``created_at``), ``where`` payload conditions all hold,
    ``up_to_id`` bounds the primary key (a replay run's frozen end)."""

    event_ids: Sequence[str] = ()
    provider: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: Sequence[EventStatus] = ()
    correlation_id: str | None = None
    where: Sequence[PayloadCondition] = field(default=())
    up_to_id: int | None = None

    def apply(self, statement: _Statement) -> _Statement:
        """``statement`` narrowed to the selected ``webhook_events`` rows."""
        if self.event_ids:
            statement = statement.where(WebhookEvent.event_id.in_(list(self.event_ids)))
        elif self.statuses:
            statement = statement.where(WebhookEvent.status.in_(list(self.statuses)))
        if self.provider:
            statement = statement.where(WebhookEvent.provider == self.provider)
        if self.event_type:
            # Exact on MariaDB too, where the column's collation folds case and accents.
            statement = statement.where(TextEquals(WebhookEvent.event_type, self.event_type))
        if self.since:
            statement = statement.where(WebhookEvent.created_at >= self.since)
        if self.until:
            statement = statement.where(WebhookEvent.created_at < self.until)
        if self.correlation_id:
            statement = statement.where(
                TextEquals(WebhookEvent.correlation_id, self.correlation_id)
            )
        for condition in self.where:
            statement = statement.where(PayloadEquals(WebhookEvent.payload, condition))
        if self.up_to_id is not None:
            statement = statement.where(WebhookEvent.id <= self.up_to_id)
        return statement

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (a replay run keeps it); :meth:`from_json` reads it back."""
        return {
            "event_ids": list(self.event_ids),
            "provider": self.provider,
            "event_type": self.event_type,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "statuses": [s.value for s in self.statuses],
            "correlation_id": self.correlation_id,
            "where": [c.source for c in self.where],
            "up_to_id": self.up_to_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        return cls(
            event_ids=tuple(data.get("event_ids") or ()),
            provider=data.get("provider"),
            event_type=data.get("event_type"),
            since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
            until=datetime.fromisoformat(data["until"]) if data.get("until") else None,
            statuses=tuple(EventStatus(s) for s in data.get("statuses") or ()),
            correlation_id=data.get("correlation_id"),
            where=tuple(parse_condition(text) for text in data.get("where") or ()),
            up_to_id=data.get("up_to_id"),
        )

    def described(self) -> str:
        """One line for people: ``provider=stripe status=dead where data.x=1``."""
        parts = [f"event-id={e}" for e in self.event_ids]
        parts += [f"{k}={v}" for k, v in self._named().items() if v]
        parts += [f"where {c.source}" for c in self.where]
        return " ".join(parts) or "everything"

    def _named(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.event_type,
            "status": ",".join(s.value for s in self.statuses),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "correlation-id": self.correlation_id,
        }


@dataclass(frozen=True)
class EventLine:
    """One listed event: no payload, the first line of its error (160 characters)."""

    id: int
    provider: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    queue: str
    correlation_id: str
    error: str
    received_at: datetime
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "queue": self.queue,
            "correlation_id": self.correlation_id,
            "error": self.error,
            "received_at": self.received_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


LIST_COLUMNS = (
    WebhookEvent.id,
    WebhookEvent.provider,
    WebhookEvent.event_id,
    WebhookEvent.event_type,
    WebhookEvent.status,
    WebhookEvent.attempts,
    WebhookEvent.queue,
    WebhookEvent.correlation_id,
    WebhookEvent.last_error,
    WebhookEvent.received_at,
    WebhookEvent.created_at,
    WebhookEvent.updated_at,
)


def list_events(
    sessions: sessionmaker[Session], selection: Selection, *, after_id: int = 0, limit: int = 50
) -> Iterator[EventLine]:
    """The matching events with ``id > after_id``, ascending id, at most ``limit`` (0:
    all), read :data:`PAGE` rows per short session: memory holds one page."""
    remaining = limit or None
    while remaining is None or remaining > 0:
        page = min(PAGE, remaining) if remaining is not None else PAGE
        statement = selection.apply(select(*LIST_COLUMNS).where(WebhookEvent.id > after_id))
        with sessions() as session:
            rows = session.execute(statement.order_by(WebhookEvent.id).limit(page)).all()
        for row in rows:
            yield _line(row)
        if len(rows) < page:
            return
        after_id = rows[-1].id
        if remaining is not None:
            remaining -= len(rows)


def _line(row: Any) -> EventLine:
    return EventLine(
        id=row.id,
        provider=row.provider,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status.value,
        attempts=row.attempts,
        queue=row.queue,
        correlation_id=row.correlation_id,
        error=(row.last_error or "").splitlines()[0][:160] if row.last_error else "",
        received_at=row.received_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def find_event(
    session: Session, *, pk: int | None = None, provider: str = "", event_id: str = ""
) -> WebhookEvent | None:
    """One event with everything (payload, headers, error, traceback), by its ``id``
    or by ``provider`` and the provider's ``event_id``."""
    statement = select(WebhookEvent).options(
        undefer(WebhookEvent.payload), undefer(WebhookEvent.last_traceback)
    )
    if pk is not None:
        statement = statement.where(WebhookEvent.id == pk)
    else:
        statement = statement.where(
            WebhookEvent.provider == provider, WebhookEvent.event_id == event_id
        )
    return session.scalars(statement).first()


def estimate(session: Session, selection: Selection) -> dict[tuple[str, str], int]:
    """How many events match, by ``(provider, event_type)``: one grouped count."""
    statement = selection.apply(
        select(WebhookEvent.provider, WebhookEvent.event_type, func.count())
    ).group_by(WebhookEvent.provider, WebhookEvent.event_type)
    return {(p, t): n for p, t, n in session.execute(statement).all()}


def highest_id(session: Session) -> int:
    """The highest ``webhook_events.id`` now (0 for none)."""
    return int(session.scalar(select(func.max(WebhookEvent.id))) or 0)

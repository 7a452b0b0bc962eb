"""``webhook_events``: one row per accepted delivery, the second layer of dedup."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import (
    Base,
    EventId,
    LongText,
    PortableJSON,
    UTCDateTime,
    exact_text,
    status_column,
    utcnow,
)


class EventStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    FAILED = "failed"
    DEAD = "dead"


class WebhookEvent(Base):
    """A delivery as the receiver accepted it and what became of it.

    ``(provider, event_id)`` is UNIQUE: Redis dedup forgets after its TTL, this does not.
    Both compare byte for byte (``exact_text``), like the Redis key: ids that differ
    only in case or accents are two deliveries.
    ``payload`` is deferred, so listing queries never load it.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index(None, "provider", "event_id", "created_at"),
        Index(None, "status", "created_at"),
        Index(None, "correlation_id"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(exact_text(32))
    event_id: Mapped[str] = mapped_column(exact_text(191))
    event_type: Mapped[str] = mapped_column(String(128), default="")
    queue: Mapped[str] = mapped_column(String(64), default="")
    correlation_id: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[EventStatus] = mapped_column(
        status_column(EventStatus), default=EventStatus.RECEIVED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_traceback: Mapped[str | None] = deferred(mapped_column(Text, default=None))
    headers: Mapped[dict[str, Any]] = mapped_column(PortableJSON(), default=dict)
    payload: Mapped[str] = deferred(mapped_column(LongText, nullable=False))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<WebhookEvent {self.provider}:{self.event_id} {self.status.value}>"

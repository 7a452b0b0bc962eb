"""``appointments``: one row per Cal.com booking uid."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import Base, LongText, UTCDateTime, optional_link, utcnow


class Appointment(Base):
    """A booking. ``calcom_uid`` is UNIQUE.

    ``status``: ``booked``; ``rescheduled`` (moved to the booking whose
    ``rescheduled_from_uid`` names this one); ``cancelled``. ``event_rank`` and
    ``event_at`` (the trigger's ``createdAt``) order the events merged so far, so a
    late BOOKING_CREATED never undoes a cancellation or a move.
    """

    __tablename__ = "appointments"
    __table_args__ = (
        Index(None, "company_id", "status", "starts_at"),
        Index(None, "starts_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calcom_uid: Mapped[str] = mapped_column(String(128), unique=True)
    company_id: Mapped[int | None] = optional_link("companies")
    branch_id: Mapped[int | None] = optional_link("branches")
    customer_id: Mapped[int | None] = optional_link("customers")
    staff_id: Mapped[int | None] = optional_link("staff")
    service_id: Mapped[int | None] = optional_link("services")
    calcom_event_type_id: Mapped[int | None] = mapped_column(Integer, default=None)
    title: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(16), default="booked")
    event_rank: Mapped[int] = mapped_column(Integer, default=0)
    event_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    rescheduled_from_uid: Mapped[str | None] = mapped_column(String(128), default=None)
    cancellation_reason: Mapped[str | None] = mapped_column(Text, default=None)
    raw_payload: Mapped[str | None] = deferred(mapped_column(LongText, default=None))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Appointment {self.calcom_uid} {self.status}>"

"""``calls``: one row per Retell call, merged from its events in any order."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import (
    Base,
    LongText,
    PortableJSON,
    Timestamped,
    UTCDateTime,
    exact_text,
    optional_link,
)
from models.phones import PHONE_MAX

# The width of calls.call_id. Retell's ids are 32 characters (retell-python-sdk
# call_response.py examples: "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6").
CALL_ID_LENGTH = 128


def is_call_id(value: object) -> bool:
    """Whether ``value`` can key a call (a Retell ``call_id`` / ``chat_id``): a string
    of 1 to CALL_ID_LENGTH characters, not only white space. The receiver refuses a
    call event without one (422), so the worker never meets it."""
    return isinstance(value, str) and 0 < len(value) <= CALL_ID_LENGTH and not value.isspace()


class CallStatus(enum.StrEnum):
    """``calls.status``: Retell's ``call_status`` values (retell-python-sdk
    ``call_response.py``). Our events set ``ongoing`` (call_started) and ``ended``;
    Retell's own ``error`` / ``not_connected`` say how a call ended and win."""

    REGISTERED = "registered"  # the row exists; no event has said more
    ONGOING = "ongoing"
    ENDED = "ended"
    ERROR = "error"
    NOT_CONNECTED = "not_connected"


class Call(Timestamped, Base):
    """A voice (or chat) call. ``call_id`` is Retell's id, UNIQUE, compared byte for
    byte (Retell's ids are mixed-case).

    ``event_rank`` is the rank of the latest-stage event merged so far (started <
    ended < analyzed): a lower-ranked event arriving late only fills gaps, so the
    final row does not depend on arrival order. ``transcript``, ``analysis`` and
    ``raw_payload`` are deferred: listings never load them.
    """

    __tablename__ = "calls"
    __table_args__ = (
        Index(None, "company_id", "created_at"),
        Index(None, "customer_id", "created_at"),
        Index(None, "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(exact_text(CALL_ID_LENGTH), unique=True)
    company_id: Mapped[int | None] = optional_link("companies")
    branch_id: Mapped[int | None] = optional_link("branches")
    customer_id: Mapped[int | None] = optional_link("customers")
    staff_id: Mapped[int | None] = optional_link("staff")
    agent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    direction: Mapped[str | None] = mapped_column(String(16), default=None)
    status: Mapped[str] = mapped_column(String(32), default=CallStatus.REGISTERED)
    event_rank: Mapped[int] = mapped_column(Integer, default=0)
    from_number: Mapped[str | None] = mapped_column(String(PHONE_MAX), default=None)
    to_number: Mapped[str | None] = mapped_column(String(PHONE_MAX), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    disconnection_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    recording_url: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[str | None] = mapped_column(Text, default=None)
    analysis: Mapped[dict[str, Any] | None] = deferred(mapped_column(PortableJSON(), default=None))
    transcript: Mapped[str | None] = deferred(mapped_column(LongText, default=None))
    raw_payload: Mapped[str | None] = deferred(mapped_column(LongText, default=None))

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.status}>"

"""The rules every event-to-row mapping shares (calls, appointments, attendees), once.

- :func:`merge_ranked`: "the later event wins, an earlier one only fills gaps" — how a
  row built from events that arrive in any order ends the same whatever the order.
- :func:`text`: a provider's string cut to its column, or nothing.
- :func:`staff_by_email`: the staff member an event names by e-mail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.business import Staff


def merge_ranked(row: object, fields: Mapping[str, Any], *, later: bool) -> None:
    """Write ``fields`` on ``row``: every value when the event is ``later`` than (or as
    late as) what the row holds, else only into fields still None. A None value (not
    carried, or not storable) never overwrites. The caller records the new order when
    ``later``."""
    for name, value in fields.items():
        if value is not None and (later or getattr(row, name) is None):
            setattr(row, name, value)


def text(value: object, limit: int) -> str | None:
    """A non-empty string cut to ``limit`` characters (a VARCHAR's width); else None."""
    return value[:limit] if isinstance(value, str) and value else None


def staff_by_email(session: Session, company_id: int | None, email: str | None) -> int | None:
    """The id of ``company_id``'s staff member with ``email`` (already normalized with
    ``normalize_email``, as ``Staff.email`` is stored); None when either is unknown or
    no one matches."""
    if company_id is None or email is None:
        return None
    return session.scalar(
        select(Staff.id).where(Staff.company_id == company_id, Staff.email == email)
    )

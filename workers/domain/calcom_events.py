"""A stored Cal.com delivery read back for the worker, whichever shape it came in.

The receiver (``ingest/providers/calcom.py``, which the worker may not import) reads the
same shapes for the key: ``{"triggerEvent", "createdAt", "payload": {...}}``; the booking
flat at the top level (the scheduled job's MEETING_STARTED / MEETING_ENDED,
``scheduleTrigger.ts``); or a custom template's body wrapped under
``hookfleet_reframed``, its form fields HTML-unescaped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.business import EMAIL_MAX, normalize_email
from models.events import WebhookEvent
from workers.retries import PermanentError

log = logging.getLogger("hookfleet.worker.appointments")

_WRAPPER = "hookfleet_reframed"  # ingest.providers.calcom.WRAPPER


@dataclass(frozen=True)
class CalcomEvent:
    """A stored delivery read back: the trigger, its ``createdAt`` and the booking (or
    no-show notice) it is about, whichever of Cal.com's shapes it came in."""

    trigger: str
    created_at: datetime | None
    booking: dict[str, Any]
    raw: str

    @classmethod
    def load(cls, event: WebhookEvent) -> CalcomEvent:
        body = json.loads(event.payload)
        wrapped = body.get(_WRAPPER)
        if isinstance(wrapped, dict) and isinstance(wrapped.get("fields"), dict):
            booking = wrapped["fields"]
        elif isinstance(body.get("payload"), dict):
            booking = body["payload"]
        else:  # flat: the scheduled job's MEETING_STARTED / MEETING_ENDED, or a template
            booking = body
        created = when(body.get("createdAt"), "createdAt", required=False)
        return cls(event.event_type, created, booking, event.payload)

    def booking_id(self) -> int | None:
        number = self.booking.get("bookingId")
        if number is None and self.trigger in ("MEETING_STARTED", "MEETING_ENDED"):
            number = self.booking.get("id")  # the flat booking row's own id
        return number if isinstance(number, int) and not isinstance(number, bool) else None

    def uid(self) -> str | None:
        for name in ("uid", "bookingUid"):
            value = self.booking.get(name)
            if isinstance(value, str) and value:
                return value[:128]
        return None

    def attendees(self) -> list[dict[str, Any]]:
        found = self.booking.get("attendees")
        if not isinstance(found, list):
            return []
        return [a for a in found if isinstance(a, dict) and attendee_key(a) is not None]


NAME_MAX = 200  # appointment_attendees.name, customers.name


def attendee_key(attendee: dict[str, Any]) -> str | None:
    """Who an attendee is within one booking: the e-mail as written (normalized), else
    the name (a phone-only booker). None when the attendee names neither."""
    email = email_of(attendee)
    if email:
        return email
    name = attendee.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    # As stored (``appointment_attendees.name``, 200): the row's key must match the event's.
    return f"name:{' '.join(name[:NAME_MAX].split()).lower()}"


# Cal.com's stand-in address for a booker who gave only a phone number:
# ``<digits>@sms.cal.com`` (``contructEmailFromPhoneNumber``,
# packages/lib/contructEmailFromPhoneNumber.ts); Cal.com's own ``isSmsCalEmail``
# (packages/lib/isSmsCalEmail.ts) treats it as no e-mail.
SMS_STAND_IN_DOMAIN = "@sms.cal.com"


def email_of(attendee: dict[str, Any]) -> str | None:
    """The attendee's e-mail address, normalized, or None when it identifies no one:
    absent, Cal.com's phone stand-in (``…@sms.cal.com``), or longer than any address
    can be (``EMAIL_MAX``, RFC 5321; logged at INFO). The raw payload keeps it all."""
    email = normalize_email(
        attendee.get("email") if isinstance(attendee.get("email"), str) else None
    )
    if email is None or email.endswith(SMS_STAND_IN_DOMAIN):
        return None
    if len(email) > EMAIL_MAX:
        log.info(
            "attendee e-mail longer than an address can be; identifies no one",
            extra={"email_length": len(email)},
        )
        return None
    return email


def when(value: object, name: str, *, required: bool = True) -> datetime | None:
    """An ISO-8601 timestamp as aware UTC; PermanentError when present but unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if required:
        raise PermanentError(f"payload.{name} {value!r} is not an ISO-8601 timestamp")
    return None

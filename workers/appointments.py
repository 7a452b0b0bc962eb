"""Cal.com booking events → one ``appointments`` row per booking uid.

``BOOKING_CREATED`` books; ``BOOKING_RESCHEDULED`` either moves the booking in place
(same uid, new start) or, when it names an older booking in ``rescheduleUid``, marks
that one ``rescheduled`` and books the new uid; ``BOOKING_CANCELLED`` cancels. Events
are ordered by (rank, the trigger's ``createdAt``): one below a row's order only fills
empty fields, so a late or repeated BOOKING_CREATED never undoes a move or a
cancellation. Other triggers are recorded only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.appointments import Appointment
from models.business import Branch, Service, Staff, normalize_email
from models.events import WebhookEvent
from workers.customers import find_or_create_customer
from workers.retries import PermanentError, RaceLost

log = logging.getLogger("hookfleet.worker.appointments")

RANKS = {"BOOKING_CREATED": 1, "BOOKING_RESCHEDULED": 2, "BOOKING_CANCELLED": 3}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Order:
    rank: int
    at: datetime | None

    def at_least(self, appointment: Appointment) -> bool:
        mine = (self.rank, self.at or _EPOCH)
        theirs = (appointment.event_rank, appointment.event_at or _EPOCH)
        return mine >= theirs


def apply_calcom_event(session: Session, event: WebhookEvent) -> None:
    """Upsert the appointment(s) a booking event is about.

    Raises PermanentError for a booking event without ``payload.uid`` or with a start
    or end that is not a timestamp; RaceLost when a concurrent worker created the same
    booking first.
    """
    rank = RANKS.get(event.event_type)
    if rank is None:
        return
    body = json.loads(event.payload)
    booking: dict[str, Any] = body["payload"]  # the receiver checked it is an object
    uid = booking.get("uid")
    if not isinstance(uid, str) or not uid:
        raise PermanentError(f"{event.event_type} without payload.uid cannot be an appointment")
    order = Order(rank, _when(body.get("createdAt"), "createdAt", required=False))
    fields = _fields(session, booking, event.payload)
    previous = booking.get("rescheduleUid")
    moved_from = previous if isinstance(previous, str) and previous and previous != uid else None

    if event.event_type == "BOOKING_CANCELLED":
        reason = booking.get("cancellationReason")
        fields |= {"status": "cancelled", "cancellation_reason": _text(reason, 2000)}
    else:
        fields["status"] = "booked"
    if moved_from:
        fields["rescheduled_from_uid"] = moved_from[:128]
        # The old booking is over: rescheduled, whatever it said before (unless a later
        # event, e.g. its own cancellation, outranks this one).
        _upsert(session, moved_from, {"status": "rescheduled"}, order)
    _upsert(session, uid, fields, order)
    try:
        session.flush()
    except IntegrityError as error:
        raise RaceLost(f"booking {uid} was created concurrently") from error


def _upsert(session: Session, uid: str, fields: dict[str, Any], order: Order) -> None:
    appointment = session.scalars(
        select(Appointment).where(Appointment.calcom_uid == uid).with_for_update()
    ).first()
    if appointment is None:
        appointment = Appointment(calcom_uid=uid[:128], event_rank=0)
        session.add(appointment)
    later = order.at_least(appointment)
    for name, value in fields.items():
        if value is not None and (later or getattr(appointment, name) is None):
            setattr(appointment, name, value)
    if later:
        appointment.event_rank, appointment.event_at = order.rank, order.at


def _fields(session: Session, booking: dict[str, Any], raw: str) -> dict[str, Any]:
    """Columns from the booking, with branch, service, staff and customer resolved."""
    event_type_id = booking.get("eventTypeId")
    event_type_id = event_type_id if isinstance(event_type_id, int) else None
    branch, service = _place(session, event_type_id)
    company_id = (branch and branch.company_id) or (service and service.company_id) or None
    if company_id is None:
        log.warning(
            "booking for an event type no branch or service has",
            extra={"calcom_event_type_id": event_type_id},
        )
    customer = _customer(session, company_id, booking)
    return {
        "title": _text(booking.get("title"), 255),
        "starts_at": _when(booking.get("startTime"), "startTime"),
        "ends_at": _when(booking.get("endTime"), "endTime"),
        "calcom_event_type_id": event_type_id,
        "company_id": company_id,
        "branch_id": branch.id if branch else (service.branch_id if service else None),
        "service_id": service.id if service else None,
        "staff_id": _staff(session, company_id, booking.get("organizer")),
        "customer_id": customer.id if customer else None,
        "raw_payload": raw,
    }


def _place(session: Session, event_type_id: int | None) -> tuple[Branch | None, Service | None]:
    if event_type_id is None:
        return None, None
    branch = session.scalars(
        select(Branch).where(Branch.calcom_event_type_id == event_type_id).order_by(Branch.id)
    ).first()
    service = session.scalars(
        select(Service).where(Service.calcom_event_type_id == event_type_id).order_by(Service.id)
    ).first()
    return branch, service


def _customer(session: Session, company_id: int | None, booking: dict[str, Any]) -> Any:
    attendees = booking.get("attendees")
    first = attendees[0] if isinstance(attendees, list) and attendees else {}
    first = first if isinstance(first, dict) else {}
    raw_responses = booking.get("responses")
    responses: dict[str, Any] = raw_responses if isinstance(raw_responses, dict) else {}
    phone = (
        first.get("phoneNumber")
        or _answer(responses, "attendeePhoneNumber")
        or _answer(responses, "phone")
    )
    customer = find_or_create_customer(
        session,
        company_id,
        email=_text(first.get("email"), 191),
        phone=_text(phone, 64),
        name=_text(first.get("name"), 200),
    )
    if customer is not None:
        session.flush()
    return customer


def _staff(session: Session, company_id: int | None, organizer: object) -> int | None:
    if company_id is None or not isinstance(organizer, dict):
        return None
    email = normalize_email(_text(organizer.get("email"), 191))
    if email is None:
        return None
    return session.scalar(
        select(Staff.id).where(Staff.company_id == company_id, Staff.email == email)
    )


def _answer(responses: dict[str, Any], key: str) -> object:
    value = responses.get(key)
    return value.get("value") if isinstance(value, dict) else value


def _when(value: object, name: str, *, required: bool = True) -> datetime | None:
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


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None

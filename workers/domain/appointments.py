"""Cal.com events → ``appointments`` (one row per booking uid); their attendees and seats
(``appointment_attendees``) are ``workers/domain/attendees.py``'s, the delivery's shapes
``workers/domain/calcom_events.py``'s.

What each trigger does (shapes: ``ingest/providers/calcom.py``; sender source in
calcom/cal.com ``packages/features/webhooks/lib/sendPayload.ts``,
``handleWebhookScheduledTriggers.ts``, ``packages/features/bookings/lib/handleSeats/``,
``packages/features/tasker/tasks/triggerNoShow/``):

- ``BOOKING_REQUESTED`` / ``BOOKING_PAYMENT_INITIATED`` → ``pending`` (payment
  ``initiated``); ``BOOKING_CREATED`` → ``booked`` (``pending`` when its status says so);
  ``BOOKING_PAID`` → payment ``paid``; ``BOOKING_RESCHEDULED`` moves the booking in place
  or, naming an older uid in ``rescheduleUid``, retires that one as ``rescheduled``.
- ``MEETING_STARTED`` → ``started``; ``MEETING_ENDED`` → ``ended`` (closed). Both may come
  flat (no ``payload`` key) from Cal.com's scheduled job, or name the booking only by id.
- ``BOOKING_CANCELLED`` → ``cancelled``, unless it gives up one seat: it lists only the
  leaving attendee(s) while others still hold seats (or the event is seated and nothing
  else is known); then only those attendees' rows are ``cancelled``. One that lists no
  attendee (a custom template) of a seated appointment cancels only the seat it names,
  else nothing (logged).
- ``BOOKING_REJECTED`` → ``rejected``.
- ``BOOKING_NO_SHOW_UPDATED`` sets each listed attendee's ``no_show`` (newest ``createdAt``
  wins); ``AFTER_GUESTS_CAL_VIDEO_NO_SHOW`` marks the guests Cal Video saw missing;
  ``AFTER_HOSTS_CAL_VIDEO_NO_SHOW`` sets ``host_no_show`` when the host is the organizer.
- Every other trigger is recorded only.

Status changes are ordered by (rank, the trigger's ``createdAt``): an event below the
row's order only fills empty fields, so a late BOOKING_CREATED never undoes a move, an
end or a cancellation. Each attendee row is ordered by its own ``status_at`` (a seat
given up and booked again is booked). The appointment's customer is the first attendee
of the first booking event applied and never moves; each attendee is linked to a
customer of their own.
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

from models.appointments import Appointment, AppointmentStatus, AttendeeStatus, PaymentStatus
from models.business import Branch, Service
from models.events import WebhookEvent
from workers.domain.attendees import (
    cancel_attendees,
    cancel_seat_by_reference,
    gives_up_seats,
    is_seated,
    mark_no_shows,
    row_key,
    set_cancelled,
    set_moved,
    sync_attendees,
)
from workers.domain.calcom_events import CalcomEvent, attendee_key, email_of, when
from workers.domain.merge import merge_ranked, staff_by_email, text
from workers.retries import RaceLost, found_locked

log = logging.getLogger("hookfleet.worker.appointments")

RANKS = {
    "BOOKING_REQUESTED": 1,
    "BOOKING_PAYMENT_INITIATED": 1,
    "BOOKING_CREATED": 2,
    "BOOKING_PAID": 2,
    "BOOKING_RESCHEDULED": 3,
    "MEETING_STARTED": 4,
    "MEETING_ENDED": 5,
    "BOOKING_CANCELLED": 6,
    "BOOKING_REJECTED": 6,
}
NO_SHOW_TRIGGERS = (
    "BOOKING_NO_SHOW_UPDATED",
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW",
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
)
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
    """Apply what a Cal.com event means to the appointment it is about.

    Raises PermanentError for a start or end that is present but not a timestamp;
    RaceLost when a concurrent worker created the same booking or attendee first (the
    retry finds it). Events that name no booking we can find are recorded only.
    """
    if event.event_type not in RANKS and event.event_type not in NO_SHOW_TRIGGERS:
        return
    calcom = CalcomEvent.load(event)
    try:
        if calcom.trigger in RANKS:
            _apply_booking_event(session, calcom)
        else:
            _apply_no_show(session, calcom)
        session.flush()
    except IntegrityError as error:
        raise RaceLost(f"{calcom.trigger} for {calcom.uid()} raced another worker") from error


# --- The booking lifecycle and the meeting ------------------------------------------------


def _apply_booking_event(session: Session, calcom: CalcomEvent) -> None:
    appointment = _find(session, calcom)
    if appointment is None and calcom.uid() is None:
        log.warning(
            "Cal.com event names no booking we know; recorded only",
            extra={"trigger": calcom.trigger, "calcom_booking_id": calcom.booking_id()},
        )
        return
    order = Order(RANKS[calcom.trigger], calcom.created_at)
    uid = calcom.uid() or (appointment.calcom_uid if appointment else "")
    fields = _fields(session, calcom)
    if calcom.trigger == "BOOKING_CANCELLED" and _cancels_seats_only(session, calcom, appointment):
        return
    previous = calcom.booking.get("rescheduleUid")
    if isinstance(previous, str) and previous and previous != uid:
        if _retire(session, calcom, _get_or_add(session, previous), order):
            fields["rescheduled_from_uid"] = previous[:128]
    appointment = appointment or _get_or_add(session, uid)
    _merge(session, appointment, fields, order)
    _merge_payment(appointment, calcom.trigger)
    session.flush()  # the appointment has its id for its attendees
    sync_attendees(session, calcom, appointment)
    if calcom.trigger in ("BOOKING_CANCELLED", "BOOKING_REJECTED") and order.at_least(appointment):
        for row in appointment.attendees:
            set_cancelled(row, calcom)


def _cancels_seats_only(
    session: Session, calcom: CalcomEvent, appointment: Appointment | None
) -> bool:
    """Apply a BOOKING_CANCELLED that gives up seats rather than the booking; True when
    it did (or must not touch the booking at all).

    - It lists the leaving attendee(s) while others hold seats (``gives_up_seats``):
      only their rows, with a placeholder appointment when the booking is not here yet.
    - It lists no attendee (a custom template that renders none) for a seated
      appointment: the seat it names (``attendeeSeatId`` / ``seatReferenceUid``), else
      nothing at all but a warning: which seat left cannot be known, and cancelling
      every seat would tell the salon the whole slot is off.
    """
    if gives_up_seats(calcom, appointment):
        if appointment is None:  # the seat's booking is not here yet: a placeholder
            appointment = _get_or_add(session, calcom.uid() or "")
            _merge(
                session, appointment, _fields(session, calcom) | {"status": None}, Order(0, None)
            )
            session.flush()
        cancel_attendees(session, calcom, appointment)
        return True
    if calcom.attendees() or appointment is None or not _seated(calcom, appointment):
        return False
    if not cancel_seat_by_reference(calcom, appointment):
        log.warning(
            "seat cancellation that names no attendee or seat; the booking is left as is",
            extra={"calcom_uid": appointment.calcom_uid},
        )
    return True


def _seated(calcom: CalcomEvent, appointment: Appointment) -> bool:
    """The payload or any payload stored for the appointment says it has seats, or a
    seat (or more than one attendee holding a place) is known."""
    if is_seated(calcom, appointment):
        return True
    seats = _stored_booking(appointment).get("seatsPerTimeSlot")
    return isinstance(seats, int) and not isinstance(seats, bool) and seats > 0


def _stored_booking(appointment: Appointment) -> dict[str, Any]:
    """The booking in the last payload merged into the appointment ({} when none)."""
    try:
        stored = json.loads(appointment.raw_payload or "null")
    except ValueError:
        return {}
    booking = stored.get("payload", stored) if isinstance(stored, dict) else None
    return booking if isinstance(booking, dict) else {}


def _status(calcom: CalcomEvent) -> str:
    trigger, said = calcom.trigger, calcom.booking.get("status")
    if trigger in ("BOOKING_REQUESTED", "BOOKING_PAYMENT_INITIATED"):
        return AppointmentStatus.PENDING
    if trigger in ("BOOKING_CREATED", "BOOKING_PAID"):
        return AppointmentStatus.PENDING if said == "PENDING" else AppointmentStatus.BOOKED
    return {
        "BOOKING_RESCHEDULED": AppointmentStatus.BOOKED,
        "MEETING_STARTED": AppointmentStatus.STARTED,
        "MEETING_ENDED": AppointmentStatus.ENDED,
        "BOOKING_CANCELLED": AppointmentStatus.CANCELLED,
        "BOOKING_REJECTED": AppointmentStatus.REJECTED,
    }[trigger]


def _fields(session: Session, calcom: CalcomEvent) -> dict[str, Any]:
    """Columns from the booking, with branch, service and staff resolved."""
    booking = calcom.booking
    event_type_id = booking.get("eventTypeId")
    event_type_id = event_type_id if isinstance(event_type_id, int) else None
    branch, service = _place(session, event_type_id)
    company_id = (branch and branch.company_id) or (service and service.company_id) or None
    if company_id is None:
        log.warning(
            "booking for an event type no branch or service has",
            extra={"calcom_event_type_id": event_type_id},
        )
    starts_at = when(booking.get("startTime"), "startTime")
    ends_at = when(booking.get("endTime"), "endTime")
    fields: dict[str, Any] = {
        "status": _status(calcom),
        "title": text(booking.get("title"), 255),
        "starts_at": starts_at,
        "ends_at": ends_at,
        "calcom_booking_id": calcom.booking_id(),
        "calcom_event_type_id": event_type_id,
        "company_id": company_id,
        "branch_id": branch.id if branch else (service.branch_id if service else None),
        "service_id": service.id if service else None,
        "staff_id": staff_by_email(session, company_id, organizer_email(booking)),
        "raw_payload": calcom.raw,
    }
    if calcom.trigger == "MEETING_STARTED":
        fields["started_at"] = starts_at or calcom.created_at
    if calcom.trigger == "MEETING_ENDED":
        fields["ended_at"] = ends_at or calcom.created_at
    if calcom.trigger == "BOOKING_CANCELLED":
        fields["cancellation_reason"] = text(booking.get("cancellationReason"), 2000)
    if calcom.trigger == "BOOKING_REJECTED":
        fields["cancellation_reason"] = text(booking.get("rejectionReason"), 2000)
    return fields


def _merge_payment(appointment: Appointment, trigger: str) -> None:
    # Paid is final whatever order the two arrive in.
    if trigger == "BOOKING_PAID":
        appointment.payment_status = PaymentStatus.PAID
    elif trigger == "BOOKING_PAYMENT_INITIATED" and appointment.payment_status is None:
        appointment.payment_status = PaymentStatus.INITIATED


def _retire(session: Session, calcom: CalcomEvent, old: Appointment, order: Order) -> bool:
    """The booking a reschedule came from. True when the whole booking moved: it is
    ``rescheduled`` (unless a later event, its own cancellation, outranks this one)
    and so are its attendees' rows. False when one seat moved out of a seated booking
    others still hold: only that seat's row leaves it.

    Who moved: the listed attendees the old booking knows. An attendee moving into a
    slot that already has a seated booking gets that booking's uid and a payload
    listing the mover first, then the target's own seat holders
    (``handleSeats/reschedule/attendee/attendeeRescheduleSeatedBooking.ts``); those
    never held a seat in the old booking and are left out of it."""
    if old.id is not None and is_seated(calcom, old):
        holding = {row_key(r): r for r in old.attendees if r.status == AttendeeStatus.BOOKED}
        listed = {attendee_key(a) for a in calcom.attendees()}
        leaving = [a for a in calcom.attendees() if attendee_key(a) in holding]
        if leaving and any(key not in listed for key in holding):
            cancel_attendees(session, calcom, old, leaving)
            return False
    _merge(session, old, {"status": AppointmentStatus.RESCHEDULED}, order)
    if old.status == AppointmentStatus.RESCHEDULED:
        for row in old.attendees:
            set_moved(row, calcom)
    return True


def _find(session: Session, calcom: CalcomEvent) -> Appointment | None:
    uid, number = calcom.uid(), calcom.booking_id()
    if uid is not None:
        return found_locked(session, select(Appointment).where(Appointment.calcom_uid == uid))
    if number is not None:
        return found_locked(
            session,
            select(Appointment)
            .where(Appointment.calcom_booking_id == number)
            .order_by(Appointment.id),
        )
    return None


def _get_or_add(session: Session, uid: str) -> Appointment:
    uid = uid[:128]  # as stored: a longer one would be looked up in vain and re-inserted
    appointment = found_locked(session, select(Appointment).where(Appointment.calcom_uid == uid))
    if appointment is None:
        appointment = Appointment(calcom_uid=uid, event_rank=0)
        session.add(appointment)
    return appointment


def _merge(
    session: Session, appointment: Appointment, fields: dict[str, Any], order: Order
) -> None:
    later = order.at_least(appointment)
    merge_ranked(appointment, fields, later=later)
    if later:
        appointment.event_rank, appointment.event_at = order.rank, order.at


# --- No-shows: the appointment they are about -------------------------------------------------


def _apply_no_show(session: Session, calcom: CalcomEvent) -> None:
    appointment = _find(session, calcom)
    if appointment is None:
        uid = calcom.uid()
        if uid is None:
            log.warning(
                "no-show for a booking we do not know; recorded only",
                extra={"trigger": calcom.trigger, "calcom_booking_id": calcom.booking_id()},
            )
            return
        # Out of order: the booking itself arrives later and fills the rest in.
        appointment = _get_or_add(session, uid)
        _merge(session, appointment, _no_show_fields(calcom), Order(0, None))
        session.flush()
    if calcom.trigger == "AFTER_HOSTS_CAL_VIDEO_NO_SHOW" and _a_co_host(calcom, appointment):
        return
    mark_no_shows(session, calcom, appointment)


def _a_co_host(calcom: CalcomEvent, appointment: Appointment) -> bool:
    """Whether the host Cal Video missed is not the booking's organizer. Cal.com sends
    one AFTER_HOSTS_CAL_VIDEO_NO_SHOW per host who did not join, but marks
    ``noShowHost`` only for the booking's user
    (``packages/features/tasker/tasks/triggerNoShow/triggerHostNoShow.ts``); the
    organizer is read from the booking's stored payload. Unknown: not a co-host."""
    host = email_of({"email": calcom.booking.get("hostEmail")})
    organizer = organizer_email(_stored_booking(appointment))
    if host is None or organizer is None or host == organizer:
        return False
    log.info("a co-host missed the call; host_no_show is the organizer's only")
    return True


def _no_show_fields(calcom: CalcomEvent) -> dict[str, Any]:
    booking = calcom.booking
    return {
        "calcom_booking_id": calcom.booking_id(),
        "title": text(booking.get("title"), 255),
        "starts_at": when(booking.get("startTime"), "startTime", required=False),
        "ends_at": when(booking.get("endTime"), "endTime", required=False),
    }


# --- Small readers --------------------------------------------------------------------------


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


def organizer_email(booking: dict[str, Any]) -> str | None:
    """The booking's organizer (its ``user``): ``organizer.email`` in ``CalendarEvent``;
    the flat booking row of the scheduled MEETING_* job (``scheduleTrigger.ts``) has
    ``userPrimaryEmail`` and, from some callers, ``user``."""
    for holder in (booking.get("organizer"), {"email": booking.get("userPrimaryEmail")}):
        if isinstance(holder, dict) and (email := email_of(holder)):
            return email
    user = booking.get("user")
    return email_of(user) if isinstance(user, dict) else None

"""Cal.com attendees: one ``appointment_attendees`` row per attendee (per seat of a
seated event), each linked to its customer; seats given up; no-shows.

Sender source (calcom/cal.com): ``packages/features/bookings/lib/handleSeats/``
(``create/createNewSeat.ts``, ``cancel/cancelAttendeeSeat.ts``),
``packages/features/handleMarkNoShow.ts``,
``packages/features/tasker/tasks/triggerNoShow/``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from models.appointments import Appointment, AppointmentAttendee, AttendeeStatus
from workers.domain.calcom_events import NAME_MAX, CalcomEvent, attendee_key, email_of
from workers.domain.customers import find_or_create_customer
from workers.domain.merge import text


def sync_attendees(session: Session, calcom: CalcomEvent, appointment: Appointment) -> None:
    """One row per listed attendee, each linked to its customer. The booker of this
    delivery is the seat named by ``attendeeSeatId`` (the last attendee:
    ``createNewSeat.ts`` lists the earlier seats first), else the first attendee; the
    form's answers (phone) are theirs. The first attendee listed is offered as the
    appointment's customer (:func:`_offer_customer`).

    A booking event lists the people who hold a seat when it was sent (Cal.com deletes
    a seat's attendee when the seat is given up, ``cancelAttendeeSeat.ts``), so each
    listed row is ``booked`` again when this event is newer than the one that last
    set its status: a seat given up and then booked again is booked. A cancellation
    or rejection is applied by the caller."""
    attendees = calcom.attendees()
    if not attendees:
        return
    seat = calcom.booking.get("attendeeSeatId")
    booker = attendees[-1] if isinstance(seat, str) and seat else attendees[0]
    holds_seat = calcom.trigger not in ("BOOKING_CANCELLED", "BOOKING_REJECTED")
    for attendee in attendees:
        row = attendee_row(session, appointment, attendee)
        own_seat = _seat_of(attendee) or (seat[:128] if attendee is booker and seat else None)
        if holds_seat and _newer(calcom, row):
            row.status, row.status_at = AttendeeStatus.BOOKED, calcom.created_at
            row.seat_uid = own_seat or row.seat_uid
        row.seat_uid = row.seat_uid or own_seat
        phone = attendee.get("phoneNumber") or (
            _booker_phone(calcom) if attendee is booker else None
        )
        customer = find_or_create_customer(
            session,
            appointment.company_id,
            email=email_of(attendee),
            phone=text(phone, 64),
            name=text(attendee.get("name"), NAME_MAX),
        )
        if customer is not None:
            session.flush()
            row.customer_id = row.customer_id or customer.id
            if attendee is attendees[0] and (holds_seat or appointment.customer_id is None):
                _offer_customer(appointment, customer.id, calcom)


def _offer_customer(appointment: Appointment, customer_id: int, calcom: CalcomEvent) -> None:
    """The appointment's customer is the first attendee of its earliest booking event:
    in current Cal.com a later seat's BOOKING_CREATED lists only its own holder
    (``handleSeats/create/createNewSeat.ts``), so when it is applied before the first
    seat's, the first seat's event (earlier ``createdAt``) takes over; after that it
    never moves. Without ``createdAt`` only an empty customer is filled in."""
    at = calcom.created_at
    if appointment.customer_id is None or (
        at is not None and appointment.customer_at is not None and at < appointment.customer_at
    ):
        appointment.customer_id, appointment.customer_at = customer_id, at
    elif appointment.customer_id == customer_id and appointment.customer_at is None:
        appointment.customer_at = at


def _newer(calcom: CalcomEvent, row: AppointmentAttendee) -> bool:
    """Whether this booking event is newer than what last set the row's status. An
    event without ``createdAt`` (a custom template) never re-books a row."""
    at = calcom.created_at
    return at is not None and (row.status_at is None or at > row.status_at)


def set_cancelled(row: AppointmentAttendee, calcom: CalcomEvent) -> None:
    """The row's seat given up, unless a newer event booked it again. A cancellation
    wins a tie and when either time is unknown."""
    at = calcom.created_at
    if at is None or row.status_at is None or at >= row.status_at:
        row.status, row.status_at = AttendeeStatus.CANCELLED, at or row.status_at


def attendee_row(
    session: Session, appointment: Appointment, attendee: dict[str, Any]
) -> AppointmentAttendee:
    email = email_of(attendee)
    key = attendee_key(attendee)
    for row in appointment.attendees:
        if row_key(row) == key:
            row.name = row.name or text(attendee.get("name"), NAME_MAX)  # an early no-show's row
            return row
    row = AppointmentAttendee(
        appointment=appointment,
        email=email,
        name=text(attendee.get("name"), NAME_MAX),
        name_key=None if email else key,
        status=AttendeeStatus.BOOKED,
    )
    session.add(row)
    return row


def gives_up_seats(calcom: CalcomEvent, appointment: Appointment | None) -> bool:
    """A BOOKING_CANCELLED of a seated event gives up seats rather than the booking when
    it lists only the leaving attendee(s) (``cancelAttendeeSeat.ts``) while others still
    hold a seat, or when it lists one attendee and no attendee is known yet (the seats'
    own events come later). Cal.com cancels the whole booking when its last seat goes
    (``cancelAttendeeSeat`` refuses below two attendees), so a cancellation listing
    every known attendee is the booking's.

    Seated: the payload's ``seatsPerTimeSlot`` (``CalendarEvent``), or a known seat."""
    leaving = {attendee_key(a) for a in calcom.attendees()}
    known = appointment.attendees if appointment is not None else []
    seats = calcom.booking.get("seatsPerTimeSlot")
    seated = (isinstance(seats, int) and not isinstance(seats, bool) and seats > 0) or any(
        row.seat_uid for row in known
    )
    if not leaving or not seated:
        return False
    if any(row_key(row) not in leaving and row.status == AttendeeStatus.BOOKED for row in known):
        return True
    return not known and len(leaving) == 1


def set_moved(row: AppointmentAttendee, calcom: CalcomEvent) -> None:
    """The row's booking moved away whole: the person's place is in the new booking."""
    at = calcom.created_at
    if row.status == AttendeeStatus.BOOKED and (
        at is None or row.status_at is None or at >= row.status_at
    ):
        row.status, row.status_at = AttendeeStatus.RESCHEDULED, at or row.status_at


def cancel_attendees(
    session: Session,
    calcom: CalcomEvent,
    appointment: Appointment,
    leaving: list[dict[str, Any]] | None = None,
) -> None:
    """Only the leaving attendees' rows (default: every listed attendee) are
    cancelled; the appointment and its customer stay as they are."""
    for attendee in calcom.attendees() if leaving is None else leaving:
        set_cancelled(attendee_row(session, appointment, attendee), calcom)


def cancel_seat_by_reference(calcom: CalcomEvent, appointment: Appointment) -> bool:
    """A cancellation naming no attendee but a seat (``attendeeSeatId`` or
    ``seatReferenceUid``, e.g. through a custom template): that seat's row. False when
    it names no seat we know."""
    for name in ("attendeeSeatId", "seatReferenceUid"):
        reference = calcom.booking.get(name)
        if not isinstance(reference, str) or not reference:
            continue
        for row in appointment.attendees:
            if row.seat_uid == reference[:128]:
                set_cancelled(row, calcom)
                return True
    return False


def is_seated(calcom: CalcomEvent, appointment: Appointment | None) -> bool:
    """Seated: the payload's ``seatsPerTimeSlot`` (``CalendarEvent``), or a known seat,
    or more than one attendee holding a place."""
    seats = calcom.booking.get("seatsPerTimeSlot")
    if isinstance(seats, int) and not isinstance(seats, bool) and seats > 0:
        return True
    known = appointment.attendees if appointment is not None else []
    holding = [row for row in known if row.status == AttendeeStatus.BOOKED]
    return any(row.seat_uid for row in known) or len(holding) > 1


def mark_no_shows(session: Session, calcom: CalcomEvent, appointment: Appointment) -> None:
    """``host_no_show`` for AFTER_HOSTS_CAL_VIDEO_NO_SHOW; each listed attendee's
    ``no_show`` for BOOKING_NO_SHOW_UPDATED (set or unset) and
    AFTER_GUESTS_CAL_VIDEO_NO_SHOW (the guests Cal Video saw missing). The newest
    ``createdAt`` wins, so a late older update does not undo a newer one."""
    if calcom.trigger == "AFTER_HOSTS_CAL_VIDEO_NO_SHOW":
        appointment.host_no_show = True
        return
    attendees = calcom.attendees()
    if calcom.trigger == "AFTER_GUESTS_CAL_VIDEO_NO_SHOW":
        # Newer senders mark the missing guests (``noShow: true``); older ones sent the
        # booking's attendees with the message "Guest didn't join": all of them.
        flagged = [a for a in attendees if a.get("noShow") is True]
        marks = [(a, True) for a in (flagged or attendees)]
    else:
        marks = [(a, bool(a.get("noShow"))) for a in attendees]
    for attendee, no_show in marks:
        row = attendee_row(session, appointment, attendee)
        at = calcom.created_at
        if row.no_show_at is None or at is None or at >= row.no_show_at:
            row.no_show, row.no_show_at = no_show, at or row.no_show_at


def row_key(row: AppointmentAttendee) -> str | None:
    return attendee_key({"email": row.email, "name": row.name})


def _seat_of(attendee: dict[str, Any]) -> str | None:
    seat = attendee.get("bookingSeat")
    reference = seat.get("referenceUid") if isinstance(seat, dict) else None
    return reference[:128] if isinstance(reference, str) and reference else None


def _booker_phone(calcom: CalcomEvent) -> object:
    responses = calcom.booking.get("responses")
    answers: dict[str, Any] = responses if isinstance(responses, dict) else {}
    return _answer(answers, "attendeePhoneNumber") or _answer(answers, "phone")


def _answer(responses: dict[str, Any], key: str) -> object:
    value = responses.get(key)
    return value.get("value") if isinstance(value, dict) else value

"""``appointments``: one row per Cal.com booking uid; ``appointment_attendees``: one row
per person (per seat, for a seated event) of that booking."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from models.base import Base, LongText, Timestamped, UTCDateTime, exact_text, optional_link
from models.business import EMAIL_MAX


class AppointmentStatus(enum.StrEnum):
    """Where a booking stands. Ordered by the trigger that sets it (see
    ``workers.domain.appointments.RANKS``): a later stage is never undone by a late event."""

    PENDING = "pending"  # BOOKING_REQUESTED / awaiting payment
    BOOKED = "booked"  # BOOKING_CREATED, BOOKING_RESCHEDULED (in place), BOOKING_PAID
    RESCHEDULED = "rescheduled"  # moved to the booking whose rescheduled_from_uid names it
    STARTED = "started"  # MEETING_STARTED
    ENDED = "ended"  # MEETING_ENDED: the appointment is closed
    CANCELLED = "cancelled"  # BOOKING_CANCELLED of the whole booking (or of its last seat)
    REJECTED = "rejected"  # BOOKING_REJECTED of a requested booking


# E-mail addresses compared as written (lower-cased by normalize_email): MariaDB's default
# utf8mb4_general_ci would take jürgen@ and jurgen@ for one attendee and refuse the second.
# EMAIL_MAX (254) x 4 bytes + the appointment id fit InnoDB's 3072-byte key limit.
NAME_KEY_MAX = 210  # "name:" + a name of up to 200 characters
NameKey = String(NAME_KEY_MAX).with_variant(
    mysql.VARCHAR(NAME_KEY_MAX, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)
ExactEmail = String(EMAIL_MAX).with_variant(
    mysql.VARCHAR(EMAIL_MAX, collation="utf8mb4_bin"), "mysql", "mariadb"
)


class PaymentStatus(enum.StrEnum):
    """``appointments.payment_status`` (None: no payment asked for). Paid is final
    whatever order the two triggers arrive in."""

    INITIATED = "initiated"  # BOOKING_PAYMENT_INITIATED
    PAID = "paid"  # BOOKING_PAID


class AttendeeStatus(enum.StrEnum):
    BOOKED = "booked"
    CANCELLED = "cancelled"  # this seat was given up; the booking goes on for the others
    RESCHEDULED = "rescheduled"  # the whole booking moved: this place is in the new one


class Appointment(Timestamped, Base):
    """A booking. ``calcom_uid`` is UNIQUE; ``calcom_booking_id`` is Cal.com's numeric id
    (the only reference some triggers carry).

    ``event_rank`` and ``event_at`` (the trigger's ``createdAt``) order the events merged
    so far, so a late BOOKING_CREATED never undoes a cancellation or a move.
    ``customer_id`` is the first booker: the first attendee of the booking event with
    the earliest ``createdAt`` (``customer_at``), so the first seat's holder even when a
    later seat's event, which lists only its own holder, is applied first; otherwise it
    never moves (a seat's events touch only that seat's row in ``attendees``). ``payment_status``:
    ``initiated`` / ``paid``. ``host_no_show``: Cal Video saw a host missing.
    """

    __tablename__ = "appointments"
    __table_args__ = (
        Index(None, "company_id", "status", "starts_at"),
        Index(None, "starts_at"),
        Index(None, "calcom_booking_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calcom_uid: Mapped[str] = mapped_column(exact_text(128), unique=True)
    calcom_booking_id: Mapped[int | None] = mapped_column(Integer, default=None)
    company_id: Mapped[int | None] = optional_link("companies")
    branch_id: Mapped[int | None] = optional_link("branches")
    customer_id: Mapped[int | None] = optional_link("customers")
    customer_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    staff_id: Mapped[int | None] = optional_link("staff")
    service_id: Mapped[int | None] = optional_link("services")
    calcom_event_type_id: Mapped[int | None] = mapped_column(Integer, default=None)
    title: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(16), default=AppointmentStatus.BOOKED)
    event_rank: Mapped[int] = mapped_column(Integer, default=0)
    event_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    payment_status: Mapped[str | None] = mapped_column(String(16), default=None)
    host_no_show: Mapped[bool | None] = mapped_column(Boolean, default=None)
    rescheduled_from_uid: Mapped[str | None] = mapped_column(exact_text(128), default=None)
    cancellation_reason: Mapped[str | None] = mapped_column(Text, default=None)
    raw_payload: Mapped[str | None] = deferred(mapped_column(LongText, default=None))

    attendees: Mapped[list[AppointmentAttendee]] = relationship(
        back_populates="appointment", order_by="AppointmentAttendee.id"
    )

    def __repr__(self) -> str:
        return f"<Appointment {self.calcom_uid} {self.status}>"


class AppointmentAttendee(Timestamped, Base):
    """One attendee of a booking: for a seated event, one seat. UNIQUE per
    (appointment, email); ``seat_uid`` is Cal.com's seat reference (``attendeeSeatId``).

    ``status_at`` is the ``createdAt`` of the event that last set ``status``: a seat
    given up and booked again is booked, a late older event does not undo a newer one.
    ``no_show`` is what Cal.com last said (BOOKING_NO_SHOW_UPDATED or the Cal Video
    guest check), ``no_show_at`` the ``createdAt`` of that update, so an older update
    arriving late does not undo a newer one.
    """

    __tablename__ = "appointment_attendees"
    __table_args__ = (
        UniqueConstraint("appointment_id", "email"),
        UniqueConstraint("appointment_id", "name_key"),
        Index(None, "seat_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    appointment_id: Mapped[int] = mapped_column(ForeignKey("appointments.id", ondelete="CASCADE"))
    email: Mapped[str | None] = mapped_column(ExactEmail, default=None)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    # Who an attendee without an e-mail is within the appointment (``attendee_key``:
    # ``name:`` + the name folded): UNIQUE with the appointment, so two workers applying
    # events of one booking at once cannot both add her. NULL when there is an e-mail.
    name_key: Mapped[str | None] = mapped_column(NameKey, default=None)
    seat_uid: Mapped[str | None] = mapped_column(exact_text(128), default=None)
    customer_id: Mapped[int | None] = optional_link("customers")
    status: Mapped[str] = mapped_column(String(16), default=AttendeeStatus.BOOKED)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    no_show: Mapped[bool | None] = mapped_column(Boolean, default=None)
    no_show_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    appointment: Mapped[Appointment] = relationship(back_populates="attendees")

    def __repr__(self) -> str:
        return f"<AppointmentAttendee {self.email} {self.status}>"

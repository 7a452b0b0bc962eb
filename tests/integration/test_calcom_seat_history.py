"""Cal.com deliveries a salon sees over a booking's life, in the shapes current Cal.com
sends, through the real receiver (signed) into Redis and the worker's recording function
into SQLite and MariaDB: seats given up and booked again, seats moving between bookings,
custom templates, phone-only bookers and over-long values. Assertions are on the rows
the owner looks at (``appointments``, ``appointment_attendees``, ``customers``).

Shapes (calcom/cal.com):

- the first seat's BOOKING_CREATED comes from ``handleNewBooking`` with
  ``attendeeSeatId``; every later seat's from
  ``packages/features/bookings/lib/handleSeats/handleSeats.ts`` after
  ``create/createNewSeat.ts``: the same ``uid`` and ``startTime``, ``attendees`` = only
  the new seat's holder, no ``attendeeSeatId``;
- a seat's BOOKING_CANCELLED (``handleSeats/cancel/cancelAttendeeSeat.ts``) lists only
  the leaving attendee;
- ``createdAt`` is stamped once per trigger occurrence (``new Date().toISOString()``,
  e.g. ``handleCancelBooking.ts``); a retry re-sends the same body.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest import create_app
from ingest.providers import calcom
from models import Appointment, AppointmentAttendee, Call, Customer
from models.business import Branch, Company, Staff
from tests.integration.test_calcom_triggers import (
    SECRET,
    Post,
    appointment,
    attendee_rows,
    count,
    post_and_record,
    take_queued,
)
from tests.integration.test_domain import deliver, retell
from workers.pipeline.record import Outcome


@pytest.fixture
def post(redis_url: str) -> Post:
    client = create_app(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_CALCOM_SECRETS": SECRET}
    ).test_client()

    def signed(body: bytes, content_type: str = "application/json") -> Any:
        headers = {"X-Cal-Signature-256": calcom.sign(SECRET, body)}
        return client.post(
            "/webhooks/calcom", data=body, content_type=content_type, headers=headers
        )

    return signed


START, END = "2026-12-02T09:00:00Z", "2026-12-02T10:00:00Z"
ORGANIZER = {"id": 7, "name": "Salon Nord", "email": "termine@salon-nord.example"}


def person(name: str, email: str | None, phone: str | None = None) -> dict[str, Any]:
    """An attendee as ``CalendarEvent.attendees`` carries it (``Person``)."""
    return {
        "email": email,
        "name": name,
        "timeZone": "Europe/Berlin",
        "language": {"locale": "de"},
        "phoneNumber": phone,
    }


SAM = person("Sam Eins", "sam1@example.com")
SARA = person("Sara Zwei", "sara2@example.com")
SVEN = person("Sven Drei", "sven3@example.com")
SOFIA = person("Sofia Vier", "sofia4@example.com")
CARL = person("Carl C", "carl@example.com")


def booking(uid: str, people: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A seated booking's ``payload`` (``CalendarEvent`` + ``eventTypeInfo``)."""
    return {
        "type": "kurs",
        "title": "Farbberatung",
        "startTime": START,
        "endTime": END,
        "organizer": ORGANIZER,
        "attendees": copy.deepcopy(people),
        "eventTypeId": 9001,
        "seatsPerTimeSlot": 5,
        "uid": uid,
        "bookingId": 500,
        "status": "ACCEPTED",
        **extra,
    }


def envelope(trigger: str, created_at: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``sendPayload``'s body: ``{"triggerEvent", "createdAt", "payload"}``."""
    return {"triggerEvent": trigger, "createdAt": created_at, "payload": payload}


def at(minute: int) -> str:
    return f"2026-11-29T10:{minute:02d}:00.000Z"


def send(
    post: Post,
    redis_client: redis.Redis,
    sessions: sessionmaker[Session],
    body: dict[str, Any] | str,
    content_type: str = "application/json",
) -> int:
    """Sign and post ``body`` (JSON.stringify: compact) and record what was queued, as
    the worker does. Returns the receiver's status code."""
    raw = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return post_and_record(post, redis_client, sessions, raw.encode(), content_type)


def sent_and_retried(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session], body: dict[str, Any]
) -> tuple[int, int]:
    """The answers to ``body`` and to Cal.com's retry of it (the same bytes again)."""
    return send(post, redis_client, sessions, body), send(post, redis_client, sessions, body)


def statuses(sessions: sessionmaker[Session], uid: str) -> dict[str, str]:
    """Each attendee's status, by e-mail (by name when there is none)."""
    return {(row.email or row.name or ""): row.status for row in attendee_rows(sessions, uid)}


def book_seats(
    post: Post,
    redis_client: redis.Redis,
    sessions: sessionmaker[Session],
    uid: str,
    people: list[dict[str, Any]],
    first_minute: int = 0,
) -> None:
    """The first seat with its ``attendeeSeatId``, the others as ``createNewSeat.ts``
    sends them: only the new holder, no ``attendeeSeatId``."""
    for n, holder in enumerate(people):
        extra = {"attendeeSeatId": f"{uid}-seat-1"} if n == 0 else {}
        body = envelope("BOOKING_CREATED", at(first_minute + n), booking(uid, [holder], **extra))
        assert send(post, redis_client, sessions, body) == 202


# --- 1, 2: a seat given up and booked again, and given up again ---------------------------


def test_a_seat_given_up_and_booked_again_is_booked_and_its_retry_is_a_duplicate(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatA", [SAM, SARA])
    leaves = envelope("BOOKING_CANCELLED", at(5), booking("seatA", [SARA], status="CANCELLED"))
    assert send(post, redis_client, sessions, leaves) == 202
    assert statuses(sessions, "seatA")["sara2@example.com"] == "cancelled"

    again = envelope("BOOKING_CREATED", at(9), booking("seatA", [SARA]))
    assert sent_and_retried(post, redis_client, sessions, again) == (202, 200)

    assert statuses(sessions, "seatA") == {
        "sam1@example.com": "booked",
        "sara2@example.com": "booked",
    }
    assert appointment(sessions, "seatA").status == "booked"


def test_a_late_older_seat_booking_does_not_undo_its_cancellation(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatA", [SAM])
    leaves = envelope("BOOKING_CANCELLED", at(5), booking("seatA", [SARA], status="CANCELLED"))
    assert send(post, redis_client, sessions, leaves) == 202
    late = envelope("BOOKING_CREATED", at(1), booking("seatA", [SARA]))  # sent before
    assert send(post, redis_client, sessions, late) == 202

    assert statuses(sessions, "seatA")["sara2@example.com"] == "cancelled"


def test_a_second_genuine_cancellation_of_the_same_seat_is_applied(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatA", [SAM, SARA])
    for trigger, minute in (("BOOKING_CANCELLED", 5), ("BOOKING_CREATED", 9)):
        body = envelope(trigger, at(minute), booking("seatA", [SARA]))
        assert send(post, redis_client, sessions, body) == 202

    second = envelope("BOOKING_CANCELLED", at(14), booking("seatA", [SARA], status="CANCELLED"))
    assert sent_and_retried(post, redis_client, sessions, second) == (202, 200)

    assert statuses(sessions, "seatA") == {
        "sam1@example.com": "booked",
        "sara2@example.com": "cancelled",
    }
    assert appointment(sessions, "seatA").status == "booked"


def test_the_first_seats_holder_is_the_customer_whatever_order_the_seats_arrive_in(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    seat_1 = booking("seatF", [SAM], attendeeSeatId="seatF-seat-1")
    bodies = [
        envelope("BOOKING_CREATED", at(2), booking("seatF", [SVEN])),
        envelope("BOOKING_CREATED", at(1), booking("seatF", [SARA])),
        envelope("BOOKING_CREATED", at(0), seat_1),
    ]
    assert [send(post, redis_client, sessions, body) for body in bodies] == [202, 202, 202]

    by_email = {row.email: row for row in attendee_rows(sessions, "seatF")}
    assert appointment(sessions, "seatF").customer_id == by_email[SAM["email"]].customer_id
    assert len({row.customer_id for row in by_email.values()}) == 3


# --- 3: a seat moving into a slot that already has a seated booking ----------------------


def test_a_seat_moving_into_another_seated_booking_leaves_only_the_mover_out_of_the_old(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatA", [SAM, SVEN, SOFIA])
    target = booking("seatC", [CARL], attendeeSeatId="seatC-seat-1", bookingId=501)
    target["startTime"], target["endTime"] = "2026-12-04T09:00:00Z", "2026-12-04T10:00:00Z"
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(3), target)) == 202

    # attendeeRescheduleSeatedBooking.ts: uid = the target booking, rescheduleUid = the
    # old one, attendees = [the mover, then the target's own holders].
    moved = {
        **target,
        "attendees": [SOFIA, CARL],
        "rescheduleUid": "seatA",
        "rescheduleStartTime": START,
        "rescheduledBy": SOFIA["email"],
    }
    moved.pop("attendeeSeatId")
    assert send(post, redis_client, sessions, envelope("BOOKING_RESCHEDULED", at(8), moved)) == 202

    assert statuses(sessions, "seatA") == {
        "sam1@example.com": "booked",
        "sven3@example.com": "booked",
        "sofia4@example.com": "cancelled",
    }
    assert appointment(sessions, "seatA").status == "booked"
    assert statuses(sessions, "seatC") == {
        "carl@example.com": "booked",
        "sofia4@example.com": "booked",
    }
    assert appointment(sessions, "seatC").rescheduled_from_uid is None  # one seat, not seatA


def test_a_whole_booking_rescheduled_away_leaves_no_attendee_booked_in_the_old_one(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    old = booking("plain1", [SAM], seatsPerTimeSlot=None)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(0), old)) == 202
    new = {**booking("plain2", [SAM], seatsPerTimeSlot=None), "rescheduleUid": "plain1"}
    assert send(post, redis_client, sessions, envelope("BOOKING_RESCHEDULED", at(4), new)) == 202

    assert appointment(sessions, "plain1").status == "rescheduled"
    assert statuses(sessions, "plain1") == {"sam1@example.com": "rescheduled"}
    assert appointment(sessions, "plain2").rescheduled_from_uid == "plain1"
    assert statuses(sessions, "plain2") == {"sam1@example.com": "booked"}


# --- 4: custom templates that carry neither createdAt nor attendees ---------------------


def test_template_deliveries_without_created_at_are_told_apart_by_their_bytes(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    # {"triggerEvent":"{{triggerEvent}}","uid":"{{uid}}","startTime":"{{startTime}}",
    #  "name":"{{attendees.0.name}}","email":"{{attendees.0.email}}"}
    seats = [
        {
            "triggerEvent": "BOOKING_CREATED",
            "uid": "tpl1",
            "startTime": START,
            "name": n,
            "email": e,
        }
        for n, e in (("Uwe", "uwe@example.com"), ("Ute", "ute@example.com"))
    ]
    assert [send(post, redis_client, sessions, s) for s in seats] == [202, 202]
    assert send(post, redis_client, sessions, seats[0]) == 200  # byte-identical retry

    # {"triggerEvent":"{{triggerEvent}}","bookingUid":"{{bookingUid}}","message":"{{message}}"}
    marks = [
        {"triggerEvent": "BOOKING_NO_SHOW_UPDATED", "bookingUid": "tpl1", "message": m}
        for m in ("uwe@example.com marked as no-show", "uwe@example.com unmarked as no-show")
    ]
    assert [send(post, redis_client, sessions, m) for m in marks] == [202, 202]


def test_a_template_seat_cancellation_naming_no_seat_leaves_a_seated_booking_as_it_is(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatT", [SAM, SARA])
    cancels = [
        {"triggerEvent": "BOOKING_CANCELLED", "uid": "seatT", "startTime": START, "name": n}
        for n in ("Sam Eins", "Sara Zwei")
    ]
    assert [send(post, redis_client, sessions, c) for c in cancels] == [202, 202]

    assert appointment(sessions, "seatT").status == "booked"
    assert statuses(sessions, "seatT") == {
        "sam1@example.com": "booked",
        "sara2@example.com": "booked",
    }


def test_a_template_cancellation_naming_the_seat_cancels_that_seat_only(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    book_seats(post, redis_client, sessions, "seatT", [SAM, SARA])
    cancel = {
        "triggerEvent": "BOOKING_CANCELLED",
        "uid": "seatT",
        "startTime": START,
        "attendeeSeatId": "seatT-seat-1",
    }
    assert send(post, redis_client, sessions, cancel) == 202

    assert appointment(sessions, "seatT").status == "booked"
    assert statuses(sessions, "seatT") == {
        "sam1@example.com": "cancelled",
        "sara2@example.com": "booked",
    }


def test_a_template_cancellation_of_a_booking_without_seats_cancels_it(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    plain = booking("plain1", [SAM], seatsPerTimeSlot=None)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(0), plain)) == 202
    cancel = {"triggerEvent": "BOOKING_CANCELLED", "uid": "plain1", "startTime": START}
    assert send(post, redis_client, sessions, cancel) == 202

    assert appointment(sessions, "plain1").status == "cancelled"


# --- 6, 7: phone-only bookers ---------------------------------------------------------------


def test_a_phone_only_booker_is_the_customer_with_that_number_not_a_fake_address(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    ida = person("Ida Ischler", "ida@example.com", "+4915112345009")
    first = booking("ph1", [ida], seatsPerTimeSlot=None)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(0), first)) == 202
    # contructEmailFromPhoneNumber.ts: a booker without e-mail gets <digits>@sms.cal.com.
    by_phone = person("Ida Ischler", "4915112345009@sms.cal.com", "+4915112345009")
    second = booking("ph2", [by_phone], seatsPerTimeSlot=None, bookingId=502)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(2), second)) == 202

    assert count(sessions, Customer) == 1
    assert appointment(sessions, "ph2").customer_id == appointment(sessions, "ph1").customer_id
    [row] = attendee_rows(sessions, "ph2")
    assert row.email is None and row.name == "Ida Ischler"
    with sessions() as session:
        raw = session.scalar(select(Appointment.raw_payload).where(Appointment.calcom_uid == "ph2"))
        assert "4915112345009@sms.cal.com" in (raw or "")
        assert session.scalar(select(Customer.email)) == "ida@example.com"


def test_two_phone_only_seat_holders_cancel_one_after_the_other(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    quirin = person("Quirin Eins", None, "+4915112340001")
    quinta = person("Quinta Zwei", None, "+4915112340002")
    book_seats(post, redis_client, sessions, "seatQ", [SAM, quirin, quinta])
    for minute, holder in ((6, quirin), (7, quinta)):
        leaves = envelope("BOOKING_CANCELLED", at(minute), booking("seatQ", [holder]))
        assert send(post, redis_client, sessions, leaves) == 202

    assert statuses(sessions, "seatQ") == {
        "sam1@example.com": "booked",
        "Quirin Eins": "cancelled",
        "Quinta Zwei": "cancelled",
    }


def test_the_key_of_a_seat_without_email_names_the_person(
    post: Post, redis_client: redis.Redis
) -> None:
    quirin = person("Quirin  Eins", None, "+4915112340001")
    body = json.dumps(envelope("BOOKING_CANCELLED", at(6), booking("seatQ", [quirin])))
    assert post(body.encode()).status_code == 202
    [event] = take_queued(redis_client)
    assert event.event_id.endswith(":name:quirin eins|phone:+4915112340001")


# --- 8: values longer than their columns ------------------------------------------------


@pytest.mark.parametrize("email_length", [254, 300])
def test_over_long_values_never_lose_the_booking(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session], email_length: int
) -> None:
    labels = ".".join(["b" * 60, "c" * 60, "d" * 60, "e" * 60])
    domain = "@" + labels[: email_length - 66] + ".de"
    email = "a" * (email_length - len(domain)) + domain
    assert len(email) == email_length
    uid = "u" * 300
    guest = person("Maximilian von Hohenzollern-Sigmaringen " * 10, email, "+49 " + "1" * 120)
    guest["bookingSeat"] = {"referenceUid": "r" * 300}
    payload = booking(
        uid,
        [guest],
        title="T" * 600,
        rescheduleUid="o" * 300,
        cancellationReason="x" * 70000,
        bookingId=777,
    )
    for trigger, minute in (("BOOKING_RESCHEDULED", 0), ("BOOKING_CANCELLED", 1)):
        assert send(post, redis_client, sessions, envelope(trigger, at(minute), payload)) == 202

    with sessions() as session:
        found = session.scalars(
            select(Appointment).where(Appointment.calcom_booking_id == 777)
        ).one()
        row = session.scalars(select(AppointmentAttendee)).one()
        assert found.status == "cancelled" and len(found.title or "") == 255
        assert row.name and row.name.startswith("Maximilian") and row.status == "cancelled"
        assert row.seat_uid == "r" * 128
        stored = session.scalar(select(Customer.email))
    if email_length <= 254:
        assert row.email == email and stored == email
    else:  # not an address: identifies no one, the booking is kept
        assert row.email is None and stored is None


# --- 9: hosts, early no-shows, the flat meeting shape -------------------------------------


def test_a_co_host_missing_the_call_is_not_the_host_no_show(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    plain = booking("hn1", [SAM], seatsPerTimeSlot=None)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(0), plain)) == 202
    # triggerHostNoShow.ts: one delivery per host who did not join; noShowHost is set for
    # the booking's user only.
    for minute, host in ((5, "cohost@salon-nord.example"), (6, ORGANIZER["email"])):
        notice = {"bookingUid": "hn1", "bookingId": 500, "hostEmail": host, "attendees": []}
        body = envelope("AFTER_HOSTS_CAL_VIDEO_NO_SHOW", at(minute), notice)
        assert send(post, redis_client, sessions, body) == 202
        expected = None if host.startswith("cohost") else True
        assert appointment(sessions, "hn1").host_no_show is expected


def test_an_attendee_first_seen_in_a_no_show_gets_her_name_from_the_booking(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    notice = {
        "bookingUid": "ns1",
        "bookingId": 500,
        "attendees": [{"email": SAM["email"], "noShow": True}],
    }
    assert (
        send(post, redis_client, sessions, envelope("BOOKING_NO_SHOW_UPDATED", at(9), notice))
        == 202
    )
    plain = booking("ns1", [SAM], seatsPerTimeSlot=None)
    assert send(post, redis_client, sessions, envelope("BOOKING_CREATED", at(0), plain)) == 202

    [row] = attendee_rows(sessions, "ns1")
    assert (row.email, row.name, row.no_show, row.status) == (
        SAM["email"],
        "Sam Eins",
        True,
        "booked",
    )


def test_a_flat_meeting_event_finds_the_stylist_by_user_primary_email(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session, session.begin():
        company = Company(name="Salon Nord")
        branch = Branch(company=company, name="Nord", calcom_event_type_id=9001)
        session.add_all([company, branch])
        session.flush()
        stylist = Staff(company_id=company.id, name="Jörg", email="joerg@salon-nord.example")
        session.add(stylist)
        session.flush()
        stylist_id = stylist.id
    # scheduleTrigger.ts stores {triggerEvent, ...booking}: the Prisma booking row, flat.
    flat = {
        "triggerEvent": "MEETING_STARTED",
        "id": 880,
        "uid": "mt1",
        "eventTypeId": 9001,
        "userPrimaryEmail": "joerg@salon-nord.example",
        "title": "Haarschnitt",
        "startTime": START,
        "endTime": END,
        "createdAt": at(0),
        "attendees": [SAM],
    }
    assert send(post, redis_client, sessions, flat) == 202

    found = appointment(sessions, "mt1")
    assert (found.status, found.staff_id) == ("started", stylist_id)


# --- 8 (Retell): the same kind of overflow in the calls table ----------------------------


def test_over_long_retell_values_never_lose_the_call(sessions: sessionmaker[Session]) -> None:
    call_id = "call_" + "9" * 123  # the longest the door admits (longer ones are a 422)
    summary = "Termin für Jürgen gewünscht. " * 3000  # ~87,000 bytes in UTF-8, 84,000 chars
    extra = {
        "agent_id": "a" * 200,
        "direction": "inbound-" * 10,
        "disconnection_reason": "r" * 200,
        "recording_url": "https://recordings.example/" + "x" * 5000,
        "from_number": "+49 " + "1" * 100,
        "call_analysis": {"call_summary": summary},
    }
    for event in ("call_analyzed", "call_ended"):
        body = retell(event, call_id, **extra)
        outcome = deliver(sessions, "retell", f"long-call:{event}", event, body)
        assert outcome is Outcome.PROCESSED

    with sessions() as session:
        call = session.scalars(select(Call)).one()
        assert call.call_id == call_id and call.status == "ended"
        assert call.summary and len(call.summary.encode()) <= 65535
        assert call.summary.startswith("Termin für Jürgen")

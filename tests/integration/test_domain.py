"""Events become the business record: calls, appointments, customers — on SQLite and MariaDB.

Events go through ``record_event`` exactly as the worker task calls it; the database is
real and migrated.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import Appointment, Branch, Call, Company, Customer, Service, Staff, WebhookEvent
from models.events import EventStatus
from models.phones import normalize_phone
from tests.factories import incoming_event
from workers.pipeline.record import Outcome, record_event
from workers.retries import PermanentError

BRANCH_PHONE = "+4930901820"
CALLER = "+4915112345678"


@pytest.fixture
def salon(sessions: sessionmaker[Session]) -> dict[str, int]:
    """A company with one branch (phone, Cal.com event type), a service and a stylist."""
    with sessions() as session, session.begin():
        company = Company(name="Salon Ada", industry="hair_salon")
        branch = Branch(
            company=company,
            name="Mitte",
            phone="030 901820",
            retell_agent_id="agent_mitte",
            calcom_event_type_id=1001,
        )
        session.add_all([company, branch])
        session.flush()
        service = Service(
            company_id=company.id,
            branch_id=branch.id,
            name="Haircut",
            duration_minutes=30,
            calcom_event_type_id=1001,
        )
        staff = Staff(
            company_id=company.id, branch_id=branch.id, name="Bo", email="Bo@Salon.example"
        )
        session.add_all([service, staff])
        session.flush()
        return {
            "company": company.id,
            "branch": branch.id,
            "service": service.id,
            "staff": staff.id,
        }


def deliver(
    sessions: sessionmaker[Session], provider: str, event_id: str, event_type: str, body: Any
) -> Outcome:
    return record_event(sessions, incoming_event(provider, event_id, body, event_type=event_type))


# --- Retell calls ---------------------------------------------------------------------------


def retell(event: str, call_id: str, **extra: Any) -> dict[str, Any]:
    """A call object as Retell grows it: each later event carries all earlier fields."""
    call: dict[str, Any] = {
        "call_id": call_id,
        "agent_id": "agent_mitte",
        "call_status": "ongoing",
        "direction": "inbound",
        "from_number": CALLER,
        "to_number": BRANCH_PHONE,
        "start_timestamp": 1764061200000,
    }
    if event in ("call_ended", "call_analyzed"):
        call |= {
            "call_status": "ended",
            "end_timestamp": 1764061290500,
            "disconnection_reason": "user_hangup",
            "transcript": "Agent: Salon Ada, hallo!\nUser: Ich möchte einen Termin.",
            "recording_url": "https://recordings.example/call.wav",
        }
    if event == "call_analyzed":
        call["call_analysis"] = {
            "call_summary": "Wants an appointment.",
            "user_sentiment": "Positive",
        }
    call |= extra
    return {"event": event, "call": call}


def send_call_event(sessions: sessionmaker[Session], event: str, call_id: str) -> Outcome:
    return deliver(sessions, "retell", f"{call_id}:{event}", event, retell(event, call_id))


def call_row(sessions: sessionmaker[Session], call_id: str) -> dict[str, Any]:
    with sessions() as session:
        call = session.scalars(select(Call).where(Call.call_id == call_id)).one()
        row = {c.key: getattr(call, c.key) for c in inspect(Call).column_attrs}
    for volatile in ("id", "call_id", "created_at", "updated_at", "raw_payload", "customer_id"):
        row.pop(volatile)
    return row


ORDERS = list(itertools.permutations(["call_started", "call_ended", "call_analyzed"]))


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(e[5:] for e in o) for o in ORDERS])
def test_call_events_in_any_order_and_twice_give_the_same_call(
    sessions: sessionmaker[Session], salon: dict[str, int], order: tuple[str, ...]
) -> None:
    for event in order:
        send_call_event(sessions, event, "call_x")
    # Retell's known double call_ended, plus a redelivery of the whole series.
    for event in ("call_ended", *order):
        assert send_call_event(sessions, event, "call_x") is Outcome.ALREADY_DONE

    assert call_row(sessions, "call_x") == {
        "company_id": salon["company"],
        "branch_id": salon["branch"],
        "staff_id": None,
        "agent_id": "agent_mitte",
        "direction": "inbound",
        "status": "ended",
        "event_rank": 3,
        "from_number": CALLER,
        "to_number": BRANCH_PHONE,
        "started_at": datetime(2025, 11, 25, 9, 0, tzinfo=UTC),
        "ended_at": datetime(2025, 11, 25, 9, 1, 30, 500000, tzinfo=UTC),
        "duration_ms": 90500,
        "disconnection_reason": "user_hangup",
        "recording_url": "https://recordings.example/call.wav",
        "summary": "Wants an appointment.",
        "analysis": {"call_summary": "Wants an appointment.", "user_sentiment": "Positive"},
        "transcript": "Agent: Salon Ada, hallo!\nUser: Ich möchte einen Termin.",
    }
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Call)) == 1
        assert session.scalar(select(func.count()).select_from(Customer)) == 1
        statuses = session.scalars(select(WebhookEvent.status)).all()
        assert set(statuses) == {EventStatus.PROCESSED} and len(statuses) == 3


def test_a_late_call_started_does_not_reopen_an_ended_call(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    send_call_event(sessions, "call_ended", "call_late")
    send_call_event(sessions, "call_started", "call_late")

    row = call_row(sessions, "call_late")
    assert (row["status"], row["event_rank"], row["ended_at"]) == (
        "ended",
        2,
        datetime(2025, 11, 25, 9, 1, 30, 500000, tzinfo=UTC),
    )


def test_a_caller_is_one_customer_of_the_branch_whatever_the_spelling(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    spellings = [CALLER, "0151 12345678", "+49 (151) 123-456-78", "0049 151 12345678"]
    for n, spelling in enumerate(spellings):
        body = retell("call_started", f"call_{n}", from_number=spelling)
        deliver(sessions, "retell", f"call_{n}:call_started", "call_started", body)

    with sessions() as session:
        customer = session.scalars(select(Customer)).one()
        assert (customer.company_id, customer.phone, customer.phone_type, customer.phone_valid) == (
            salon["company"],
            CALLER,
            "mobile",
            True,
        )
        linked = session.scalars(select(Call.customer_id)).all()
        assert linked == [customer.id] * len(spellings)


def test_a_call_to_a_number_no_branch_owns_is_still_recorded(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    body = retell("call_ended", "call_stray", to_number="+41445556677")

    assert deliver(sessions, "retell", "call_stray:call_ended", "call_ended", body) is (
        Outcome.PROCESSED
    )

    with sessions() as session:
        call = session.scalars(select(Call)).one()
        assert (call.company_id, call.branch_id, call.to_number) == (None, None, "+41445556677")
        customer = session.get(Customer, call.customer_id)
        assert customer is not None and (customer.company_id, customer.phone) == (None, CALLER)


def test_an_outbound_call_finds_the_branch_by_the_number_it_called_from(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    body = retell(
        "call_started", "call_out", direction="outbound", from_number=BRANCH_PHONE, to_number=CALLER
    )
    deliver(sessions, "retell", "call_out:call_started", "call_started", body)

    with sessions() as session:
        call = session.scalars(select(Call)).one()
        customer = session.get(Customer, call.customer_id)
        assert call.branch_id == salon["branch"]
        assert customer is not None and customer.phone == CALLER


def test_events_that_are_not_about_a_call_row_are_recorded_only(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    inbound = {"event": "call_inbound", "call_inbound": {"from_number": CALLER, "to_number": "x"}}
    update = retell("transcript_updated", "call_t")

    deliver(sessions, "retell", "call_inbound:sha256:1", "call_inbound", inbound)
    deliver(sessions, "retell", "call_t:transcript_updated:sha256:2", "transcript_updated", update)

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Call)) == 0
        assert set(session.scalars(select(WebhookEvent.status))) == {EventStatus.PROCESSED}


def test_a_call_event_without_a_call_id_is_a_permanent_failure(
    sessions: sessionmaker[Session],
) -> None:
    body = {"event": "call_ended", "call": {"agent_id": "agent_mitte"}}

    with pytest.raises(PermanentError, match="call_id"):
        deliver(sessions, "retell", "sha256:abc", "call_ended", body)
    with sessions() as session:  # nothing half-written; the task marks it failed
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_listing_calls_does_not_load_transcripts_or_payloads(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    send_call_event(sessions, "call_analyzed", "call_big")

    with sessions() as session:
        call = session.scalars(select(Call)).one()
        assert {"transcript", "raw_payload", "analysis"} <= inspect(call).unloaded
        assert call.transcript is not None  # loaded when asked for


# --- Cal.com appointments --------------------------------------------------------------------


def booking(
    trigger: str,
    uid: str,
    start: str = "2026-12-01T09:00:00Z",
    end: str = "2026-12-01T09:30:00Z",
    created_at: str = "2026-11-23T09:00:00.000Z",
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "uid": uid,
        "title": "Haircut between Salon Ada and Ada",
        "startTime": start,
        "endTime": end,
        "eventTypeId": 1001,
        "status": "ACCEPTED",
        "organizer": {"name": "Bo", "email": "bo@salon.example", "timeZone": "Europe/Berlin"},
        "attendees": [
            {
                "name": "Ada Lovelace",
                "email": "Ada@Example.com",
                "timeZone": "Europe/Berlin",
                "phoneNumber": "0151 12345678",
            }
        ],
        **extra,
    }
    return {"triggerEvent": trigger, "createdAt": created_at, "payload": payload}


def send_booking(sessions: sessionmaker[Session], body: dict[str, Any]) -> Outcome:
    p = body["payload"]
    key = f"{body['triggerEvent']}:{p['uid']}:{p.get('startTime', '')}"
    return deliver(sessions, "calcom", key, body["triggerEvent"], body)


def appointment(sessions: sessionmaker[Session], uid: str) -> Appointment:
    with sessions() as session:
        return session.scalars(select(Appointment).where(Appointment.calcom_uid == uid)).one()


def test_a_booking_becomes_an_appointment_with_its_branch_service_staff_and_customer(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    send_booking(sessions, booking("BOOKING_CREATED", "bk_1"))

    a = appointment(sessions, "bk_1")
    assert (a.company_id, a.branch_id, a.service_id, a.staff_id) == (
        salon["company"],
        salon["branch"],
        salon["service"],
        salon["staff"],
    )
    assert (a.status, a.starts_at, a.ends_at) == (
        "booked",
        datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    )
    with sessions() as session:
        customer = session.get(Customer, a.customer_id)
        assert customer is not None
        assert (customer.email, customer.phone, customer.name) == (
            "ada@example.com",
            CALLER,
            "Ada Lovelace",
        )


def test_the_caller_who_books_is_the_same_customer(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    send_call_event(sessions, "call_ended", "call_then_book")
    send_booking(sessions, booking("BOOKING_CREATED", "bk_caller"))

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 1


def test_reschedule_in_place_moves_the_booking_and_a_late_create_does_not_move_it_back(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    moved = booking(
        "BOOKING_RESCHEDULED",
        "bk_2",
        start="2026-12-02T14:00:00Z",
        end="2026-12-02T14:30:00Z",
        created_at="2026-11-23T10:00:00.000Z",
    )
    send_booking(sessions, moved)
    send_booking(sessions, booking("BOOKING_CREATED", "bk_2"))  # overtaken by its retry

    a = appointment(sessions, "bk_2")
    assert (a.status, a.starts_at) == ("booked", datetime(2026, 12, 2, 14, 0, tzinfo=UTC))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Appointment)) == 1


@pytest.mark.parametrize("late_create", [False, True], ids=["in-order", "create-arrives-last"])
def test_reschedule_to_a_new_uid_retires_the_old_booking(
    sessions: sessionmaker[Session], salon: dict[str, int], late_create: bool
) -> None:
    created = booking("BOOKING_CREATED", "bk_old")
    moved = booking(
        "BOOKING_RESCHEDULED",
        "bk_new",
        start="2026-12-03T11:00:00Z",
        end="2026-12-03T11:30:00Z",
        created_at="2026-11-23T11:00:00.000Z",
        rescheduleUid="bk_old",
    )
    for body in [moved, created] if late_create else [created, moved]:
        send_booking(sessions, body)

    old, new = appointment(sessions, "bk_old"), appointment(sessions, "bk_new")
    assert (old.status, old.starts_at) == ("rescheduled", datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    assert (new.status, new.starts_at, new.rescheduled_from_uid) == (
        "booked",
        datetime(2026, 12, 3, 11, 0, tzinfo=UTC),
        "bk_old",
    )
    assert old.customer_id == new.customer_id is not None


@pytest.mark.parametrize("late_create", [False, True], ids=["in-order", "create-arrives-last"])
def test_a_cancelled_booking_stays_cancelled(
    sessions: sessionmaker[Session], salon: dict[str, int], late_create: bool
) -> None:
    created = booking("BOOKING_CREATED", "bk_3")
    cancelled = booking(
        "BOOKING_CANCELLED",
        "bk_3",
        created_at="2026-11-23T12:00:00.000Z",
        cancellationReason="Sick",
        status="CANCELLED",
    )
    for body in [cancelled, created] if late_create else [created, cancelled]:
        send_booking(sessions, body)

    a = appointment(sessions, "bk_3")
    assert (a.status, a.cancellation_reason, a.starts_at) == (
        "cancelled",
        "Sick",
        datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )


def test_a_booking_for_an_unknown_event_type_is_recorded_without_a_branch(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    send_booking(sessions, booking("BOOKING_CREATED", "bk_4", eventTypeId=999))

    a = appointment(sessions, "bk_4")
    assert (a.company_id, a.branch_id, a.service_id, a.calcom_event_type_id) == (
        None,
        None,
        None,
        999,
    )


def test_a_booking_with_an_unreadable_start_is_a_permanent_failure(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    with pytest.raises(PermanentError, match="startTime"):
        send_booking(sessions, booking("BOOKING_CREATED", "bk_5", start="next tuesday"))


def test_other_calcom_triggers_are_recorded_only(
    sessions: sessionmaker[Session], salon: dict[str, int]
) -> None:
    ping = {"triggerEvent": "PING", "createdAt": "2026-11-23T09:00:00Z", "payload": {}}

    assert deliver(sessions, "calcom", "sha256:ping", "PING", ping) is Outcome.PROCESSED
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Appointment)) == 0


# --- Customers and phones --------------------------------------------------------------------

PHONES = [
    # (as typed, E.164 or None when invalid, type)
    ("030 901820", "+4930901820", "fixed_line"),
    ("+49 30 901820", "+4930901820", "fixed_line"),
    ("0049 (0)30 901820", "+4930901820", "fixed_line"),
    ("0151-1234 5678", "+4915112345678", "mobile"),
    ("+49 151 12345678", "+4915112345678", "mobile"),
    ("0800 1234567", "+498001234567", "toll_free"),
    ("01 5123456", "+4315123456", "fixed_line"),  # Vienna: not valid in DE, valid in AT
    # National spellings are tried as DE first: this Austrian mobile is a valid
    # Hessian landline. Callers abroad must be written with their country code.
    ("0664 1234567", "+496641234567", "fixed_line"),
    ("+43 664 1234567", "+436641234567", "mobile"),
    ("+43 1 5123456", "+4315123456", "fixed_line"),
    ("+41 44 668 18 00", "+41446681800", "fixed_line"),  # Zürich
    ("0041 79 123 45 67", "+41791234567", "mobile"),
    ("(030) 90 18 20", "+4930901820", "fixed_line"),
    ("+1 650-253-0000", "+16502530000", "fixed_line_or_mobile"),
    ("+44 20 7946 0958", "+442079460958", "fixed_line"),
    ("12", None, "unknown"),
    ("not a number", None, "unknown"),
    ("+49 123", None, "unknown"),
]


@pytest.mark.parametrize(("typed", "e164", "kind"), PHONES, ids=[p[0] for p in PHONES])
def test_customer_phones_are_stored_in_e164_or_kept_and_flagged(
    sessions: sessionmaker[Session], typed: str, e164: str | None, kind: str
) -> None:
    with sessions() as session, session.begin():
        session.add(Customer(name="X", phone=typed))

    with sessions() as session:
        customer = session.scalars(select(Customer)).one()
        assert (customer.phone, customer.phone_valid, customer.phone_type) == (
            e164 or typed,
            e164 is not None,
            kind,
        )


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("030 901820", "+4930901820"),
        ("ext. 12 ask for the front desk, thanks", "ext. 12 ask for the front desk, "),
        ("   ", None),
    ],
)
def test_a_branch_and_a_customer_store_a_phone_the_same_way(
    sessions: sessionmaker[Session], typed: str, stored: str | None
) -> None:
    with sessions() as session, session.begin():
        company = Company(name="Salon")
        session.add_all([company, Branch(company=company, name="Mitte", phone=typed)])
        session.add(Customer(name="X", phone=typed))

    with sessions() as session:
        branch = session.scalars(select(Branch)).one()
        customer = session.scalars(select(Customer)).one()
        assert branch.phone == customer.phone == stored


def test_customer_email_is_unique_but_unknown_emails_are_many(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session, session.begin():
        session.add_all([Customer(name=f"anon {n}", email=None) for n in range(3)])
        session.add(Customer(name="Ada", email="ada@example.com"))
        session.add(Customer(name="Blank", email="  "))  # stored as NULL, not ''

    with sessions() as session:
        assert session.scalar(select(func.count()).where(Customer.email.is_(None))) == 4
        session.add(Customer(name="Ada again", email="ADA@example.com"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_the_region_order_is_configurable(sessions: sessionmaker[Session]) -> None:
    # HOOKFLEET_PHONE_REGIONS=CH,DE: a Swiss business reads national numbers as Swiss.
    assert normalize_phone("079 123 45 67", ("CH", "DE")).value == "+41791234567"
    assert normalize_phone("079 123 45 67", ("DE", "CH")).value == "+49791234567"


def test_an_international_number_written_without_plus_is_read_as_international() -> None:
    # Read nationally, 4915153713055 would be "+49 4915153713055", a number no one has.
    assert normalize_phone("4915153713055").value == "+4915153713055"
    assert normalize_phone("41 79 123 45 67").value == "+41791234567"
    # Digits without a country code of the configured regions stay national readings.
    assert normalize_phone("15153713055").value == "+4915153713055"
    assert normalize_phone("030 901820").value == "+4930901820"

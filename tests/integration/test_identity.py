"""A customer is one person: the identity rule, on SQLite and MariaDB.

Deliveries go through ``record_event`` as the worker calls it, on a real, migrated
database; the assertions are on the ``customers`` rows a salon would look at. The race
with real worker processes is in ``tests/e2e/test_identity_race.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import ObjectDeletedError

from models import Appointment, Branch, Call, Company, Customer, CustomerDetail
from models.appointments import AppointmentAttendee
from models.customers import person_key
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.migrate import upgrade
from models.settings import Settings
from tests.factories import incoming_event
from tests.helpers import calcom_booking_created, retell_call_ended_body
from tests.servers import sqlite_url
from workers.cli.integrity import integrity
from workers.domain import customers as identity
from workers.integrity.check import check, fix
from workers.pipeline import record as events
from workers.pipeline.record import IncomingEvent, Outcome, record_batch, record_event
from workers.retries import RetryPolicy, is_transient

BRANCH_PHONE = "+4930901820"
UNOWNED = "+41445556677"


def salon_mitte() -> Branch:
    """A new salon's branch that answers BRANCH_PHONE and owns Cal.com event type 1001."""
    return Branch(
        company=Company(name="Salon"), name="Mitte", phone=BRANCH_PHONE, calcom_event_type_id=1001
    )


@pytest.fixture
def company(sessions: sessionmaker[Session]) -> int:
    """A salon whose branch answers BRANCH_PHONE and owns Cal.com event type 1001."""
    with sessions() as session, session.begin():
        salon = Company(name="Salon Ada")
        session.add(
            Branch(company=salon, name="Mitte", phone=BRANCH_PHONE, calcom_event_type_id=1001)
        )
        session.flush()
        return salon.id


def deliver(sessions: sessionmaker[Session], provider: str, event_id: str, body: Any) -> Outcome:
    return record_event(sessions, incoming_event(provider, event_id, body))


def both_look_then_create(
    monkeypatch: pytest.MonkeyPatch, deliveries: list[Callable[[], object]]
) -> list[BaseException]:
    """Two ``deliveries`` on threads of their own, retried as the task is (4 tries), with
    the interleaving that gave two customers forced: each thread's first try waits at
    ``identity._create`` until both have looked up and found nobody. The errors left."""
    both_looked = threading.Barrier(len(deliveries), timeout=20)
    waited: set[int] = set()
    create = identity._create

    def create_after_both_looked(*args: Any, **kwargs: Any) -> Customer:
        if threading.get_ident() not in waited:  # only the first try of each worker
            waited.add(threading.get_ident())
            both_looked.wait()
        return create(*args, **kwargs)

    monkeypatch.setattr(identity, "_create", create_after_both_looked)
    errors: list[BaseException] = []

    def worker(delivery: Callable[[], object]) -> None:
        try:
            RetryPolicy(attempts=4, initial_s=0.05).call(delivery)
        except BaseException as error:  # noqa: BLE001 - reported by the caller's assertion
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(delivery,)) for delivery in deliveries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def call(call_id: str, caller: str, ours: str = BRANCH_PHONE, **extra: Any) -> dict[str, Any]:
    return retell_call_ended_body(call_id, caller, ours, **extra)


def book(sessions: sessionmaker[Session], uid: str, *args: Any) -> None:
    deliver(sessions, "calcom", f"BOOKING_CREATED:{uid}", calcom_booking_created(uid, *args))


def ring(sessions: sessionmaker[Session], call_id: str, caller: str, **kw: Any) -> None:
    deliver(sessions, "retell", f"{call_id}:call_ended", call(call_id, caller, **kw))


def customers(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    """(company_id, email, phone, name) of every customer, oldest first."""
    with sessions() as session:
        rows = session.execute(
            select(Customer.company_id, Customer.email, Customer.phone, Customer.name).order_by(
                Customer.id
            )
        )
        return [tuple(row) for row in rows]


def customer_of_booking(sessions: sessionmaker[Session], uid: str) -> tuple[Any, ...]:
    with sessions() as session:
        found = session.execute(
            select(Customer.email, Customer.phone, Customer.name)
            .join(Appointment, Appointment.customer_id == Customer.id)
            .where(Appointment.calcom_uid == uid)
        ).one()
        return tuple(found)


def customer_of_call(sessions: sessionmaker[Session], call_id: str) -> int | None:
    with sessions() as session:
        return session.scalar(select(Call.customer_id).where(Call.call_id == call_id))


# --- e-mail ---------------------------------------------------------------------------------


def test_accented_and_plain_emails_are_two_people_with_their_own_details(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "bk_umlaut", "Jürgen Müller", "jürgen.mueller@example.de", "0151 11111111")
    book(sessions, "bk_plain", "Jurgen Mueller", "jurgen.mueller@example.de", "0151 22222222")

    assert customers(sessions) == [
        (company, "jürgen.mueller@example.de", "+4915111111111", "Jürgen Müller"),
        (company, "jurgen.mueller@example.de", "+4915122222222", "Jurgen Mueller"),
    ]
    assert customer_of_booking(sessions, "bk_plain")[0] == "jurgen.mueller@example.de"


def test_strasse_and_strasse_with_eszett_are_two_people(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "bk_ss", "A", "strasse@example.de")
    book(sessions, "bk_sz", "B", "straße@example.de")

    assert [row[1] for row in customers(sessions)] == ["strasse@example.de", "straße@example.de"]


def test_an_email_in_another_case_or_unicode_form_is_the_same_person(
    sessions: sessionmaker[Session], company: int
) -> None:
    composed, decomposed = "j\u00fcrgen@example.de", "ju\u0308rgen@example.de"
    book(sessions, "bk_1", "Jürgen", composed)
    book(sessions, "bk_2", "Jürgen", f"  {decomposed.upper()} ")
    book(sessions, "bk_3", "Jürgen", "JÜRGEN@Example.DE")

    assert customers(sessions) == [(company, composed, None, "Jürgen")]


# --- phone ----------------------------------------------------------------------------------


def test_a_new_email_with_a_known_phone_is_a_second_customer_and_keeps_both(
    sessions: sessionmaker[Session], company: int, caplog: pytest.LogCaptureFixture
) -> None:
    book(sessions, "bk_mum", "Anna Berg", "anna@example.de", "+49 30 1234567")
    with caplog.at_level(logging.INFO, "hookfleet.worker.customers"):
        book(sessions, "bk_dad", "Bert Berg", "bert@example.de", "030 1234567")  # the landline

    assert customers(sessions) == [
        (company, "anna@example.de", "+49301234567", "Anna Berg"),
        (company, "bert@example.de", "+49301234567", "Bert Berg"),
    ]
    assert customer_of_booking(sessions, "bk_dad")[0] == "bert@example.de"
    assert any("phone shared" in r.getMessage() for r in caplog.records)


def test_a_call_from_a_shared_phone_links_the_first_customer_who_gave_it(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "bk_mum", "Anna Berg", "anna@example.de", "030 1234567")
    book(sessions, "bk_dad", "Bert Berg", "bert@example.de", "030 1234567")
    ring(sessions, "call_home", "+49301234567")

    with sessions() as session:
        anna = session.scalar(select(Customer.id).where(Customer.email == "anna@example.de"))
    assert customer_of_call(sessions, "call_home") == anna
    assert len(customers(sessions)) == 2


def test_on_a_shared_phone_without_emails_the_name_tells_people_apart(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "bk_bert", "Bert Berg", None, "030 1234567")
    book(sessions, "bk_anna", "Anna Berg", None, "030 1234567")
    book(sessions, "bk_anna_again", "anna  berg", None, "+49 30 1234567")
    book(sessions, "bk_anna_mail", "Anna Berg", "anna@example.de", "030 1234567")
    ring(sessions, "call_home", "030 1234567")

    assert customers(sessions) == [
        (company, None, "+49301234567", "Bert Berg"),
        (company, "anna@example.de", "+49301234567", "Anna Berg"),
    ]
    with sessions() as session:
        linked = dict(
            session.execute(select(Appointment.calcom_uid, Appointment.customer_id)).all()
        )
        bert, anna = session.scalars(select(Customer.id).order_by(Customer.id)).all()
    assert linked == {"bk_bert": bert, "bk_anna": anna, "bk_anna_again": anna, "bk_anna_mail": anna}
    assert customer_of_call(sessions, "call_home") == bert


def test_the_caller_who_books_later_is_one_customer_with_the_email_filled_in(
    sessions: sessionmaker[Session], company: int
) -> None:
    ring(sessions, "call_first", "+4915112345678")
    book(sessions, "bk_then", "Ada Lovelace", "ada@example.com", "0151 12345678")
    ring(sessions, "call_again", "0049 151 12345678")

    assert customers(sessions) == [(company, "ada@example.com", "+4915112345678", "Ada Lovelace")]
    assert customer_of_call(sessions, "call_first") == customer_of_call(sessions, "call_again")


def test_a_known_email_with_another_phone_keeps_the_customer_and_logs_the_conflict(
    sessions: sessionmaker[Session], company: int, caplog: pytest.LogCaptureFixture
) -> None:
    book(sessions, "bk_1", "Ada Lovelace", "ada@example.com", "0151 12345678")
    with caplog.at_level(logging.WARNING, "hookfleet.worker.customers"):
        book(sessions, "bk_2", "Ada King", "ada@example.com", "0170 9999999")

    assert customers(sessions) == [(company, "ada@example.com", "+4915112345678", "Ada Lovelace")]
    conflict = [r for r in caplog.records if r.getMessage() == "customer detail conflicts"]
    assert [getattr(r, "conflicting", None) for r in conflict] == ["phone,name"]


def test_a_call_from_an_invalid_number_links_no_customer(
    sessions: sessionmaker[Session], company: int
) -> None:
    ring(sessions, "call_anon", "anonymous")
    ring(sessions, "call_anon_2", "anonymous")

    assert customers(sessions) == []
    assert customer_of_call(sessions, "call_anon") is None


def test_two_calls_to_an_unowned_number_are_one_customer_without_company(
    sessions: sessionmaker[Session], company: int
) -> None:
    ring(sessions, "call_stray_1", "+4915112345678", ours=UNOWNED)
    ring(sessions, "call_stray_2", "0151 12345678", ours=UNOWNED)
    ring(sessions, "call_salon", "+4915112345678")  # the same person calls the salon

    assert customers(sessions) == [
        (None, None, "+4915112345678", None),
        (company, None, "+4915112345678", None),
    ]
    assert customer_of_call(sessions, "call_stray_1") == customer_of_call(sessions, "call_stray_2")


def test_the_database_refuses_a_second_customer_for_one_number_or_email(
    sessions: sessionmaker[Session], company: int
) -> None:
    """The unique keys, whatever code writes: "no company" (0) collides too."""
    for company_id in (None, company):
        for second in (
            {"phone": "+4915112345678", "phone_key": "+4915112345678"},
            {"email": "ada@example.com"},
            {"phone": "+4930901821", "person_key": person_key("+4930901821", "Carl Gast")},
        ):
            with sessions() as session, session.begin():
                session.add(Customer(company_id=company_id, **second))
            with sessions() as session:
                session.add(Customer(company_id=company_id, name="again", **second))
                with pytest.raises(IntegrityError):
                    session.commit()


def test_identity_columns_compare_byte_for_byte_on_mariadb(mariadb_url: str) -> None:
    engine = create_engine(mariadb_url)
    try:
        with engine.connect() as connection:
            collations = dict(
                connection.execute(
                    text(
                        "SELECT column_name, collation_name FROM information_schema.columns"
                        " WHERE table_schema = DATABASE() AND table_name = 'customers'"
                        " AND column_name IN ('email', 'phone', 'phone_key')"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert collations == {
        "email": "utf8mb4_bin",
        "phone": "utf8mb4_bin",
        "phone_key": "utf8mb4_bin",
    }


# --- the race, forced -----------------------------------------------------------------------


@pytest.fixture
def maria_sessions(mariadb_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(Settings(database_url=mariadb_url, db_pool_size=10))
    yield make_sessionmaker(engine)
    engine.dispose()


FIRST_CONTACTS = {
    "call-and-booking": [
        ("retell", "c1:call_ended", call("c1", "+4915112345678")),
        ("calcom", "b1", calcom_booking_created("b1", "Ada", "ada@example.com", "0151 12345678")),
    ],
    "two-calls-unowned-number": [
        ("retell", "call_a:call_ended", call("call_a", "+4915112345678", ours=UNOWNED)),
        ("retell", "call_z:call_ended", call("call_z", "0151 12345678", ours=UNOWNED)),
    ],
    "two-bookings-one-email": [
        ("calcom", "b1", calcom_booking_created("b1", "Ada", "ADA@example.com")),
        ("calcom", "b2", calcom_booking_created("b2", "Ada", "ada@example.com", "0151 12345678")),
    ],
}


@pytest.mark.parametrize("contacts", FIRST_CONTACTS.values(), ids=FIRST_CONTACTS.keys())
def test_first_contacts_that_both_found_nobody_make_one_customer_on_mariadb(
    maria_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    contacts: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """Both transactions look up, find nobody, and only then insert: the interleaving
    that gave two customers, forced with a barrier, under REPEATABLE READ (MariaDB's
    default, which Hookfleet ships). The loser's retry must find the winner."""
    with maria_sessions() as session, session.begin():
        # A call between call_a and call_z: their look-ups of their own call rows lock
        # different gaps, so they do not queue behind each other before the customer.
        session.add(Call(call_id="call_m", event_rank=2))
        # Likewise a booking between b1 and b2, whose look-ups lock the appointment rows.
        session.add(Appointment(calcom_uid="b1m", event_rank=0))
        session.add(salon_mitte())
    errors = both_look_then_create(
        monkeypatch, [partial(deliver, maria_sessions, *contact) for contact in contacts]
    )

    assert errors == []
    with maria_sessions() as session:
        everyone = session.scalars(select(Customer)).all()
        calls = select(Call.customer_id).where(Call.call_id != "call_m")
        linked = set(session.scalars(calls)) | set(
            session.scalars(select(Appointment.customer_id).where(Appointment.calcom_uid != "b1m"))
        )
    assert len(everyone) == 1
    assert linked == {everyone[0].id}
    assert everyone[0].phone in (None, "+4915112345678")


# --- integrity: certain merges and candidates -----------------------------------------------


def test_integrity_merges_the_old_race_and_lists_what_a_person_must_decide(
    database_url: str, sessions: sessionmaker[Session], company: int
) -> None:
    """Rows as the old code left them (no phone keys): a caller twice and the same
    caller who booked (certain), a landline with two e-mails and an accent twin (not)."""
    engine = sessions.kw["bind"]
    with sessions() as session, session.begin():
        session.add_all(
            [
                Customer(company_id=company, phone="+4915112345678"),
                Customer(company_id=company, phone="+4915112345678"),
                Customer(company_id=company, phone="0151 12345678", email="ada@example.com"),
                Customer(company_id=company, phone="030 1234567", email="anna@example.de"),
                Customer(company_id=company, phone="030 1234567", email="bert@example.de"),
                Customer(company_id=company, email="jürgen@example.de", name="Jürgen"),
                Customer(company_id=company, email="jurgen@example.de", name="Jurgen"),
            ]
        )

    found = check(engine).counts()
    assert found == {
        "customers.phone duplicate": 1,
        "customers.phone shared": 1,
        "customers.email similar": 1,
    }

    fixed = fix(engine)
    assert fixed.counts() == found
    assert customers(sessions) == [
        (company, "ada@example.com", "+4915112345678", None),
        (company, "anna@example.de", "+49301234567", None),
        (company, "bert@example.de", "+49301234567", None),
        (company, "jürgen@example.de", None, "Jürgen"),
        (company, "jurgen@example.de", None, "Jurgen"),
    ]
    # The merged caller is the number's customer: the next call finds it.
    ring(sessions, "call_after_fix", "+4915112345678")
    assert len(customers(sessions)) == 5
    again = fix(engine)
    assert again.problems == 0
    assert again.counts() == {"customers.phone shared": 1, "customers.email similar": 1}
    similar = again.findings["customers.email similar"].examples[0]
    assert "jürgen@example.de" in similar and "jurgen@example.de" in similar


# --- migration 0005 on rows the old code wrote ----------------------------------------------


@pytest.fixture(params=["sqlite", "mariadb"])
def at_0004(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database migrated only up to 0004 (before the identity keys)."""
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_server").create_database()
    else:
        url = sqlite_url(tmp_path / "db")
    upgrade(Settings(database_url=url), "0004")
    return url


def test_migration_gives_each_number_one_holder_and_keeps_the_old_rows(at_0004: str) -> None:
    engine = create_engine(at_0004)
    old = (
        "INSERT INTO customers (company_id, email, phone, phone_valid, created_at, updated_at)"
        " VALUES (:company, :email, :phone, :valid, '2024-01-01', '2024-01-01')"
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO companies (id, name, created_at, updated_at)"
                    " VALUES (7, 'Salon', '2024-01-01', '2024-01-01')"
                )
            )
            for company, email, phone, valid in [
                (7, None, "+4915112345678", True),  # the old race: the caller twice
                (7, None, "+4915112345678", True),
                (None, "ada@example.com", "+4915112345678", True),  # no company
                (7, "jürgen@example.de", "0151 2", False),  # invalid: holds nothing
            ]:
                connection.execute(
                    text(old),
                    {"company": company, "email": email, "phone": phone, "valid": valid},
                )
        upgrade(Settings(database_url=at_0004))
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT company_key, email, phone_key FROM customers ORDER BY id")
            ).all()
            # Now allowed: the accent-free twin of an existing address is another person.
            connection.execute(
                text(old),
                {"company": 7, "email": "jurgen@example.de", "phone": None, "valid": False},
            )
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        (7, None, "+4915112345678"),
        (7, None, None),
        (0, "ada@example.com", "+4915112345678"),
        (7, "jürgen@example.de", None),
    ]


# --- an event settled alone after its batch failed ------------------------------------------


def incoming(provider: str, event_id: str, body: dict[str, Any]) -> IncomingEvent:
    return incoming_event(provider, event_id, body)


def flat_meeting_started(uid: str, name: str, phone: str) -> dict[str, Any]:
    """Cal.com's scheduled MEETING_STARTED: the booking row itself, no ``payload`` key."""
    flat = calcom_booking_created(uid, name, None, phone)["payload"]
    return {"triggerEvent": "MEETING_STARTED", "createdAt": "2026-12-01T09:00:05Z", **flat}


def started_call(call_id: str, caller: str) -> dict[str, Any]:
    body = call(call_id, caller, call_status="ongoing")
    del body["call"]["end_timestamp"]
    return {**body, "event": "call_started"}


SETTLED_ALONE = {
    "call_started-after-call_ended": (
        ("retell", "r1:call_started", started_call("r1", "+4915112345678")),
        ("retell", "r1:call_ended", call("r1", "+4915112345678")),
    ),
    "BOOKING_CREATED-after-MEETING_STARTED": (
        (
            "calcom",
            "BOOKING_CREATED:m1",
            calcom_booking_created("m1", "Dana Gast", None, "+4930901820"),
        ),
        ("calcom", "MEETING_STARTED:m1", flat_meeting_started("m1", "Dana Gast", "+4930901820")),
    ),
}


@pytest.mark.parametrize("late, other", SETTLED_ALONE.values(), ids=SETTLED_ALONE.keys())
def test_an_event_settled_alone_after_a_failed_batch_sees_what_another_worker_committed(
    maria_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    late: tuple[str, str, dict[str, Any]],
    other: tuple[str, str, dict[str, Any]],
) -> None:
    """The batch with ``late`` fails (a deadlock), so the worker settles it alone; between
    that transaction's first plain read and its handler, another worker commits the
    call or booking. MariaDB's REPEATABLE READ hides that row from the plain reads of
    the settling transaction while its locking read finds it: the event was marked
    ``failed`` with ObjectDeletedError. It must be processed, the row a salon sees
    merged from both events. (SQLite has one writer at a time: no such interleaving.)"""
    with maria_sessions() as session, session.begin():
        session.add(salon_mitte())
    handler = events.HANDLERS[late[0]]

    def deadlocked(_session: Session, _row: Any) -> None:
        raise OperationalError("apply", {}, Exception(1213, "Deadlock found"))

    monkeypatch.setitem(events.HANDLERS, late[0], deadlocked)
    for recorded in (late, other):  # both on record as received, as the batches left them
        with pytest.raises(OperationalError):
            record_batch(maria_sessions, [incoming(*recorded)])

    def another_worker_commits_first(session: Session, row: Any) -> None:
        monkeypatch.setitem(events.HANDLERS, late[0], handler)
        session.execute(select(Company.id)).all()  # this transaction's snapshot starts
        assert deliver(maria_sessions, *other) is Outcome.PROCESSED
        handler(session, row)

    monkeypatch.setitem(events.HANDLERS, late[0], another_worker_commits_first)
    outcome = RetryPolicy(attempts=3, initial_s=0.05).call(
        lambda: record_event(maria_sessions, incoming(*late))
    )

    assert outcome is Outcome.PROCESSED
    with maria_sessions() as session:
        statuses = set(session.scalars(select(WebhookEvent.status)))
        assert statuses == {EventStatus.PROCESSED}
        if late[0] == "retell":
            seen = session.execute(select(Call.status, Call.ended_at, Call.customer_id)).one()
            assert seen.status == "ended" and seen.ended_at is not None
            assert seen.customer_id is not None
        else:
            seen = session.execute(
                select(Appointment.status, Appointment.started_at, Appointment.customer_id)
            ).one()
            assert seen.status == "started" and seen.started_at is not None
            assert seen.customer_id is not None


def test_a_row_missing_from_the_snapshot_is_retried_not_failed() -> None:
    """ObjectDeletedError means the transaction's snapshot lacks a row it locked: the
    same event in a fresh transaction succeeds, so it is a transient failure."""
    assert is_transient(ObjectDeletedError(inspect(Customer())))


def test_the_database_refuses_a_second_attendee_without_email_of_one_name(
    sessions: sessionmaker[Session],
) -> None:
    """UNIQUE (appointment_id, name_key): one row per e-mail-less attendee of a booking."""
    with sessions() as session, session.begin():
        session.add(Appointment(calcom_uid="u1", event_rank=0))
    with sessions() as session, session.begin():
        appointment = session.scalars(select(Appointment)).one()
        session.add(AppointmentAttendee(appointment=appointment, name="Dana", name_key="name:dana"))
    with sessions() as session:
        appointment = session.scalars(select(Appointment)).one()
        session.add(AppointmentAttendee(appointment=appointment, name="DANA", name_key="name:dana"))
        with pytest.raises(IntegrityError):
            session.commit()


LANDLINE = "+4930901821"


def test_two_first_bookings_of_one_person_without_email_on_a_held_landline_make_one_customer(
    maria_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Carl has no e-mail and books twice at once on the landline Ada holds: both
    workers look, find only Ada (another name), and only then insert — forced with a
    barrier, on MariaDB's REPEATABLE READ. The loser's retry must find Carl."""
    with maria_sessions() as session, session.begin():
        session.add(salon_mitte())
        session.add(Appointment(calcom_uid="c1m", event_rank=0))  # between c1 and c2
    book(maria_sessions, "a1", "Ada", "ada@example.com", LANDLINE)
    errors = both_look_then_create(
        monkeypatch,
        [
            partial(book, maria_sessions, uid, "Carl Gast", None, "030 901821")
            for uid in ("c1", "c2")
        ],
    )

    assert errors == []
    with maria_sessions() as session:
        carls = session.scalars(select(Customer.id).where(Customer.name == "Carl Gast")).all()
        linked = set(
            session.scalars(
                select(Appointment.customer_id).where(Appointment.calcom_uid.in_(["c1", "c2"]))
            )
        )
    assert len(carls) == 1
    assert linked == {carls[0]}
    assert customer_of_booking(maria_sessions, "a1") == ("ada@example.com", LANDLINE, "Ada")


# --- details that identify no one, and details that conflict ----------------------------------


def details_of(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    """(customer name, kind, value) of every recorded detail."""
    with sessions() as session:
        rows = session.execute(
            select(Customer.name, CustomerDetail.kind, CustomerDetail.value)
            .join(Customer, Customer.id == CustomerDetail.customer_id)
            .order_by(CustomerDetail.id)
        )
        return [tuple(row) for row in rows]


@pytest.mark.several_connections
def test_a_receptionists_email_for_three_people_keeps_every_name_and_lists_a_split(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "r1", "Frau Meier", "empfang@praxis.example")
    book(sessions, "r2", "Herr Schulz", "Empfang@praxis.example")
    book(sessions, "r3", "Frau Yilmaz", "empfang@praxis.example")

    assert customers(sessions) == [(company, "empfang@praxis.example", None, "Frau Meier")]
    assert details_of(sessions) == [
        ("Frau Meier", "name", "Herr Schulz"),
        ("Frau Meier", "name", "Frau Yilmaz"),
    ]
    report = check(sessions.kw["bind"])
    split = report.findings["customer_details other names"]
    assert split.count == 1
    assert "Herr Schulz, Frau Yilmaz" in split.examples[0]


@pytest.mark.parametrize("bad", ["not-an-email", "n/a", "zora@localhost", "a@b", "x@@y.de"])
def test_an_invalid_email_identifies_no_one_and_is_kept_as_given(
    sessions: sessionmaker[Session], company: int, bad: str
) -> None:
    book(sessions, "z1", "Zora", bad, "0151 11111111")
    book(sessions, "z2", "Zeno", bad, "0151 22222222")

    assert customers(sessions) == [
        (company, None, "+4915111111111", "Zora"),
        (company, None, "+4915122222222", "Zeno"),
    ]
    assert details_of(sessions) == [("Zora", "email", bad), ("Zeno", "email", bad)]


def test_a_new_phone_for_a_known_email_is_recorded_and_calls_from_it_find_her(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "p1", "Ada", "ada@example.com", "0151 11111111")
    book(sessions, "p2", "Ada", "ada@example.com", "0151 22222222")
    ring(sessions, "from_new_phone", "+4915122222222")

    assert customers(sessions) == [(company, "ada@example.com", "+4915111111111", "Ada")]
    assert details_of(sessions) == [("Ada", "phone", "+4915122222222")]
    assert customer_of_call(sessions, "from_new_phone") == customer_of_booking_id(sessions, "p1")


def customer_of_booking_id(sessions: sessionmaker[Session], uid: str) -> int | None:
    with sessions() as session:
        return session.scalar(select(Appointment.customer_id).where(Appointment.calcom_uid == uid))


def test_a_free_text_phone_is_kept_whole(sessions: sessionmaker[Session], company: int) -> None:
    said = "please call my mobile +49 151 1234 5678 after 6 pm"
    book(sessions, "f1", "Ada", "ada@example.com", said)
    assert details_of(sessions) == [("Ada", "phone", said)]


@pytest.mark.several_connections
def test_integrity_fix_merges_identical_copies_of_a_person_on_a_held_landline(
    sessions: sessionmaker[Session], company: int
) -> None:
    """Ada holds the landline; Carl without an e-mail exists twice (the old race): the
    two Carls are certain, Ada and a nameless record are not."""
    with sessions() as session, session.begin():
        session.add_all(
            [
                Customer(company_id=company, phone=LANDLINE, email="ada@example.com", name="Ada"),
                Customer(company_id=company, phone=LANDLINE, name="Carl Gast"),
                Customer(company_id=company, phone=LANDLINE, name="carl  gast"),
                Customer(company_id=company, phone=LANDLINE),
            ]
        )
    engine = sessions.kw["bind"]
    assert check(engine).counts()["customers.phone duplicate"] == 1
    fix(engine)
    names = [row[3] for row in customers(sessions)]
    assert names == ["Ada", "Carl Gast", None]
    assert fix(engine).problems == 0


@pytest.mark.several_connections
def test_integrity_says_an_e164_phone_without_a_type_is_marked_valid(
    sessions: sessionmaker[Session], company: int
) -> None:
    """A legacy row already in E.164 but without its type: fix marks it valid, and the
    check says so (it said "kept as given, marked invalid")."""
    with sessions() as session, session.begin():
        ada = Customer(company_id=company, phone="+4915112345678")
        session.add(ada)
        session.flush()
        ada_id = ada.id
    with sessions() as session, session.begin():
        session.execute(text("UPDATE customers SET phone_type = NULL, phone_valid = 0"))
    found = check(sessions.kw["bind"]).findings["customers.phone not E.164"].examples
    assert found == [f"customer {ada_id}: '+4915112345678' → already E.164, marked valid (mobile)"]


@pytest.mark.several_connections
def test_integrity_fix_merges_legacy_nfd_and_nfc_copies_of_one_address(
    sessions: sessionmaker[Session], company: int
) -> None:
    """Written past the model (an import): the decomposed and composed ``ü`` are one
    address to the workers, so fix merges them, on MariaDB too."""
    nfc, nfd = "j\u00fcrgen@example.de", "ju\u0308rgen@example.de"
    with sessions() as session, session.begin():
        session.add(Company(name="other"))
    with sessions() as session, session.begin():
        for address, phone in ((nfc, "+4915111111111"), (nfd, None)):
            session.execute(
                text(
                    "INSERT INTO customers (company_id, company_key, email, phone, phone_valid,"
                    " created_at, updated_at) VALUES (:c, :c, :e, :p, :v, :t, :t)"
                ),
                {
                    "c": company,
                    "e": address,
                    "p": phone,
                    "v": phone is not None,
                    "t": datetime.now(UTC),
                },
            )
    fix(sessions.kw["bind"])
    assert customers(sessions) == [(company, nfc, "+4915111111111", None)]


def test_a_phone_given_with_another_name_on_a_known_email_links_no_calls(
    sessions: sessionmaker[Session], company: int
) -> None:
    book(sessions, "m1", "Frau Meier", "empfang@praxis.example", "0151 11111111")
    book(sessions, "s1", "Herr Schulz", "empfang@praxis.example", "0151 22222222")
    ring(sessions, "schulz_calls", "+4915122222222")

    assert details_of(sessions) == [
        ("Frau Meier", "other_phone", "+4915122222222"),
        ("Frau Meier", "name", "Herr Schulz"),
    ]
    meier = customer_of_booking_id(sessions, "m1")
    assert customer_of_call(sessions, "schulz_calls") not in (None, meier)


def test_integrity_check_lists_every_entry_with_all_and_n_with_limit(
    database_url: str, sessions: sessionmaker[Session], company: int
) -> None:
    """The review lists stopped at 5 entries ("… and 2 more") with no way to see the rest."""
    with sessions() as session, session.begin():
        for n in range(7):
            phone = f"+49151{30000000 + n:08d}"
            session.add(Customer(company_id=company, phone=phone, email=f"a{n}@example.de"))
            session.add(Customer(company_id=company, phone=phone, email=f"b{n}@example.de"))
    runner = CliRunner()
    env = {"HOOKFLEET_DATABASE_URL": database_url}

    default = runner.invoke(integrity, ["check"], env=env)
    every = runner.invoke(integrity, ["check", "--all"], env=env)
    three = runner.invoke(integrity, ["check", "--limit", "3"], env=env)

    assert default.exit_code == every.exit_code == three.exit_code == 0, default.output
    assert default.output.count("differ in email") == 5 and "… and 2 more" in default.output
    assert every.output.count("differ in email") == 7 and "more" not in every.output
    assert three.output.count("differ in email") == 3 and "… and 4 more" in three.output

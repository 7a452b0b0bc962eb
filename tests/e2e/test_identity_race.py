"""Concurrent first contacts of one person through real processes make one customer.

gunicorn and the Procfile's ``celery worker`` processes (hookfleet.high for Retell,
hookfleet.default for Cal.com), three pool children each (the session's signed fleet,
tests/conftest.py; a fleet of its own for batches of one), on MariaDB with its
default isolation level, REPEATABLE READ, which Hookfleet ships. Each round is a new
person: two calls to the salon (phone only) and a booking (name, e-mail, the same
phone in national format) sent at once, and two calls from another new number to a
number no branch owns. Before the unique phone key, 28 of 50 such rounds gave two
customers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ingest.providers import calcom, retell
from models import Appointment, AppointmentAttendee, Call, Customer
from models.business import Branch, Company
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from tests.helpers import calcom_booking_created, retell_call_ended
from tests.processes import (
    SESSION_FLEET,
    SIGNED_SECRETS,
    Processes,
    request,
    running_fleet,
    signed_fleet_env,
)
from tests.servers import wait_until

# On the session's signed fleet (tests/conftest.py) but for the one-task batches: the
# rows that get it by batch size too join its xdist group, where it is started.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group(SESSION_FLEET)]

ROUNDS = 32
SALON_PHONE = "+4930901820"
UNOWNED = "+41445556677"
SECRETS = SIGNED_SECRETS
DEFAULT_BATCH_SIZE = str(Settings().batch_size)  # the shipped one, as the signed fleet runs


@pytest.fixture
def fleet(batch_size: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """The receiver and both queues' workers, three pool children each, verifying
    SIGNED_SECRETS on the shared MariaDB database: the session's signed fleet for the
    shipped batch size, a fleet of its own (the same settings) for batches of one."""
    if batch_size == DEFAULT_BATCH_SIZE:
        yield request.getfixturevalue("signed")
        return
    env = {**signed_fleet_env(), "HOOKFLEET_BATCH_SIZE": batch_size}
    names = ("web", "worker_high", "worker_default")
    redis_url, mariadb_url = (request.getfixturevalue(f) for f in ("redis_url", "mariadb_url"))
    with running_fleet(tmp_path, redis_url, mariadb_url, names=names, **env) as processes:
        processes.wait_for_worker("worker_high")
        processes.wait_for_worker("worker_default")
        yield processes


def lost_races(fleet: Processes, logs_before: dict[str, int]) -> int:
    """The lost races the workers logged (and retried) since ``logs_before``."""
    return sum(
        len(re.findall(r"RaceLost|IntegrityError", fleet.log(name)[start:]))
        for name, start in logs_before.items()
    )


def log_sizes(fleet: Processes) -> dict[str, int]:
    return {name: len(fleet.log(name)) for name in ("worker_high", "worker_default")}


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    yield engine
    engine.dispose()


def salon(engine: Engine) -> int:
    with Session(engine) as session:
        company = Company(name="Salon Ada")
        session.add(
            Branch(company=company, name="Mitte", phone=SALON_PHONE, calcom_event_type_id=1001)
        )
        session.commit()
        return company.id


def person(n: int) -> dict[str, str]:
    return {
        "e164": f"+49151{20000000 + n:08d}",
        "national": f"0151 {20000000 + n:08d}",
        "email": f"Person.{n}@Example.de",
        "name": f"Person {n}",
        "stray": f"+49151{30000000 + n:08d}",
    }


def post_call(fleet: Processes, call_id: str, caller: str, ours: str) -> int:
    raw = retell_call_ended(call_id, caller, ours).encode()
    signature = retell.sign(SECRETS["retell"], raw, int(time.time() * 1000))
    headers = {"x-retell-signature": signature}
    return request(fleet.base_url, "POST", "/webhooks/retell", raw, headers)[0]


def post_booking(fleet: Processes, uid: str, who: dict[str, str]) -> int:
    body = calcom_booking_created(uid, who["name"], who["email"], who["national"])
    raw = json.dumps(body).encode()
    headers = {"X-Cal-Signature-256": calcom.sign(SECRETS["calcom"], raw)}
    return request(fleet.base_url, "POST", "/webhooks/calcom", raw, headers)[0]


def first_contacts(fleet: Processes, n: int) -> list[Any]:
    """Person n's five deliveries, sent at the same moment from five threads."""
    who = person(n)
    sends = [
        lambda: post_call(fleet, f"race_{n}_a", who["e164"], SALON_PHONE),
        lambda: post_booking(fleet, f"race_{n}", who),
        lambda: post_call(fleet, f"race_{n}_b", who["national"], SALON_PHONE),
        lambda: post_call(fleet, f"stray_{n}_a", who["stray"], UNOWNED),
        lambda: post_call(fleet, f"stray_{n}_b", who["stray"], UNOWNED),
    ]
    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        return list(pool.map(lambda send: send(), sends))


@pytest.mark.parametrize(
    "batch_size", [DEFAULT_BATCH_SIZE, "1"], ids=["shipped-batches", "one-per-task"]
)
def test_simultaneous_first_contacts_through_two_queues_make_one_customer(
    fleet: Processes, engine: Engine, batch_size: str
) -> None:
    company = salon(engine)
    logs_before = log_sizes(fleet)
    answers = [status for n in range(ROUNDS) for status in first_contacts(fleet, n)]
    assert answers == [202] * (5 * ROUNDS)

    def all_processed() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == 5 * ROUNDS

    wait_until(all_processed, 180, "every delivery processed", interval=0.5)
    races = lost_races(fleet, logs_before)
    print(f"batch size {batch_size}: {races} lost races retried in {ROUNDS} rounds")

    with Session(engine) as session:
        rows = session.execute(
            select(Customer.id, Customer.company_id, Customer.email, Customer.phone, Customer.name)
        ).all()
        by_call = dict(session.execute(select(Call.call_id, Call.customer_id)).all())
        by_uid = dict(
            session.execute(select(Appointment.calcom_uid, Appointment.customer_id)).all()
        )
    assert len(rows) == 2 * ROUNDS
    for n in range(ROUNDS):
        who = person(n)
        theirs = [r for r in rows if r.phone == who["e164"]]
        strays = [r for r in rows if r.phone == who["stray"]]
        assert [(r.company_id, r.email, r.name) for r in theirs] == [
            (company, who["email"].lower(), who["name"])
        ], n
        assert [(r.company_id, r.email) for r in strays] == [(None, None)], n
        me, stray = theirs[0].id, strays[0].id
        assert (by_call[f"race_{n}_a"], by_call[f"race_{n}_b"], by_uid[f"race_{n}"]) == (me,) * 3
        assert (by_call[f"stray_{n}_a"], by_call[f"stray_{n}_b"]) == (stray, stray)


LANDLINE_ROUNDS = 20


def landline(n: int) -> str:
    return f"+4930{40000000 + n:08d}"


def post_calcom(fleet: Processes, body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    headers = {"X-Cal-Signature-256": calcom.sign(SECRETS["calcom"], raw)}
    return request(fleet.base_url, "POST", "/webhooks/calcom", raw, headers)[0]


def no_email_booking(uid: str, name: str, phone: str, flat: str | None = None) -> dict[str, Any]:
    """A booking whose attendee gave a phone and no e-mail; ``flat``: that trigger in the
    shape of Cal.com's scheduled MEETING_* job (the booking row, no ``payload`` key)."""
    booking = {
        "uid": uid,
        "title": "Haircut",
        "startTime": "2026-12-01T09:00:00Z",
        "endTime": "2026-12-01T09:30:00Z",
        "eventTypeId": 1001,
        "attendees": [{"name": name, "timeZone": "Europe/Berlin", "phoneNumber": phone}],
    }
    if flat is not None:
        return {"triggerEvent": flat, "createdAt": "2026-12-01T09:00:05Z", **booking}
    return {
        "triggerEvent": "BOOKING_CREATED",
        "createdAt": "2026-11-23T09:00:00Z",
        "payload": booking,
    }


def test_people_without_email_on_a_held_landline_are_one_customer_and_one_attendee(
    signed: Processes, engine: Engine
) -> None:
    """Ada holds each landline. At once: Carl books twice on it (no e-mail), and Dana's
    booking arrives as BOOKING_CREATED and as Cal.com's flat MEETING_STARTED. One Carl,
    one Dana, one attendee row for Dana, every event processed (none failed). On this
    box the bookings rarely interleave tightly enough to race (the default queue's
    batches settle them in one transaction); the interleaving itself is forced in
    ``tests/integration/test_identity.py``."""
    salon(engine)
    for n in range(LANDLINE_ROUNDS):
        ada = {"name": "Ada", "email": f"ada.{n}@example.de", "national": landline(n)}
        assert post_booking(signed, f"ada_{n}", ada) == 202

    def holders_booked() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == LANDLINE_ROUNDS

    wait_until(holders_booked, 120, "Ada's bookings processed", interval=0.3)
    answers = []
    for n in range(LANDLINE_ROUNDS):
        line = landline(n)
        sends = [
            no_email_booking(f"carl_{n}_a", "Carl Gast", line),
            no_email_booking(f"carl_{n}_b", "Carl Gast", line),
            no_email_booking(f"dana_{n}", "Dana Gast", line),
            no_email_booking(f"dana_{n}", "Dana Gast", line, flat="MEETING_STARTED"),
        ]
        at_once = threading.Barrier(len(sends))

        def send(body: dict[str, Any], at_once: threading.Barrier = at_once) -> int:
            at_once.wait()
            return post_calcom(signed, body)

        with ThreadPoolExecutor(max_workers=len(sends)) as pool:
            answers += list(pool.map(send, sends))
    assert answers == [202] * 4 * LANDLINE_ROUNDS
    total = LANDLINE_ROUNDS + len(answers)

    def all_settled() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(
                    WebhookEvent.status.in_([EventStatus.PROCESSED, EventStatus.FAILED])
                )
            )
        return done == total

    wait_until(all_settled, 180, "every delivery settled", interval=0.5)

    with Session(engine) as session:
        failed = session.scalar(
            select(func.count()).where(WebhookEvent.status != EventStatus.PROCESSED)
        )
        people = session.execute(select(Customer.phone, Customer.name)).all()
        dana_rows = session.execute(
            select(Appointment.calcom_uid, func.count(AppointmentAttendee.id))
            .join(AppointmentAttendee, AppointmentAttendee.appointment_id == Appointment.id)
            .where(Appointment.calcom_uid.like("dana_%"))
            .group_by(Appointment.calcom_uid)
        ).all()
    assert failed == 0
    for n in range(LANDLINE_ROUNDS):
        on_line = sorted(name for phone, name in people if phone == landline(n))
        assert on_line == ["Ada", "Carl Gast", "Dana Gast"], n
    assert sorted(count for _uid, count in dana_rows) == [1] * LANDLINE_ROUNDS

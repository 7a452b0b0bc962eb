"""Cal.com with real processes: gunicorn and the Procfile's celery workers (the
session's signed fleet, tests/conftest.py), real Redis, real MariaDB. The scheduled
job's flat MEETING_ENDED (sent once, never retried) and the seats of one seated
booking, as Cal.com sends them (``tests/fixtures/calcom/``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ingest.providers import calcom
from models import Appointment, AppointmentAttendee
from models.events import EventStatus, WebhookEvent
from tests.integration.test_calcom_triggers import fixture_body
from tests.processes import SIGNED_SECRETS, Processes, request
from tests.servers import wait_until

pytestmark = pytest.mark.e2e

SECRET = SIGNED_SECRETS["calcom"]


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    yield engine
    engine.dispose()


def test_flat_meeting_ended_and_seats_through_the_real_fleet(
    signed: Processes, engine: Engine
) -> None:
    sends = [
        # MEETING_ENDED (hookfleet.high) may well be applied before the booking
        # (hookfleet.default): either order ends in one closed appointment.
        "BOOKING_CREATED",
        "MEETING_ENDED",
        "seat_1_BOOKING_CREATED",
        "seat_2_BOOKING_CREATED",
        "seat_3_BOOKING_CREATED",
        "seat_2_BOOKING_CANCELLED",
        "seat_2_BOOKING_CANCELLED",  # the same delivery again: a duplicate
    ]
    answers = []
    for name in sends:
        body, content_type = fixture_body(name)
        headers = {
            "X-Cal-Signature-256": calcom.sign(SECRET, body),
            "Content-Type": content_type,
        }
        answers.append(request(signed.base_url, "POST", "/webhooks/calcom", body, headers)[0])
    assert answers == [202, 202, 202, 202, 202, 202, 200]

    def settled() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == 6

    wait_until(settled, 90, "six processed Cal.com events", interval=0.5)

    with Session(engine) as session:
        by_uid = {a.calcom_uid: a for a in session.scalars(select(Appointment))}
        assert set(by_uid) == {"bk_fx_created", "bk_fx_seated"}
        assert by_uid["bk_fx_created"].status == "ended"
        assert by_uid["bk_fx_created"].title == "Erstgespräch between Praxis Nord and Anna Weber"
        seated = by_uid["bk_fx_seated"]
        assert seated.status == "booked"
        seats = {
            row.email: row
            for row in session.scalars(
                select(AppointmentAttendee).where(AppointmentAttendee.appointment_id == seated.id)
            )
        }
        assert {email: (row.seat_uid, row.status) for email, row in seats.items()} == {
            "anna.weber@example.com": ("seat_ref_1", "booked"),
            "ben.kurz@example.com": ("seat_ref_2", "cancelled"),
            "cem.aydin@example.com": ("seat_ref_3", "booked"),
        }
        assert seated.customer_id == seats["anna.weber@example.com"].customer_id is not None

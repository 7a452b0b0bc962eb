"""Provider ids are compared byte for byte on both databases: ids that differ only in
case or accents are two records, as they are two keys in Redis dedup."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.appointments import Appointment
from models.calls import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.factories import incoming_event
from workers.pipeline.record import IncomingEvent, Outcome, record_batch, record_event

# Pairs a case- or accent-folding collation (MariaDB's utf8mb4_general_ci) takes as one.
TWINS = [
    ("AbCdEf123", "abcdef123"),
    ("call_é1", "call_e1"),
    ("evt_ß", "evt_ss"),
    ("evt_pad", "evt_pad "),  # PAD SPACE collations (utf8mb4_bin too) ignore the space
]


def call_event(event_id: str, call_id: str) -> IncomingEvent:
    body = {"event": "call_ended", "call": {"call_id": call_id, "call_status": "ended"}}
    return incoming_event("retell", event_id, body, queue=Queue.HIGH)


@pytest.mark.parametrize(("first", "second"), TWINS)
def test_event_ids_differing_in_case_or_accent_are_two_events(
    sessions: sessionmaker[Session], first: str, second: str
) -> None:
    batch = [call_event(f"evt_{first}", f"c_{first}"), call_event(f"evt_{second}", f"c_{second}")]

    assert record_batch(sessions, batch) == [Outcome.PROCESSED, Outcome.PROCESSED]

    with sessions() as session:
        events = session.scalars(select(WebhookEvent.event_id)).all()
        calls = session.scalars(select(Call.call_id)).all()
    assert sorted(events) == sorted([f"evt_{first}", f"evt_{second}"])
    assert sorted(calls) == sorted([f"c_{first}", f"c_{second}"])


@pytest.mark.parametrize(("first", "second"), TWINS)
def test_one_at_a_time_the_twin_is_recorded_not_taken_for_a_duplicate(
    sessions: sessionmaker[Session], first: str, second: str
) -> None:
    assert record_event(sessions, call_event(first, first)) is Outcome.PROCESSED
    assert record_event(sessions, call_event(second, second)) is Outcome.PROCESSED

    with sessions() as session:
        rows = session.scalars(select(WebhookEvent)).all()
        assert {row.event_id for row in rows} == {first, second}
        assert {row.status for row in rows} == {EventStatus.PROCESSED}
        assert set(session.scalars(select(Call.call_id))) == {first, second}


@pytest.mark.parametrize(("first", "second"), TWINS)
def test_booking_uids_differing_in_case_or_accent_are_two_appointments(
    sessions: sessionmaker[Session], first: str, second: str
) -> None:
    with sessions() as session:
        session.add_all([Appointment(calcom_uid=first), Appointment(calcom_uid=second)])
        session.commit()
        found = session.scalars(
            select(Appointment.calcom_uid).where(Appointment.calcom_uid == first)
        ).all()
    assert found == [first]

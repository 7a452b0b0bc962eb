"""Recording events: exactly once per (provider, event_id), on SQLite and MariaDB."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from models.events import EventStatus, WebhookEvent
from tests.factories import incoming_event
from workers.pipeline import record as events
from workers.pipeline.record import IncomingEvent, Outcome, mark_failed, record_event


def incoming(event_id: str = "evt_1", provider: str = "standard") -> IncomingEvent:
    return incoming_event(
        provider,
        event_id,
        '{"type": "invoice.paid", "ünïcode": "✓"}',
        correlation_id="corr-1",
        received_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
        headers={"webhook-id": event_id},
    )


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Registers a handler for provider 'test' that records each effect it applies."""
    calls: list[str] = []

    def handler(session: Session, row: WebhookEvent) -> None:
        calls.append(row.event_id)

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    return calls


def count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(WebhookEvent)) or 0


def test_event_is_recorded_processed_with_its_payload(sessions: sessionmaker[Session]) -> None:
    assert record_event(sessions, incoming()) is Outcome.PROCESSED

    with sessions() as session:
        row = session.execute(select(WebhookEvent)).scalar_one()
        assert row.status is EventStatus.PROCESSED
        assert row.processed_at is not None and row.processed_at.tzinfo is not None
        assert row.received_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        assert row.attempts == 1
        assert row.headers == {"webhook-id": "evt_1"}
        assert row.payload == '{"type": "invoice.paid", "ünïcode": "✓"}'


def test_recording_twice_applies_the_effect_once(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    first = record_event(sessions, incoming(provider="test"))
    second = record_event(sessions, incoming(provider="test"))

    assert (first, second) == (Outcome.PROCESSED, Outcome.ALREADY_DONE)
    assert applied == ["evt_1"]
    assert count(sessions) == 1


@pytest.mark.several_connections
def test_concurrent_workers_with_the_same_event_apply_it_once(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        outcomes.append(record_event(sessions, incoming(provider="test")))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes).count(Outcome.PROCESSED) == 1
    assert applied == ["evt_1"]
    assert count(sessions) == 1


def test_a_failing_effect_leaves_nothing_half_written_and_can_be_retried(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def flaky(session: Session, row: WebhookEvent) -> None:
        attempts.append(row.attempts)
        if len(attempts) == 1:
            raise RuntimeError("mapping exploded")

    monkeypatch.setitem(events.HANDLERS, "test", flaky)

    with pytest.raises(RuntimeError):
        record_event(sessions, incoming(provider="test"))
    assert count(sessions) == 0  # the insert rolled back with the effect

    mark_failed(sessions, incoming(provider="test"), "RuntimeError: mapping exploded")
    with sessions() as session:
        row = session.execute(select(WebhookEvent)).scalar_one()
        assert (row.status, row.last_error) == (
            EventStatus.FAILED,
            "RuntimeError: mapping exploded",
        )

    assert record_event(sessions, incoming(provider="test")) is Outcome.PROCESSED
    with sessions() as session:
        row = session.execute(select(WebhookEvent)).scalar_one()
        assert (row.status, row.last_error, row.attempts) == (EventStatus.PROCESSED, None, 2)


def test_mark_failed_never_downgrades_a_processed_event(sessions: sessionmaker[Session]) -> None:
    record_event(sessions, incoming())
    mark_failed(sessions, incoming(), "late failure from a duplicate")

    with sessions() as session:
        assert session.execute(select(WebhookEvent.status)).scalar_one() is EventStatus.PROCESSED


def test_listing_events_does_not_load_payloads(sessions: sessionmaker[Session]) -> None:
    for n in range(3):
        record_event(sessions, incoming(f"evt_{n}"))

    with sessions() as session:
        rows = session.execute(select(WebhookEvent).order_by(WebhookEvent.id)).scalars().all()
        assert [r.event_id for r in rows] == ["evt_0", "evt_1", "evt_2"]
        assert all("payload" in inspect(r).unloaded for r in rows)

"""A dead event's row counts every attempt its messages made, even those whose own
count rolled back with their transaction (workers/pipeline/record.py ``mark_failed``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.events import EventStatus, WebhookEvent
from workers import runtime
from workers.broker.batching import Entry, Verdict
from workers.pipeline import record as events
from workers.pipeline import tasks

from .test_events import incoming


@pytest.fixture
def locked_out(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker on the test database whose handler always meets a lock wait timeout
    (MariaDB 1205: transient, so retried), two retries allowed, one try per message."""
    monkeypatch.setenv("HOOKFLEET_DATABASE_URL", database_url)
    monkeypatch.setenv("HOOKFLEET_TASK_MAX_RETRIES", "2")
    monkeypatch.setenv("HOOKFLEET_DB_RETRY_ATTEMPTS", "1")

    def handler(session: Session, row: WebhookEvent) -> None:
        raise OperationalError("UPDATE calls", {}, Exception(1205, "Lock wait timeout exceeded"))

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    runtime.dispose()
    yield
    runtime.dispose()


def test_a_dead_event_counts_the_attempts_of_all_its_messages(locked_out: None) -> None:
    event = incoming("call_lockme:call_ended", provider="test")
    # Its third message (two retries spent): the first two failed the same way, and
    # their claims' counts rolled back with them.
    last = Entry(task_id="t3", kwargs=event.to_kwargs(), retries=2, queue=event.queue)

    assert tasks.process_batch([last]) == [Verdict.ACK]

    with tasks.sessions()() as session:
        row = session.scalars(select(WebhookEvent)).one()
    assert (row.status, row.attempts) == (EventStatus.DEAD, 3)

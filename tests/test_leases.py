"""Ownership of a message is a lease of the live worker that took it.

Two parts. First, the database's half, forced deterministically: two copies of one
message, in two workers at once, waiting on the same row lock, apply once. Then the
fault rows (marker ``faults``, real processes, counted like tests/test_faults.py): a
worker killed, frozen, or cut off loses its messages to the others within its lease; a
live worker keeps them however long it works.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from models.events import EventStatus, WebhookEvent
from tests.servers import wait_until
from workers import events
from workers.events import Outcome, record_batch

from .test_events import incoming


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Provider 'test' gets a handler whose effect is not idempotent, like a new
    booking: each call lists itself and appends '+' to the row's event type (in the
    same transaction), so an effect applied twice shows as '++'."""
    calls: list[str] = []

    def handler(session: Session, row: WebhookEvent) -> None:
        calls.append(row.event_id)
        row.event_type += "+"

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    return calls


def _lock_waits(session: Session) -> int:
    return int(
        session.scalar(
            text("SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")
        )
        or 0
    )


def test_two_copies_of_one_message_waiting_on_the_same_row_lock_apply_once(
    sessions: sessionmaker[Session], database_url: str, applied: list[str]
) -> None:
    """The issue's double apply: a frozen worker holds the event's row lock inside its
    transaction; its message went to another worker twice over (two pool processes),
    both of which already read the row as ``received`` and now wait on that lock. The
    frozen one rolls back. Exactly one copy may apply."""
    event = incoming("evt_twice", provider="test")
    record_batch(sessions, [incoming("evt_other", provider="test")])  # warm the schema
    with sessions() as session:  # the first delivery recorded the event, unfinished
        session.execute(
            events._insert_ignoring_duplicates(session), [events._row(event, EventStatus.RECEIVED)]
        )
        session.commit()
    engine = sessions.kw["bind"]
    mariadb = engine.dialect.name in ("mysql", "mariadb")

    arrived = threading.Semaphore(0)
    workers: set[int] = set()

    @sa_event.listens_for(engine, "before_cursor_execute")
    def at_the_claim(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() in workers and statement.lstrip().upper().startswith(
            "UPDATE WEBHOOK_EVENTS"
        ):
            arrived.release()

    frozen = sessions()  # the frozen worker's transaction, holding the row lock
    frozen.execute(
        update(WebhookEvent)
        .where(WebhookEvent.event_id == "evt_twice")
        .values(attempts=WebhookEvent.attempts + 1)
    )
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def copy() -> None:
        workers.add(threading.get_ident())
        try:
            outcomes.extend(record_batch(sessions, [event]))
        except Exception as error:  # noqa: BLE001 - asserted on below
            errors.append(error)

    threads = [threading.Thread(target=copy) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for _ in threads:  # both copies read the row and reached the claim...
            assert arrived.acquire(timeout=30)
        if mariadb:  # ...and both are waiting on the frozen worker's lock
            with sessions() as probe:
                wait_until(lambda: _lock_waits(probe) == 2, 20, "two lock waits")
        else:  # SQLite cannot show its waiters: give them time to start waiting
            time.sleep(1)
    finally:
        frozen.rollback()  # the thawed worker gives up its transaction
        frozen.close()
        for thread in threads:
            thread.join(60)
        sa_event.remove(engine, "before_cursor_execute", at_the_claim)

    assert not errors, errors
    assert sorted(outcomes) == [Outcome.ALREADY_DONE, Outcome.PROCESSED]
    assert applied.count("evt_twice") == 1
    with sessions() as session:
        row = session.scalars(
            select(WebhookEvent).where(WebhookEvent.event_id == "evt_twice")
        ).one()
    assert (row.status, row.event_type) == (EventStatus.PROCESSED, "invoice.paid+")

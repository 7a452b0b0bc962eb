"""Recording deliveries in batches: the same exactly-once promise as one at a time, on
SQLite and MariaDB, and what a batch leaves behind when it fails halfway."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.events import EventStatus, WebhookEvent
from workers import runtime
from workers.broker.batching import Entry, Verdict
from workers.pipeline import record as events
from workers.pipeline import tasks
from workers.pipeline.record import Outcome, mark_failed, record_batch, record_event
from workers.retries import PermanentError

from .test_events import incoming


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Provider 'test' gets a handler that lists each call, in order, and leaves a mark
    that commits with its transaction (a '+' on the row's event type, so an effect
    applied twice shows as '++'); an event whose id starts with 'bad' cannot be applied."""
    calls: list[str] = []

    def handler(session: Session, row: WebhookEvent) -> None:
        if row.event_id.startswith("bad"):
            raise PermanentError("cannot map this one")
        calls.append(row.event_id)
        row.event_type += "+"

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    return calls


def rows(sessions: sessionmaker[Session]) -> dict[str, tuple[EventStatus, int]]:
    with sessions() as session:
        return {
            r.event_id: (r.status, r.attempts)
            for r in session.scalars(select(WebhookEvent).order_by(WebhookEvent.id))
        }


def test_a_batch_records_every_event_once_in_two_commits(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    batch = [incoming(f"evt_{n}", provider="test") for n in range(5)]
    batch += [incoming("plain_1"), incoming("plain_1")]  # no handler; twice in one batch

    outcomes = record_batch(sessions, batch)

    assert outcomes == [Outcome.PROCESSED] * 6 + [Outcome.ALREADY_DONE]
    assert applied == [f"evt_{n}" for n in range(5)]  # in message order
    found = rows(sessions)
    assert len(found) == 6
    assert all(status is EventStatus.PROCESSED and n == 1 for status, n in found.values())


def test_a_redelivered_batch_applies_nothing_again(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    batch = [incoming(f"evt_{n}", provider="test") for n in range(3)]
    record_batch(sessions, batch)
    again = record_batch(sessions, [*batch, incoming("evt_new", provider="test")])

    assert again == [Outcome.ALREADY_DONE] * 3 + [Outcome.PROCESSED]
    assert applied == ["evt_0", "evt_1", "evt_2", "evt_new"]


def test_a_batch_that_fails_leaves_the_events_received_for_one_by_one_settling(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    batch = [incoming("evt_a", provider="test"), incoming("bad_b", provider="test")]
    batch.append(incoming("plain_c"))

    with pytest.raises(PermanentError):
        record_batch(sessions, batch)
    # Recorded (the first commit), nothing applied (evt_a's effect rolled back with the
    # second) — and a record-only event is finished by the first commit already.
    assert applied == ["evt_a"]
    assert rows(sessions) == {
        "evt_a": (EventStatus.RECEIVED, 0),
        "bad_b": (EventStatus.RECEIVED, 0),
        "plain_c": (EventStatus.PROCESSED, 1),
    }

    # What the worker then does for each event.
    assert record_event(sessions, batch[0]) is Outcome.PROCESSED
    with pytest.raises(PermanentError):
        record_event(sessions, batch[1])
    mark_failed(sessions, batch[1], "PermanentError: cannot map this one")
    assert record_event(sessions, batch[2]) is Outcome.ALREADY_DONE

    assert applied == ["evt_a", "evt_a"]
    assert rows(sessions) == {
        "evt_a": (EventStatus.PROCESSED, 1),
        "bad_b": (EventStatus.FAILED, 1),
        "plain_c": (EventStatus.PROCESSED, 1),
    }


def test_unfinished_rows_get_another_chance_in_a_batch(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    """A row left received (its message lost), failed or dead is applied when the event
    comes again (the sweep, a provider's late retry); a processed one is not."""
    for event_id, status in [
        ("stuck", EventStatus.RECEIVED),
        ("failed", EventStatus.FAILED),
        ("dead", EventStatus.DEAD),
        ("done", EventStatus.PROCESSED),
    ]:
        with sessions() as session:
            session.execute(
                events._insert_ignoring_duplicates(session),
                [events._row(incoming(event_id, provider="test"), status)],
            )
            session.commit()

    outcomes = record_batch(
        sessions, [incoming(e, provider="test") for e in ("stuck", "failed", "dead", "done")]
    )

    assert outcomes == [Outcome.PROCESSED] * 3 + [Outcome.ALREADY_DONE]
    assert applied == ["stuck", "failed", "dead"]
    assert {e: s for e, (s, _) in rows(sessions).items()} == {
        "stuck": EventStatus.PROCESSED,
        "failed": EventStatus.PROCESSED,
        "dead": EventStatus.PROCESSED,
        "done": EventStatus.PROCESSED,
    }


@pytest.mark.several_connections
def test_concurrent_batches_with_the_same_events_apply_each_once(
    sessions: sessionmaker[Session], applied: list[str]
) -> None:
    """Two workers holding overlapping batches (a redelivery racing the original)."""
    ids = [f"evt_{n}" for n in range(20)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        batch = [incoming(ids[(n + offset) % 20], provider="test") for n in range(20)]
        barrier.wait()
        try:
            record_batch(sessions, batch)
        except Exception as error:  # noqa: BLE001 - the worker would settle one by one
            errors.append(error)
            for event in batch:
                record_event(sessions, event)

    threads = [threading.Thread(target=work, args=(n * 5,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert set(applied) == set(ids)  # tried, some of them more than once (deadlocks)
    with sessions() as session:
        marks = {
            e: t for e, t in session.execute(select(WebhookEvent.event_id, WebhookEvent.event_type))
        }
        statuses = set(session.scalars(select(WebhookEvent.status)))
    assert marks == {e: "invoice.paid+" for e in ids}  # each effect committed once
    assert statuses == {EventStatus.PROCESSED}


# -- the worker's verdicts: what is acknowledged and what goes back on the queue --------


@pytest.fixture
def worker_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``workers.pipeline.tasks`` pointed at the test database, as a worker process would be."""
    monkeypatch.setenv("HOOKFLEET_DATABASE_URL", database_url)
    runtime.dispose()  # this process's engine and settings, for this database
    yield database_url
    runtime.dispose()


def entry(event_id: str, provider: str = "test", **extra: Any) -> Entry:
    event = incoming(event_id, provider=provider)
    kwargs = {**event.to_kwargs(), **extra}
    return Entry(task_id=f"task-{event_id}", kwargs=kwargs, retries=0, queue=event.queue)


def test_a_poisoned_batch_fails_only_its_poison(worker_db: str, applied: list[str]) -> None:
    entries = [entry("evt_1"), entry("bad_2"), entry("evt_3"), entry("plain", "standard")]

    verdicts = tasks.process_batch(entries)

    assert verdicts == [Verdict.ACK] * 4
    assert marks() == {
        "evt_1": "invoice.paid+",
        "bad_2": "invoice.paid",
        "evt_3": "invoice.paid+",
        "plain": "invoice.paid",
    }
    with tasks.sessions()() as session:
        bad = session.scalars(select(WebhookEvent).where(WebhookEvent.event_id == "bad_2")).one()
        assert bad.status is EventStatus.FAILED and "cannot map" in (bad.last_error or "")
        done = session.scalar(
            select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
        )
        assert done == 3


def test_a_malformed_message_is_dropped_and_replays_are_applied_again(
    worker_db: str, applied: list[str]
) -> None:
    assert tasks.process_batch([entry("evt_1")]) == [Verdict.ACK]
    malformed = Entry(task_id="t-x", kwargs={"nonsense": True}, retries=0, queue="")

    verdicts = tasks.process_batch([malformed, entry("evt_1", replay=True), entry("evt_1")])

    assert verdicts == [Verdict.ACK] * 3
    # The deliberate replay ran the handler once more (real handlers are idempotent);
    # the plain redelivery after it did nothing.
    assert marks() == {"evt_1": "invoice.paid++"}


def test_a_message_missing_a_field_is_kept_failed_with_the_reason_and_never_applied(
    worker_db: str, applied: list[str]
) -> None:
    """Nothing is filled in: a message without its event type and queue is not applied
    with empty ones, it is dead-lettered (``failed``) saying what it lacks."""
    complete = entry("evt_partial")
    partial = Entry(
        task_id="t-partial",
        kwargs={k: v for k, v in complete.kwargs.items() if k not in ("event_type", "queue")},
        retries=0,
        queue=complete.queue,
    )

    assert tasks.process_batch([partial, entry("evt_whole")]) == [Verdict.ACK] * 2

    assert applied == ["evt_whole"]
    with tasks.sessions()() as session:
        row = session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.event_id == "evt_partial")
            .options(undefer(WebhookEvent.payload))
        ).one()
    assert row.status is EventStatus.FAILED
    assert "lacks event_type, queue" in (row.last_error or "")
    assert row.payload == complete.kwargs["payload"]  # kept for a replay
    assert row.queue == complete.queue  # the queue it was consumed from


def test_a_message_of_the_wrong_type_is_kept_failed_and_one_without_ids_is_dropped(
    worker_db: str, applied: list[str]
) -> None:
    wrong = entry("evt_wrong", payload={"not": "text"})
    anonymous = entry("evt_anonymous")
    del anonymous.kwargs["event_id"]

    assert tasks.process_batch([wrong, anonymous]) == [Verdict.ACK] * 2

    assert applied == []
    with tasks.sessions()() as session:
        found = session.execute(select(WebhookEvent.event_id, WebhookEvent.status)).all()
        [error] = session.scalars(select(WebhookEvent.last_error)).all()
    assert found == [("evt_wrong", EventStatus.FAILED)]
    assert "payload is dict, not str" in (error or "")


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (DisconnectionError("the database went away"), Verdict.REQUEUE),
        (ValueError("a row the database refuses"), Verdict.ACK),
    ],
    ids=["database-away-requeued", "unrecordable-dropped"],
)
def test_a_malformed_message_is_requeued_only_while_its_row_cannot_be_written_yet(
    worker_db: str, monkeypatch: pytest.MonkeyPatch, error: Exception, verdict: Verdict
) -> None:
    def refuse(*_: Any) -> bool:
        raise error

    monkeypatch.setattr(tasks, "record_malformed", refuse)
    partial = entry("evt_partial")
    del partial.kwargs["event_type"]

    assert tasks.process_batch([partial]) == [verdict]


def test_messages_the_previous_version_queued_are_applied(
    worker_db: str, applied: list[str]
) -> None:
    """The arguments exactly as the last release's receiver and sweeper wrote them
    (the sweeper with an explicit ``replay: false``)."""
    receiver = {
        "provider": "test",
        "event_id": "evt_old",
        "event_type": "invoice.paid",
        "queue": "hookfleet.default",
        "correlation_id": "corr-old",
        "received_at": "2026-11-23T08:00:00.123456+00:00",
        "headers": {"content-type": "application/json"},
        "payload": '{"type": "invoice.paid"}',
    }
    swept = {**receiver, "event_id": "evt_swept", "replay": False}
    entries = [
        Entry(task_id=f"t-{k['event_id']}", kwargs=k, retries=0, queue="hookfleet.default")
        for k in (receiver, swept)
    ]

    assert tasks.process_batch(entries) == [Verdict.ACK] * 2

    assert applied == ["evt_old", "evt_swept"]


def marks() -> dict[str, str]:
    with tasks.sessions()() as session:
        found = session.execute(select(WebhookEvent.event_id, WebhookEvent.event_type))
        return {event_id: event_type for event_id, event_type in found}


def test_an_effect_logs_under_its_own_event(
    worker_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's warnings (e.g. a call to a number no branch owns) carry the event it
    is applying, not the one before it in the batch."""
    from models.logs import log_context

    seen: list[tuple[str, str]] = []

    def handler(session: Session, row: WebhookEvent) -> None:
        seen.append((row.event_id, str((log_context.get() or {}).get("event_id", ""))))

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    tasks.process_batch([entry("evt_1"), entry("plain", "standard"), entry("evt_2")])

    assert seen == [("evt_1", "evt_1"), ("evt_2", "evt_2")]


# -- a frozen worker's open transaction and everyone else's batches ---------------------


def test_a_worker_frozen_inside_its_claim_does_not_hold_up_other_workers_batches(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch, applied: list[str]
) -> None:
    """Issue 17: a worker SIGSTOPped inside its apply transaction stalled every other
    worker: its claim's index scan (REPEATABLE READ) held a gap lock at the end of the
    ``received`` range of the status index, where every new row is inserted. Here a
    connection of the worker's own engine does exactly what that batch did — records
    ``received`` rows, claims them, and stays open — and another worker's batch of
    other events must commit as fast as it would alone, not after lock waits."""
    monkeypatch.setenv("HOOKFLEET_DATABASE_URL", mariadb_url)
    runtime.dispose()
    sessions = runtime.sessions()  # the worker's engine, as a worker process builds it
    try:
        # History: many finished rows and a few unfinished, so the optimizer prefers the
        # status index for the claim's scan (as on the tester's fleet).
        record_batch(sessions, [incoming(f"old_{n}", provider="test") for n in range(300)])
        with sessions() as session:
            session.execute(text("ANALYZE TABLE webhook_events"))
        # A full batch (the tester's Cal.com burst): the claim then scans the status index.
        frozen_batch = [incoming(f"frozen_{n}", provider="test") for n in range(100)]
        frozen = sessions()
        frozen.execute(
            events._insert_ignoring_duplicates(frozen),
            [events._row(e, EventStatus.RECEIVED) for e in frozen_batch],
        )
        frozen.commit()
        claimed = events._claim_many(frozen, [("test", e.event_id) for e in frozen_batch])
        assert len(claimed) == 100  # ...and the frozen transaction stays open, locks held
        try:
            started = time.monotonic()
            outcomes = record_batch(
                sessions, [incoming(f"live_{n}", provider="test") for n in range(20)]
            )
            took_s = time.monotonic() - started
        finally:
            frozen.rollback()
            frozen.close()
    finally:
        runtime.dispose()
    assert outcomes == [Outcome.PROCESSED] * 20
    # Alone it takes well under a second; a lock wait is ROW_LOCK_WAIT_S (3 s) at least.
    assert took_s < 2, took_s

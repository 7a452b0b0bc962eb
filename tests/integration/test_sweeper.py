"""The stuck-work sweep: ``received`` rows left alone past the threshold are requeued on
their own queue, once per threshold, in bounded batches; nothing else is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Call
from models.base import utcnow
from models.contract import QUEUES, EventMessage, Queue
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from tests.databases import copy_sqlite
from tests.helpers import command_env, hookfleet_here, queued, retell_call_ended
from tests.processes import ROOT, request, running_fleet, worker_on
from tests.servers import wait_until
from workers.celery_app import celery_config
from workers.recovery.sweeper import sweep

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
THRESHOLD = timedelta(minutes=30)


class Publisher:
    """Stands in for the broker: keeps every batch handed to it."""

    def __init__(self) -> None:
        self.batches: list[list[EventMessage]] = []

    def __call__(self, batch: list[EventMessage]) -> None:
        self.batches.append(batch)

    @property
    def event_ids(self) -> list[str]:
        return [event.event_id for batch in self.batches for event in batch]


def add(
    sessions: sessionmaker[Session],
    event_id: str,
    status: EventStatus = EventStatus.RECEIVED,
    *,
    age: timedelta = timedelta(hours=2),
    touched: timedelta | None = None,
    provider: str = "retell",
    queue: str = Queue.HIGH,
    now: datetime = NOW,
    payload: str | None = None,
) -> None:
    """A row recorded ``age`` before ``now`` and last changed ``touched`` before it."""
    with sessions() as session:
        session.add(
            WebhookEvent(
                provider=provider,
                event_id=event_id,
                event_type="call_ended",
                queue=queue,
                correlation_id=f"corr-{event_id}",
                status=status,
                headers={"user-agent": "retell"},
                payload=payload
                or json.dumps({"event": "call_ended", "call": {"call_id": event_id}}),
                received_at=now - age,
                created_at=now - age,
                updated_at=now - (age if touched is None else touched),
            )
        )
        session.commit()


def updated_at(sessions: sessionmaker[Session]) -> dict[str, datetime]:
    with sessions() as session:
        rows = session.execute(select(WebhookEvent.event_id, WebhookEvent.updated_at)).all()
    return {event_id: when for event_id, when in rows}


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    add(sessions, "lost_high")
    add(sessions, "lost_no_queue", provider="stripe", queue="", age=timedelta(hours=1))
    add(sessions, "recent", age=timedelta(minutes=5))
    add(sessions, "requeued_lately", age=timedelta(hours=3), touched=timedelta(minutes=5))
    add(sessions, "done", EventStatus.PROCESSED)
    add(sessions, "failed", EventStatus.FAILED)
    add(sessions, "dead", EventStatus.DEAD)
    return sessions


def test_old_received_rows_are_requeued_on_their_own_queue_and_nothing_else(
    seeded: sessionmaker[Session],
) -> None:
    before = updated_at(seeded)
    publish = Publisher()

    report = sweep(seeded, publish, THRESHOLD, limit=None, now=NOW)

    [batch] = publish.batches
    assert [event.event_id for event in batch] == ["lost_high", "lost_no_queue"]
    # Exactly what the receiver queued (a redelivery, not a replay: no "replay" key).
    assert batch[0].to_kwargs() == {
        "provider": "retell",
        "event_id": "lost_high",
        "event_type": "call_ended",
        "queue": Queue.HIGH,
        "correlation_id": "corr-lost_high",
        "received_at": (NOW - timedelta(hours=2)).isoformat(),
        "headers": {"user-agent": "retell"},
        "payload": json.dumps({"event": "call_ended", "call": {"call_id": "lost_high"}}),
    }
    assert batch[1].queue == Queue.DEFAULT  # the row had none
    assert (report.selected, report.requeued) == (2, 2)
    assert report.by_provider == {"retell": 1, "stripe": 1}
    # Stuck counts every unfinished row past the threshold, requeued lately or not.
    assert report.stuck == 3 and report.oldest_age == timedelta(hours=3)
    after = updated_at(seeded)
    assert after["lost_high"] == after["lost_no_queue"] == NOW
    assert {k: v for k, v in after.items() if not k.startswith("lost")} == {
        k: v for k, v in before.items() if not k.startswith("lost")
    }


def test_a_second_sweep_requeues_nothing_until_the_threshold_passes_again(
    seeded: sessionmaker[Session],
) -> None:
    sweep(seeded, Publisher(), THRESHOLD, limit=None, now=NOW)
    again, later = Publisher(), Publisher()

    second = sweep(seeded, again, THRESHOLD, limit=None, now=NOW + timedelta(minutes=1))
    third = sweep(seeded, later, THRESHOLD, limit=None, now=NOW + timedelta(minutes=31))

    assert (again.batches, second.selected, second.requeued) == ([], 0, 0)
    assert second.stuck == 3  # still unfinished: no worker ran here
    # Half an hour on, the requeued rows are due again (and the others have aged).
    assert later.event_ids == ["lost_high", "lost_no_queue", "recent", "requeued_lately"]
    assert third.requeued == 4


def test_a_dry_run_counts_and_neither_publishes_nor_touches(
    seeded: sessionmaker[Session],
) -> None:
    before = updated_at(seeded)

    report = sweep(seeded, None, THRESHOLD, limit=None, now=NOW)

    assert report.dry_run and (report.selected, report.requeued) == (2, 0)
    assert report.by_provider == {"retell": 1, "stripe": 1}
    assert updated_at(seeded) == before


def test_the_limit_is_honoured_in_batches_of_at_most_batch_size(
    sessions: sessionmaker[Session],
) -> None:
    for n in range(7):
        add(sessions, f"lost_{n}")
    publish = Publisher()

    report = sweep(sessions, publish, THRESHOLD, limit=5, batch_size=2, now=NOW)
    rest = sweep(sessions, publish, THRESHOLD, limit=5, batch_size=2, now=NOW)

    assert [len(batch) for batch in publish.batches] == [2, 2, 1, 2]
    assert (report.stuck, report.requeued, rest.requeued) == (7, 5, 2)
    assert publish.event_ids == [f"lost_{n}" for n in range(7)]  # oldest id first, once


def test_beat_sweeps_every_minute() -> None:
    # The end-to-end test below sends this name to a real worker, which must know it.
    schedule = celery_config(Settings())["beat_schedule"]

    assert {"task": "hookfleet.sweep_stuck", "schedule": 60.0} in schedule.values()


@pytest.fixture
def sqlite_sessions(
    tmp_path: Path, sqlite_template: Path
) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """One backend is enough for the commands; the selection is tested on both above."""
    url = copy_sqlite(sqlite_template, tmp_path / "db")
    engine = make_engine(Settings(database_url=url))
    yield url, make_sessionmaker(engine)
    engine.dispose()


def hookfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "hookfleet"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_sweep_command_counts_requeues_up_to_a_limit_and_refuses_bad_ages(
    sqlite_sessions: tuple[str, sessionmaker[Session]], redis_url: str, tmp_path: Path
) -> None:
    url, sessions = sqlite_sessions
    now = utcnow()
    add(sessions, "lost_1", now=now)
    add(sessions, "lost_2", provider="stripe", queue="", age=timedelta(hours=1), now=now)
    add(sessions, "recent", age=timedelta(minutes=5), now=now)
    env = command_env(url, redis_url, tmp_path)

    # What publishes runs as the console script, in a process of its own (the Celery app
    # is configured once per process); the dry runs and the refusal publish nothing and
    # run the same command lines in this process (tests.helpers.hookfleet_here).
    dry = hookfleet_here(["sweep", "--dry-run"], None, env)
    limited = hookfleet(env, "sweep", "--limit", "1")
    bad = hookfleet_here(["sweep", "--older-than", "soon"], None, env)
    too_soon = hookfleet_here(["sweep", "--older-than", "2m", "--dry-run"], None, env)

    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run: 2 stuck event(s) would be requeued"), dry.stdout
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.startswith("requeued 1 stuck event(s) (retell: 1)"), limited.stdout
    assert "limit reached" in limited.stdout
    assert bad.returncode == 2 and "not an age like 30d" in bad.stderr
    assert too_soon.returncode == 0, too_soon.stderr
    assert "HOOKFLEET_TASK_TIME_LIMIT_S + HOOKFLEET_LEASE_S" in too_soon.stderr
    assert too_soon.stdout.startswith("dry run: 2 stuck event(s) would be requeued")


@pytest.mark.slow
def test_sweep_and_replay_publish_each_event_on_the_queue_it_names(
    sqlite_sessions: tuple[str, sessionmaker[Session]],
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    url, sessions = sqlite_sessions
    now = utcnow()
    add(sessions, "lost_high", now=now)
    add(sessions, "lost_no_queue", provider="stripe", queue="", now=now)
    add(sessions, "given_up", EventStatus.DEAD, queue=Queue.HIGH, now=now)
    env = command_env(url, redis_url, tmp_path)

    swept = hookfleet(env, "sweep")
    replayed = hookfleet(env, "replay", "--all-dead")

    assert swept.returncode == 0 and replayed.returncode == 0, swept.stderr + replayed.stderr
    on = {
        q: [EventMessage.from_kwargs(m["decoded_body"][1]) for m in queued(redis_client, q)]
        for q in QUEUES
    }
    assert [(e.event_id, e.queue, e.replay) for e in on[Queue.HIGH]] == [
        ("lost_high", Queue.HIGH, False)
    ]
    assert [(e.event_id, e.replay) for e in on[Queue.DEFAULT]] == [("lost_no_queue", False)]
    assert [(e.event_id, e.replay) for e in on[Queue.LOW]] == [("given_up", True)]


@pytest.mark.e2e
def test_a_lost_message_is_requeued_by_command_and_by_beat_and_takes_effect_once(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    engine = make_engine(Settings(database_url=mariadb_url))
    sessions = make_sessionmaker(engine)

    def lose(call_id: str) -> None:
        """What a lost message leaves: the row a worker recorded, two hours ago."""
        event_id = f"{call_id}:call_ended"
        add(sessions, event_id, now=utcnow(), payload=retell_call_ended(call_id))

    def finished(call_id: str) -> bool:
        with sessions() as session:
            status = session.scalar(
                select(WebhookEvent.status).where(WebhookEvent.event_id == f"{call_id}:call_ended")
            )
        return status is EventStatus.PROCESSED

    def calls(call_id: str) -> list[str]:
        with sessions() as session:
            return list(session.scalars(select(Call.status).where(Call.call_id == call_id)))

    try:
        with running_fleet(tmp_path, redis_url, mariadb_url, names=("web",)) as fleet:
            # One worker serves both queues the test uses: the retell events'
            # (hookfleet.high) and beat's task's (hookfleet.default).
            fleet.start("worker_default", worker_on(Queue.HIGH, Queue.DEFAULT))
            lose("call_lost_1")
            first = hookfleet(fleet.env, "sweep")
            wait_until(lambda: finished("call_lost_1"), 60, "the requeued event", interval=0.3)
            second = hookfleet(fleet.env, "sweep")

            # Beat's task, sent as beat sends it, run by the real default worker.
            lose("call_lost_2")
            beat = ["celery", "-A", "workers.celery_app", "call", "hookfleet.sweep_stuck"]
            sent = subprocess.run(
                [*beat, "--queue", Queue.DEFAULT],
                env=fleet.env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: finished("call_lost_2"), 60, "the event beat requeued", interval=0.3)

            def exported() -> bool:
                samples = scrape(fleet.ops_url)
                requeued = samples.get(("hookfleet_events_requeued_total", "retell"))
                return requeued == 1 and samples.get(("hookfleet_events_stuck", "")) == 1

            wait_until(exported, 30, "the sweep's metrics on the receiver", interval=0.3)
            sweep_log = fleet.log("worker_default")
        rows = (calls("call_lost_1"), calls("call_lost_2"))
    finally:
        engine.dispose()

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("requeued 1 stuck event(s) (retell: 1)"), first.stdout
    assert second.returncode == 0, second.stderr
    assert second.stdout == "requeued 0 stuck event(s) (none) on their queues.\n"
    assert rows == (["ended"], ["ended"])  # one call row each
    line = next(x for x in sweep_log.splitlines() if "requeued stuck events" in x)
    assert json.loads(line)["by_provider"] == {"retell": 1}


def scrape(base_url: str) -> dict[tuple[str, str], float]:
    """``/metrics`` as {(sample name, provider label or ""): value}."""
    status, _, body = request(base_url, "GET", "/metrics")
    assert status == 200
    return {
        (sample.name, sample.labels.get("provider", "")): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_a_batch_the_workers_lock_while_it_is_marked_is_still_requeued_and_the_sweep_goes_on(
    database_url: str,
) -> None:
    """A worker applying the batch just published holds its rows' locks; the sweep's
    mark then meets a lock wait (MariaDB: a deadlock, too) and is skipped: the sweep
    ends normally, and the row, unmarked, is published again at the next sweep (applied
    once all the same). The sweep command failed here with 'cannot reach the database'."""
    settings = Settings(database_url=database_url)
    sessions = make_sessionmaker(make_engine(settings, lock_wait_s=1))
    add(sessions, "lost_locked")
    before = updated_at(sessions)
    worker = make_engine(settings)
    held: list[Any] = []

    def publish_while_a_worker_applies(batch: list[EventMessage]) -> None:
        connection = worker.connect()
        connection.execute(
            update(WebhookEvent)
            .where(WebhookEvent.event_id == "lost_locked")
            .values(attempts=WebhookEvent.attempts + 1)
        )
        held.append(connection)  # its transaction stays open: the row stays locked

    try:
        report = sweep(sessions, publish_while_a_worker_applies, THRESHOLD, limit=None, now=NOW)
    finally:
        for connection in held:
            connection.rollback()
            connection.close()
        worker.dispose()

    assert report.requeued == 1
    assert updated_at(sessions) == before
    again = Publisher()
    sweep(sessions, again, THRESHOLD, limit=None, now=NOW + timedelta(minutes=1))
    assert again.event_ids == ["lost_locked"]

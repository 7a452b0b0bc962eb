"""``hookfleet prune``: old processed rows go, in batches; dead letters and rows in
flight stay unless asked."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from tests.helpers import hookfleet_here
from tests.servers import clean_env
from workers.cli.params import parse_age
from workers.recovery.retention import prune_events

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def seed(database_url: str, rows: list[tuple[str, EventStatus, int]]) -> None:
    """(event_id, status, age in days)."""
    engine = make_engine(Settings(database_url=database_url))
    with make_sessionmaker(engine)() as session:
        for event_id, status, days in rows:
            created = NOW - timedelta(days=days)
            session.add(
                WebhookEvent(
                    provider="standard",
                    event_id=event_id,
                    status=status,
                    payload="{}",
                    received_at=created,
                    created_at=created,
                )
            )
        session.commit()
    engine.dispose()


def remaining(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        ids = sorted(connection.scalars(select(WebhookEvent.event_id)))
    engine.dispose()
    return ids


ROWS = [
    ("old_done_1", EventStatus.PROCESSED, 40),
    ("old_done_2", EventStatus.PROCESSED, 31),
    ("old_done_3", EventStatus.PROCESSED, 90),
    ("new_done", EventStatus.PROCESSED, 29),
    ("old_failed", EventStatus.FAILED, 60),
    ("old_dead", EventStatus.DEAD, 60),
    ("old_in_flight", EventStatus.RECEIVED, 60),
]


def test_prune_deletes_only_old_processed_rows_in_batches(database_url: str) -> None:
    seed(database_url, ROWS)
    sessions = make_sessionmaker(make_engine(Settings(database_url=database_url)))

    dry = prune_events(sessions, timedelta(days=30), dry_run=True, now=NOW)
    assert (dry.deleted, remaining(database_url)) == (3, sorted(r[0] for r in ROWS))

    result = prune_events(sessions, timedelta(days=30), batch_size=2, now=NOW)

    assert result.deleted == 3
    assert remaining(database_url) == ["new_done", "old_dead", "old_failed", "old_in_flight"]


def test_prune_include_dead_also_deletes_dead_letters_but_never_rows_in_flight(
    database_url: str,
) -> None:
    seed(database_url, ROWS)
    sessions = make_sessionmaker(make_engine(Settings(database_url=database_url)))

    result = prune_events(sessions, timedelta(days=30), include_dead=True, now=NOW)

    assert result.deleted == 5
    assert remaining(database_url) == ["new_done", "old_in_flight"]


@pytest.mark.slow
def test_prune_command_takes_an_age_and_says_what_it_did(database_url: str, backend: str) -> None:
    seed(database_url, [("ancient", EventStatus.PROCESSED, 400), ("dead", EventStatus.DEAD, 400)])
    env = clean_env(HOOKFLEET_DATABASE_URL=database_url)

    def prune(*args: str, process: bool = False) -> subprocess.CompletedProcess[str]:
        """The console script as a process (the prune that deletes, on SQLite); the same
        command line in this process otherwise (tests.helpers.hookfleet_here)."""
        if not (process and backend == "sqlite"):
            return hookfleet_here(["prune", *args], None, env)
        hookfleet = str(Path(sys.executable).parent / "hookfleet")
        return subprocess.run([hookfleet, "prune", *args], env=env, capture_output=True, text=True)

    dry = prune("--older-than", "30d", "--dry-run")
    done = prune("--older-than", "12h", process=True)
    bad = prune("--older-than", "soon")

    assert dry.returncode == 0 and "would delete 1 webhook_events (processed)" in dry.stdout
    assert done.returncode == 0 and "deleted 1 webhook_events" in done.stdout, done.stderr
    assert remaining(database_url) == ["dead"]
    assert bad.returncode == 2 and "not an age like 30d" in bad.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("2w", timedelta(days=14))],
)
def test_ages_read_like_an_operator_writes_them(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


def test_an_age_without_a_unit_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_age("30")

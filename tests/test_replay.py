"""``hookfleet replay``: a failed event goes back on a queue with everything it had, and
the worker then finishes it exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis
from sqlalchemy import select

from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from tests.helpers import queued
from tests.servers import clean_env
from tests.test_events import incoming
from workers.events import IncomingEvent, Outcome, mark_failed, record_event


def hookfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = str(Path(sys.executable).parent / "hookfleet")
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True)


def test_replay_requeues_failed_events_which_then_complete_once(
    database_url: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(make_engine(Settings(database_url=database_url)))
    failed = incoming("evt_failed")
    mark_failed(sessions, failed, "ValueError: the handler choked")
    record_event(sessions, incoming("evt_fine"))
    env = clean_env(
        HOOKFLEET_DATABASE_URL=database_url,
        HOOKFLEET_REDIS_URL=redis_url,
        HOOKFLEET_VAR_DIR=str(tmp_path),
    )

    dry = hookfleet("replay", "--dry-run", env=env)
    assert dry.returncode == 0 and "would replay: 1 failed" in dry.stdout, dry.stderr
    assert redis_client.llen("hookfleet.low") == 0

    done = hookfleet("replay", env=env)

    assert done.returncode == 0 and "queued on hookfleet.low: 1 failed" in done.stdout, done.stderr
    (message,) = queued(redis_client, "hookfleet.low")
    assert message["headers"]["task"] == "hookfleet.process_event"
    assert message["headers"]["hookfleet_correlation_id"] == "corr-1"
    assert "payload" not in message["headers"]["kwargsrepr"]  # no personal data in logs
    replayed = IncomingEvent.from_task(message["decoded_body"][1])
    assert replayed == failed
    assert record_event(sessions, replayed) == Outcome.PROCESSED
    assert record_event(sessions, replayed) == Outcome.ALREADY_DONE
    with sessions() as session:
        statuses = dict(session.execute(select(WebhookEvent.event_id, WebhookEvent.status)).all())
    assert statuses == {"evt_failed": EventStatus.PROCESSED, "evt_fine": EventStatus.PROCESSED}

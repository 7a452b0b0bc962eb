"""A replay of 30,000 events, stopped with Ctrl-C, resumed, killed with SIGKILL,
resumed again: every selected event lands on the real Redis queue exactly once.

What the size must give: both stops land mid-run, with many chunks pushed before each
(SIGINT after ~6 chunks of 1,000, SIGKILL after ~14 more of 700) and enough left
after each that a replay on a quiet machine cannot finish before the signal reaches
it (24,000 events after SIGINT, 13,500 after SIGKILL). The cut between a chunk's push and its
cursor write is forced deterministically in tests/integration/test_replay_runs.py;
memory over a million events is measured by ``python -m tests.bench.replay_memory``.
It was 100,000 events (~40 CPU-s a backend, most of it seeding, replaying and reading
back rows whose number proves nothing more)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy import insert

from models.contract import Queue
from models.engine import make_engine
from models.events import WebhookEvent
from models.settings import Settings
from tests.helpers import command_env

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
DEAD = 30_000
HALF = DEAD // 2  # per provider
T0 = datetime(2026, 11, 20, tzinfo=UTC)


def seed(database_url: str) -> None:
    """``DEAD`` dead events, half Cal.com and half Stripe, among ``DEAD + DEAD // 20``
    rows of which every 21st (``DEAD // 20``) is processed, which a replay of dead
    letters leaves alone; bulk inserts of 5,000 rows."""
    engine = make_engine(Settings(database_url=database_url))
    rows = []
    for i in range(DEAD + DEAD // 20):
        provider, kind = ("stripe", "invoice.paid") if i % 2 else ("calcom", "BOOKING_CREATED")
        rows.append(
            {
                "provider": provider,
                "event_id": f"evt_{i}",
                "event_type": kind,
                "queue": Queue.DEFAULT,
                "correlation_id": f"corr-{i}",
                "status": "processed" if i % 21 == 20 else "dead",
                "attempts": 5,
                "headers": {},
                "payload": json.dumps({"data": {"object": {"n": i}}}),
                "received_at": T0 + timedelta(milliseconds=i),
                "created_at": T0 + timedelta(milliseconds=i),
                "updated_at": T0 + timedelta(milliseconds=i),
            }
        )
    with engine.begin() as db:
        for start in range(0, len(rows), 5_000):
            db.execute(insert(WebhookEvent), rows[start : start + 5_000])
    engine.dispose()


def replay(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [HOOKFLEET, "replay", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_when_queued(
    process: subprocess.Popen[str], client: redis.Redis, at_least: int, sig: int
) -> tuple[int, str]:
    deadline = time.monotonic() + 60
    while client.llen(Queue.LOW) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the replay made no progress"
        time.sleep(0.01)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    return process.returncode, out + err


def enqueued_event_ids(client: redis.Redis) -> Counter[str]:
    seen: Counter[str] = Counter()
    length = int(client.llen(Queue.LOW))
    for start in range(0, length, 10_000):
        for raw in client.lrange(Queue.LOW, start, start + 9_999):
            kwargs = json.loads(base64.b64decode(json.loads(raw)["body"]))[1]
            assert kwargs["replay"] is True
            seen[kwargs["event_id"]] += 1
    return seen


def test_a_replay_interrupted_killed_and_resumed_enqueues_each_event_once(
    database_url: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    seed(database_url)
    env = command_env(database_url, redis_url, tmp_path)
    began = time.monotonic()

    first = replay(env, "--all-dead", "--rate", "0", "--batch-size", "1000")
    code, said = stop_when_queued(first, redis_client, DEAD // 5, signal.SIGINT)
    assert code == 128 + signal.SIGINT, said
    assert f"{DEAD} event(s) match (calcom: {HALF}, stripe: {HALF})." in said
    assert "interrupted: replay run 1 replayed" in said
    assert "resume with: hookfleet replay --resume 1" in said

    second = replay(env, "--resume", "1", "--batch-size", "700")
    code, said = stop_when_queued(second, redis_client, DEAD * 55 // 100, signal.SIGKILL)
    assert code == -signal.SIGKILL, said

    third = replay(env, "--resume", "1")
    out, err = third.communicate(timeout=120)
    took = time.monotonic() - began

    assert third.returncode == 0, out + err
    assert f"replayed {DEAD} event(s) on hookfleet.low (calcom: {HALF}, stripe: {HALF})." in out
    assert "replay run 1 finished." in out
    seen = enqueued_event_ids(redis_client)
    assert len(seen) == DEAD and set(seen.values()) == {1}
    assert not any(int(e.split("_")[1]) % 21 == 20 for e in seen)  # processed ones stay
    runs = subprocess.run([HOOKFLEET, "replay", "runs"], env=env, capture_output=True, text=True)
    assert "finished" in runs.stdout and f"{DEAD}/{DEAD}" in runs.stdout
    print(f"{DEAD} events replayed, interrupted, killed and resumed: {took:.1f} s")

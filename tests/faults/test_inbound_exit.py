"""Retell inbound calls answered while Redis is down, then the receiver stopped (SIGTERM
to gunicorn's master, what systemd, Kubernetes and ``hookfleet up`` send): every call
is recorded once, whether Redis comes back within the graceful window or only after
the receiver exited (ingest/late_records.py). Real gunicorn, ``celery worker``,
``redis-server`` with AOF killed with ``kill -9`` and restarted, MariaDB and SQLite.

The scenario of an outside check (atk18b, finding 2): before, 0 of 20 calls were
recorded, 18 with an ERROR line and 2 with none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from ingest.providers import retell
from models.events import EventStatus, WebhookEvent
from tests.processes import ROOT, Processes, request, running_fleet
from tests.servers import RedisServer, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SECRET = "key_inbound_exit"
CALLS = 12
SETTINGS = {
    "HOOKFLEET_RETELL_SECRETS": SECRET,
    "HOOKFLEET_REDIS_TIMEOUT_S": "1",
    "HOOKFLEET_INBOUND_BUDGET_MS": "2000",  # a loaded test box; the answer is not checked
    "HOOKFLEET_TASK_TIME_LIMIT_S": "10",
    "HOOKFLEET_WORKER_SOFT_SHUTDOWN_S": "3",
}


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def answer_calls(fleet: Processes, tag: str) -> list[str]:
    """``CALLS`` inbound calls at once, each from a caller of its own; all answered 200."""
    callers = [f"+4915{tag}{i:05d}" for i in range(CALLS)]

    def ring(caller: str) -> int:
        body = json.dumps(
            {
                "event": "call_inbound",
                "call_inbound": {"from_number": caller, "to_number": "+4930901820"},
            }
        ).encode()
        signature = retell.sign(SECRET, body, int(time.time() * 1000))
        return request(
            fleet.base_url, "POST", "/webhooks/retell", body, {"x-retell-signature": signature}
        )[0]

    with ThreadPoolExecutor(CALLS) as pool:
        assert list(pool.map(ring, callers)) == [200] * CALLS
    return callers


def recorded(database_url: str) -> dict[str, tuple[int, set[EventStatus]]]:
    """Per caller: how many ``call_inbound`` rows name it, and their statuses."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(WebhookEvent.payload, WebhookEvent.status).where(
                    WebhookEvent.event_type == "call_inbound"
                )
            ).all()
    finally:
        engine.dispose()
    found: dict[str, tuple[int, set[EventStatus]]] = {}
    for payload, status in rows:
        caller = json.loads(payload)["call_inbound"]["from_number"]
        count, statuses = found.get(caller, (0, set()))
        found[caller] = (count + 1, statuses | {EventStatus(status)})
    return found


def all_processed(database_url: str, callers: list[str]) -> bool:
    found = recorded(database_url)
    return all(found.get(c, (0, set()))[1] == {EventStatus.PROCESSED} for c in callers)


def log_lines(fleet: Processes, name: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in fleet.log(name).splitlines()
        if line.startswith("{") and line.endswith("}")
    ]


def ids_logged(lines: list[dict[str, Any]], message: str) -> Counter[str]:
    return Counter(line.get("event_id", "") for line in lines if line["message"] == message)


def kill_redis(server: RedisServer) -> float:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    return time.monotonic()


def stop_receiver(fleet: Processes) -> tuple[Any, float]:
    """SIGTERM to gunicorn's master only (the Procfile's ``exec``: the process itself)."""
    master = fleet.running["web"]
    os.kill(master.pid, signal.SIGTERM)
    return master, time.monotonic()


def at(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def assert_each_recorded_once(fleet: Processes, database_url: str, callers: list[str]) -> None:
    wait_until(lambda: all_processed(database_url, callers), 90, "every call processed", 0.5)
    found = recorded(database_url)
    assert {caller: found[caller][0] for caller in callers} == dict.fromkeys(callers, 1)
    processed = ids_logged(log_lines(fleet, "worker_high"), "processed")
    assert [event_id for event_id, n in processed.items() if n > 1] == []


def sweep_stuck(fleet: Processes) -> subprocess.CompletedProcess[str]:
    """``hookfleet sweep --older-than 1s`` (a console-script process: it publishes)."""
    return subprocess.run(
        ["hookfleet", "sweep", "--older-than", "1s"],
        env=fleet.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_calls_answered_while_redis_is_down_are_recorded_once_when_it_returns_within_the_graceful_window(  # noqa: E501
    tmp_path: Path, database_url: str, redis_aof: RedisServer
) -> None:
    with running_fleet(
        tmp_path, redis_aof.url, database_url, names=("web", "worker_high"), **SETTINGS
    ) as fleet:
        fleet.wait_for_worker("worker_high")
        killed = kill_redis(redis_aof)
        callers = answer_calls(fleet, "10")
        at(killed + 1.5)
        master, stopped = stop_receiver(fleet)
        at(killed + 4)
        redis_aof.start()
        back = time.monotonic()
        master.wait(timeout=30)
        exited = time.monotonic()

        assert_each_recorded_once(fleet, database_url, callers)
        web = log_lines(fleet, "web")
        refused = ids_logged(web, "could not record inline event")
        assert len(refused) == CALLS
        # The workers waited for Redis within the graceful window (20 s), and queued
        # every record themselves: none was left to the sweep, none lost.
        assert back < exited < stopped + 20
        assert ids_logged(web, "recorded inline event late").keys() == refused.keys()
        assert ids_logged(web, "inline event left to the stuck-work sweep") == Counter()
        assert ids_logged(web, "inline event not recorded") == Counter()


def test_calls_answered_while_redis_is_down_are_recorded_once_by_the_sweep_when_it_returns_after_the_receiver_exited(  # noqa: E501
    tmp_path: Path, database_url: str, redis_aof: RedisServer
) -> None:
    graceful_s = 6
    with running_fleet(
        tmp_path,
        redis_aof.url,
        database_url,
        names=("web", "worker_high"),
        GUNICORN_CMD_ARGS=f"--graceful-timeout {graceful_s}",
        **SETTINGS,
    ) as fleet:
        fleet.wait_for_worker("worker_high")
        killed = kill_redis(redis_aof)
        callers = answer_calls(fleet, "20")
        at(killed + 1.5)
        master, stopped = stop_receiver(fleet)
        master.wait(timeout=30)
        exited = time.monotonic()

        # The window was used, then left in time (no SIGKILL from the master).
        assert stopped + graceful_s - 3.5 < exited < stopped + graceful_s + 2
        web = log_lines(fleet, "web")
        refused = ids_logged(web, "could not record inline event")
        assert len(refused) == CALLS
        assert ids_logged(web, "inline event left to the stuck-work sweep").keys() == (
            refused.keys()
        )
        assert ids_logged(web, "inline event not recorded") == Counter()
        found = recorded(database_url)
        assert {c: found.get(c) for c in callers} == dict.fromkeys(
            callers, (1, {EventStatus.RECEIVED})
        )

        redis_aof.start()
        sweep = sweep_stuck(fleet)
        assert sweep.returncode == 0, sweep.stderr
        assert f"requeued {CALLS} stuck event(s)" in sweep.stdout

        assert_each_recorded_once(fleet, database_url, callers)


def test_calls_a_receiver_had_written_to_the_database_survive_its_kill_9(
    tmp_path: Path, database_url: str, redis_aof: RedisServer
) -> None:
    """The records are in the database while the receiver runs: ``kill -9`` of the whole
    receiver (the OOM killer, a node lost) after that takes none of them."""
    with running_fleet(
        tmp_path, redis_aof.url, database_url, names=("web", "worker_high"), **SETTINGS
    ) as fleet:
        fleet.wait_for_worker("worker_high")
        kill_redis(redis_aof)
        callers = answer_calls(fleet, "30")
        wait_until(
            lambda: (
                {c: n for c, (n, _) in recorded(database_url).items()} == dict.fromkeys(callers, 1)
            ),
            30,
            "every call written to the database",
            0.2,
        )
        written = time.monotonic()
        master = fleet.running["web"]
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(timeout=10)
        redis_aof.start()
        at(written + 1.5)  # the sweep below takes rows over 1 s old
        sweep = sweep_stuck(fleet)
        assert sweep.returncode == 0, sweep.stderr

        assert_each_recorded_once(fleet, database_url, callers)

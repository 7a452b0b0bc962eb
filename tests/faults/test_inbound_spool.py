"""Calls answered while neither Redis nor the database can take their records survive
the receiver's end, however it ends: each record is a file in this host's spool before
its answer (ingest/spool.py), and the next receiver started here queues it once Redis
is back. An outsider's SIGTERM shortly after boot (the database 1 s away, its first
connection 14 s; Redis frozen) lost 14-30 answered calls in 4 of 5 runs.

Real parts: gunicorn (the Procfile's ``web``), redis-server started only after the
calls; the database is an address nothing listens on, at both starts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from ingest.shelved_events import event_of
from models.contract import QUEUES
from tests.e2e.test_frozen_redis_inbound import call
from tests.integration.test_inbound import API_KEY as RETELL_KEY
from tests.processes import ONE_RECEIVER_WORKER, running_fleet
from tests.servers import RedisServer, free_port, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

CALLS = 6


@pytest.mark.parametrize(
    "ending",
    [signal.SIGKILL, signal.SIGQUIT],
    ids=["killed outright", "quick shutdown"],
)
def test_calls_answered_with_redis_and_the_database_away_are_queued_by_the_next_receiver(
    tmp_path: Path, ending: signal.Signals
) -> None:
    redis_server = RedisServer(tmp_path / "redis")  # not started yet: refused
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    env = {**ONE_RECEIVER_WORKER, "HOOKFLEET_RETELL_SECRETS": RETELL_KEY}
    with running_fleet(tmp_path, redis_server.url, nowhere, names=("web",), **env) as web:
        answers = [call(web) for _ in range(CALLS)]
        assert [status for status, _, _ in answers] == [200] * CALLS
        assert max(took for _, _, took in answers) < 3.0  # Retell waits 10 s
        answered = event_ids(web.log("web"), "answered inline")
        assert len(answered) == CALLS
        # On disk before each answer left: what the end below can take is nothing.
        assert spooled(web.logs) == answered
        os.killpg(web.running["web"].pid, ending)
        web.running.pop("web").wait(timeout=30)
        first_log = web.log("web")
        assert "inline event not recorded" not in first_log
        assert spooled(web.logs) == answered

        redis_server.start()
        try:
            web.start("web")
            web.wait_for_web()
            client = redis_server.client()
            wait_until(lambda: queued(client) == answered, 30, "the spooled records queued")
            wait_until(lambda: spooled(web.logs) == set(), 10, "the spool emptied")
            log = web.log("web")
        finally:
            redis_server.stop()
    assert "former receiver left in the spool" in log
    assert "Traceback" not in first_log + log


def event_ids(log: str, message: str) -> set[str]:
    return {
        line["event_id"]
        for line in map(json.loads, filter(lambda raw: raw.startswith("{"), log.splitlines()))
        if line.get("message") == message and "event_id" in line
    }


def spooled(var_dir: Path) -> set[str]:
    """Event ids of the records in the spool under ``var_dir`` (ingest/spool.py)."""
    return {
        json.loads(path.read_text())["event_id"] for path in (var_dir / "spool").glob("*/*/*.json")
    }


def queued(client: object) -> set[str]:
    return {
        event_of(raw.decode()).event_id
        for queue in QUEUES
        for raw in client.lrange(queue, 0, -1)  # type: ignore[attr-defined]
    }


def test_what_workers_replaced_by_a_reload_leave_in_the_spool_is_queued_by_their_successors(
    tmp_path: Path,
) -> None:
    """A reload (SIGHUP: systemd's ExecReload) starts the new workers before the old
    ones leave, so no boot comes after the old ones' exit: the new workers' periodic look
    (``ADOPT_EVERY_S``) takes what they left."""
    redis_server = RedisServer(tmp_path / "redis")
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    env = {
        **ONE_RECEIVER_WORKER,
        "HOOKFLEET_RETELL_SECRETS": RETELL_KEY,
        "GUNICORN_CMD_ARGS": "--graceful-timeout 6",  # the old workers' exit: ~3 s
    }
    with running_fleet(tmp_path, redis_server.url, nowhere, names=("web",), **env) as web:
        answers = [call(web) for _ in range(CALLS)]
        assert [status for status, _, _ in answers] == [200] * CALLS
        answered = event_ids(web.log("web"), "answered inline")
        # bash -c execs its one command: the Procfile's process is gunicorn's master.
        os.kill(web.running["web"].pid, signal.SIGHUP)
        wait_until(
            lambda: web.log("web").count("inline event left in the spool") >= CALLS,
            30,
            "the old worker's exit",
        )
        assert spooled(web.logs) == answered
        redis_server.start()
        try:
            client = redis_server.client()
            wait_until(lambda: queued(client) == answered, 45, "the new worker's look")
            wait_until(lambda: spooled(web.logs) == set(), 10, "the spool emptied")
        finally:
            redis_server.stop()
    log = web.log("web")
    assert "inline event not recorded" not in log
    assert "inline event answered before it was recorded" not in log

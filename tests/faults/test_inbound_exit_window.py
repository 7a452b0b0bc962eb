"""An orderly exit (SIGTERM to gunicorn's master) while Redis is frozen and the database
is a second away: every answered inbound call is on record (queued, a row the
stuck-work sweep queues, or a file in the spool the next start queues) or named at
ERROR ``inline event not recorded`` (``inline event record unconfirmed`` when its write
was in flight at the end) before the window ends, the workers leave within the window
(never the master's SIGKILL), and a call arriving after SIGTERM is refused or answered
at once, never left queued (ingest/late_records.py's exit watchdog; the workers close
their listeners). An
outsider lost up to 160 answered calls so, unnamed, a worker killed at the window.
Real parts: redis-server SIGSTOPped, MariaDB behind tests/latency_proxy.py, gunicorn."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_frozen_redis_inbound import call
from tests.e2e.test_slow_backends_inbound import FLEET, delayed, kept_event_ids
from tests.faults.test_inbound_spool import spooled
from tests.integration.test_inbound import seed
from tests.processes import Processes, running_fleet
from tests.servers import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

#: The outsider's database: a second per round trip (a connect is several).
DATABASE_DELAY_MS = 1000
CALLS_PER_S = 20
#: Calls before the SIGTERM, and after it (those must be refused or answered at once).
BEFORE_S = 4.0
AFTER_S = 2.0
#: Short, so the row is: the exit must end inside it whatever blocks.
GRACEFUL_S = 8
#: A call after SIGTERM is refused or answered this soon (a loaded test box).
REFUSED_WITHIN_S = 2.0
#: A call already queued at SIGTERM is served: answered within this (Retell waits 10 s).
ANSWERED_WITHIN_S = 6.0

WORKERS = [
    pytest.param("", id="aio"),
    pytest.param("--worker-class ingest.gunicorn_worker.JsonErrorWorker", id="gthread"),
]


def attempt(web: Processes) -> tuple[int, float]:
    """One call: ``(status, seconds)``; status 0 when the connection was refused or
    reset (no answer)."""
    started = time.monotonic()
    try:
        return call(web)[0], time.monotonic() - started
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return 0, time.monotonic() - started


def logged(web: Processes) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for line in web.log("web").splitlines()
        if line.startswith("{") and line.endswith("}")
    ]


@contextmanager
def receiver_a_second_from_its_database(
    tmp_path: Path, redis_server: RedisServer, mariadb_url: str, graceful_s: int, worker: str
) -> Iterator[Processes]:
    """The receiver (``worker``: gunicorn arguments choosing its worker class) on
    ``redis_server`` and the seeded MariaDB behind a proxy adding
    ``DATABASE_DELAY_MS``, with ``--graceful-timeout graceful_s``."""
    seed(mariadb_url)
    with (
        delayed(int(urlsplit(mariadb_url).port or 0), DATABASE_DELAY_MS) as database,
        running_fleet(
            tmp_path,
            redis_server.url,
            database.url_through(mariadb_url),
            names=("web",),
            GUNICORN_CMD_ARGS=f"--graceful-timeout {graceful_s} {worker}",
            **FLEET,
        ) as web,
    ):
        yield web


@pytest.mark.parametrize("gunicorn_args", WORKERS)
def test_an_exit_with_redis_frozen_and_the_database_a_second_away_names_every_call_it_did_not_record(  # noqa: E501
    tmp_path: Path, own_redis: RedisServer, mariadb_url: str, gunicorn_args: str
) -> None:
    with (
        receiver_a_second_from_its_database(
            tmp_path, own_redis, mariadb_url, GRACEFUL_S, gunicorn_args
        ) as web,
        ThreadPoolExecutor(96) as pool,
    ):
        master = web.running["web"]
        before: list[Future[tuple[int, float]]] = []
        after: list[Future[tuple[int, float]]] = []
        started = time.monotonic()
        own_redis.freeze()
        while time.monotonic() - started < BEFORE_S:
            before.append(pool.submit(attempt, web))
            time.sleep(1 / CALLS_PER_S)
        os.kill(master.pid, signal.SIGTERM)
        stopped = time.monotonic()
        while time.monotonic() - stopped < AFTER_S:
            after.append(pool.submit(attempt, web))
            time.sleep(1 / CALLS_PER_S)
        master.wait(timeout=GRACEFUL_S + 30)
        exited_after_s = time.monotonic() - stopped
        own_redis.thaw()
        lines = logged(web)
        log = web.log("web")
        in_spool = spooled(web.logs)
    kept = kept_event_ids(own_redis, mariadb_url) | in_spool

    answered_before = [status for status, _ in (f.result() for f in before)]
    after_outcomes = [f.result() for f in after]
    # In-flight calls finish: every call sent before the SIGTERM was answered; the
    # gthread fallback refuses (503 shutting_down) what its threads take after its drain.
    served = {200} if not gunicorn_args else {200, 503}
    assert set(answered_before) <= served, answered_before
    # After it: refused or answered at once, never queued for no one.
    assert all(status in (0, *served) for status, _ in after_outcomes), after_outcomes
    refused_s = [took for status, took in after_outcomes if status == 0]
    assert max(refused_s, default=0.0) < REFUSED_WITHIN_S, after_outcomes
    # Taken off the accept queue at SIGTERM: answered like any call, far inside 10 s.
    assert max(took for _, took in after_outcomes) < ANSWERED_WITHIN_S, after_outcomes
    answered = answered_before.count(200) + sum(status == 200 for status, _ in after_outcomes)
    # Each worker left on its own within the window (gunicorn's ``Worker exiting``, or
    # the exit watchdog's last line; a gthread worker's interpreter exit may log both),
    # never by the master's SIGKILL at its end.
    left = log.count("Worker exiting") + log.count("receiver exit overran its window")
    assert left >= int(FLEET["WEB_CONCURRENCY"]), [
        line[:160] for line in log.splitlines() if "inline event" not in line
    ][-30:]
    assert exited_after_s < GRACEFUL_S + 3, exited_after_s
    named = {
        str(line.get("event_id"))
        for line in lines
        # Lost, or its write in flight at the end (its row may have landed): both
        # ERROR with the event id, for the operator to look up.
        if line.get("message") in ("inline event not recorded", "inline event record unconfirmed")
    }
    # Every answered call is on record or named; none lost unnamed.
    refused = sum(status == 0 for status, _ in after_outcomes)
    print(f"{answered} answered ({refused} refused after SIGTERM), {len(kept)} kept,")
    print(f"{len(named - kept)} named not kept; exit {exited_after_s:.1f} s")
    assert len(kept | named) == answered, (len(kept), len(named), answered)

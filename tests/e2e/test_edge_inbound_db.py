"""Retell's inbound calls routed with the database far away, on real processes:
gunicorn (2 event-loop workers x 4 threads), redis-server, MariaDB behind a TCP proxy
that delays each of its replies (tests/latency_proxy.py). The lookup is one round trip
on a warm pool (ingest/inbound.py), so a database 150 ms away routes every call within
the 300 ms budget; each worker opens its lookup connections before it accepts
(ingest/gunicorn_conf.py ``post_worker_init``), so the first calls after a start with
the database 50 ms away are routed too. Every call dials a number of its own, so each
one is a database lookup (no cache holds it yet)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.orm import Session

from models.business import Branch, Company
from models.engine import make_engine
from models.settings import Settings
from tests.e2e.test_frozen_redis_inbound import call
from tests.integration.test_inbound import API_KEY as RETELL_KEY
from tests.latency_proxy import LatencyProxy
from tests.processes import Processes, running_fleet
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e

BRANCHES = 60
#: Retell waits 10 s; generous for a loaded machine.
ANSWER_WITHIN_S = 3.0


def number(n: int) -> str:
    return f"+4930123450{n:02d}"


def seed_branches(database_url: str) -> None:
    """One company with :data:`BRANCHES` active branches, branch ``n`` on
    :func:`number` ``(n)`` with the agent ``agent_<n>``."""
    engine = make_engine(Settings(database_url=database_url))
    with Session(engine) as session:
        company = Company(name="Salon Weit")
        session.add_all(
            Branch(
                company=company,
                name=f"Branch {n}",
                phone=number(n),
                retell_agent_id=f"agent_{n}",
                timezone="Europe/Berlin",
            )
            for n in range(BRANCHES)
        )
        session.commit()
    engine.dispose()


def call_to(web: Processes, n: int) -> tuple[str | None, float]:
    """One ``call_inbound`` to branch ``n``'s number: the agent it was routed to (None:
    unrouted) and the seconds the answer took."""
    status, answer, seconds = call(web, number(n))
    assert status == 200, answer
    return json.loads(answer)["call_inbound"].get("override_agent_id"), seconds


@contextmanager
def receiver_with_database_away(
    tmp_path: Path, redis_server: RedisServer, mariadb_url: str, delay_ms: int
) -> Iterator[Processes]:
    seed_branches(mariadb_url)
    proxy = LatencyProxy(int(urlsplit(mariadb_url).port or 0), delay_ms).start()
    try:
        with running_fleet(
            tmp_path,
            redis_server.url,
            proxy.url_through(mariadb_url),
            names=("web",),
            HOOKFLEET_RETELL_SECRETS=RETELL_KEY,
            WEB_CONCURRENCY="2",
            HOOKFLEET_WEB_THREADS="4",
        ) as web:
            yield web
    finally:
        proxy.stop()


def test_calls_are_routed_within_the_budget_with_the_database_150_ms_away(
    tmp_path: Path, own_redis: RedisServer, mariadb_url: str
) -> None:
    with receiver_with_database_away(tmp_path, own_redis, mariadb_url, 150) as web:
        time.sleep(3.0)  # both workers' warm-ups done (3.1 s measured at this distance)
        with ThreadPoolExecutor(16) as pool:
            calls = []
            for n in range(BRANCHES):  # 10 calls a second, each its own number
                calls.append(pool.submit(call_to, web, n))
                time.sleep(0.1)
            answered = [future.result() for future in calls]
        log = web.log("web")

    assert [agent for agent, _ in answered] == [f"agent_{n}" for n in range(BRANCHES)]
    assert max(seconds for _, seconds in answered) < ANSWER_WITHIN_S
    assert "inbound lookup over budget" not in log
    assert "Traceback" not in log


def test_the_first_calls_after_a_start_are_routed_with_the_database_50_ms_away(
    tmp_path: Path, own_redis: RedisServer, mariadb_url: str
) -> None:
    with receiver_with_database_away(tmp_path, own_redis, mariadb_url, 50) as web:
        # At once, the moment the receiver answers /healthz (running_fleet waits for it).
        with ThreadPoolExecutor(5) as pool:
            answered = list(pool.map(lambda n: call_to(web, n), range(5)))
        log = web.log("web")

    assert [agent for agent, _ in answered] == [f"agent_{n}" for n in range(5)]
    assert max(seconds for _, seconds in answered) < ANSWER_WITHIN_S
    assert "inbound lookup warm-up still running" not in log
    assert "Traceback" not in log

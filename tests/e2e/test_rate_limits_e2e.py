"""Rate limits through real gunicorn, a real Celery worker, Redis and MariaDB: a burst
over the rate is answered 429 with Retry-After, and a sender that comes back when told
gets every event processed exactly once; the ringing phone is never limited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from models.events import EventStatus, WebhookEvent
from tests.databases import SharedDatabase
from tests.processes import Processes, request, running_fleet
from tests.servers import RedisServer, wait_until

pytestmark = pytest.mark.e2e

RATE, BURST = 2, 5
EVENTS = [f"evt_{n:02d}" for n in range(15)]


@pytest.fixture(scope="module")
def shared_fleet(
    tmp_path_factory: pytest.TempPathFactory, shared_mariadb: SharedDatabase
) -> Iterator[Processes]:
    """One fleet for both tests (the same limits), on a Redis of its own and the shared
    MariaDB database (emptied for each test by ``mariadb_url``)."""
    tmp = tmp_path_factory.mktemp("rate-limits")
    redis_server = RedisServer(tmp / "redis").start()
    try:
        with running_fleet(
            tmp,
            redis_server.url,
            shared_mariadb.url,
            names=("web", "worker_default"),
            HOOKFLEET_STANDARD_VERIFY="off",
            HOOKFLEET_STANDARD_RATE_LIMIT=str(RATE),
            HOOKFLEET_STANDARD_RATE_BURST=str(BURST),
            HOOKFLEET_RETELL_VERIFY="off",
            HOOKFLEET_RETELL_RATE_LIMIT="0.05",
            HOOKFLEET_RETELL_RATE_BURST="1",
        ) as processes:
            yield processes
    finally:
        redis_server.stop()


@pytest.fixture
def fleet(shared_fleet: Processes, mariadb_url: str) -> Processes:
    """The module's fleet as a fresh one would be, for each test and each rerun: full
    buckets and no claims (every ``hookfleet:*`` key deleted; the broker's own keys,
    the queues' bindings under the running worker, kept), the database emptied."""
    client = redis.Redis.from_url(shared_fleet.env["HOOKFLEET_REDIS_URL"])
    try:
        for key in client.scan_iter(match="hookfleet:*", count=1000):
            client.delete(key)
    finally:
        client.close()
    return shared_fleet


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    yield engine
    engine.dispose()


def post(fleet: Processes, event_id: str) -> tuple[int, dict[str, str], Any]:
    body = {"type": "order.created", "data": {"order": event_id}}
    return request(fleet.base_url, "POST", "/webhooks/standard", body, {"webhook-id": event_id})


def rate_limited_total(fleet: Processes) -> float:
    _, _, text = request(fleet.ops_url, "GET", "/metrics")
    label = 'hookfleet_rate_limited_total{provider="standard"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(label))


def test_a_burst_is_limited_and_a_sender_honouring_retry_after_gets_each_event_once(
    fleet: Processes, engine: Engine
) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        burst = dict(zip(EVENTS, pool.map(lambda e: post(fleet, e), EVENTS), strict=True))
    elapsed_s = time.monotonic() - started

    accepted = [e for e, (status, _, _) in burst.items() if status == 202]
    limited = {e: answer for e, answer in burst.items() if answer[0] == 429}
    assert set(accepted) | set(limited) == set(EVENTS)
    # The bucket's five, and what refilled while the burst was sent (a loaded machine).
    assert BURST <= len(accepted) <= BURST + RATE * elapsed_s + 1
    for _, headers, body in limited.values():
        assert int(headers["retry-after"]) >= 1
        assert body["error"]["code"] == "rate_limited"
    refused = len(limited)
    assert post(fleet, accepted[0])[0] == 200  # a duplicate while limited: still 200

    # The sender comes back as told, one delivery at a time, until each is taken.
    pending = sorted(limited)
    while pending:
        status, headers, _ = post(fleet, pending[0])
        if status == 429:
            refused += 1
            time.sleep(int(headers["retry-after"]))
        else:
            assert status == 202
            pending.pop(0)

    def all_processed() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == len(EVENTS)

    wait_until(all_processed, 90, "every event processed", interval=0.5)
    with engine.connect() as connection:
        rows = connection.scalars(select(WebhookEvent.event_id)).all()
    assert sorted(rows) == EVENTS  # each once, none twice, none lost
    assert rate_limited_total(fleet) == refused


def test_the_ringing_phone_is_never_limited_by_the_real_server(fleet: Processes) -> None:
    answers = []
    for n in range(4):
        ringing = {
            "event": "call_inbound",
            "call_inbound": {"from_number": f"+491511234567{n}", "to_number": "+4930901820"},
        }
        status, _, answer = request(fleet.base_url, "POST", "/webhooks/retell", ringing)
        answers.append((status, answer))

    assert answers == [(200, {"call_inbound": {}})] * 4
    call = {"event": "call_ended", "call": {"call_id": "call_after_rings"}}
    # The rings spent no token: the call's own event takes the bucket's one.
    assert request(fleet.base_url, "POST", "/webhooks/retell", call)[0] == 202
    call["call"] = {"call_id": "call_next"}
    assert request(fleet.base_url, "POST", "/webhooks/retell", call)[0] == 429

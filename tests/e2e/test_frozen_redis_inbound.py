"""A frozen Redis (SIGSTOP: connections accepted, nothing answered) costs Retell's
inbound calls nothing they would notice: each is answered well within Retell's 10 s
and routed to its branch's agent through the database (the lookup's Redis cache gives
up within its budget, then is skipped: ingest/redis_watch.py), ``/healthz`` is
answered by the event loop, every call's record is in the database before its answer
(the Redis try gives up within the lookup cache's bound: ingest/inbound_record.py), and
each is queued once when Redis thaws."""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from ingest.providers import retell
from models.events import EventStatus, WebhookEvent
from tests.helpers import total_queued
from tests.integration.test_inbound import API_KEY as RETELL_KEY
from tests.integration.test_inbound import seed
from tests.processes import Processes, running_fleet
from tests.servers import RedisServer, wait_until

pytestmark = pytest.mark.e2e

CALLS_PER_S = 6
FREEZE_S = 12


def exchange(web: Processes, raw: bytes) -> tuple[int, bytes, float]:
    """``(status, body, seconds)`` of one request on a fresh connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(web.env["PORT"])), timeout=30) as sock:
        sock.sendall(raw)
        data = b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = data[:end].decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0])
                if len(data) >= end + 4 + length:
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data[end + 4 :], time.monotonic() - started


def call(web: Processes, to_number: str = "030 1234567") -> tuple[int, bytes, float]:
    """One Retell ``call_inbound`` to ``to_number`` (the seeded branch's by default; a
    body of its own, so each call's record is a distinct event)."""
    body = json.dumps(
        {
            "event": "call_inbound",
            "call_inbound": {
                "agent_id": "agent_default",
                "from_number": "+4915112345678",
                "to_number": to_number,
                "call": uuid.uuid4().hex,
            },
        }
    ).encode()
    signature = retell.sign(RETELL_KEY, body, int(time.time() * 1000))
    raw = (
        f"POST /webhooks/retell HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"x-retell-signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return exchange(web, raw)


def healthz(web: Processes) -> tuple[int, bytes, float]:
    return exchange(web, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")


def test_inbound_calls_during_a_redis_freeze_are_routed_in_time_and_recorded_once(
    tmp_path: Path, own_redis: RedisServer, database_url: str
) -> None:
    seed(database_url)
    with running_fleet(
        tmp_path,
        own_redis.url,
        database_url,
        names=("web",),
        HOOKFLEET_RETELL_SECRETS=RETELL_KEY,
        HOOKFLEET_INBOUND_CACHE_TTL_S="1",  # lookups keep asking the cache
        # Under the 2 s Redis timeout a frozen Redis held each lookup for, with room
        # for a loaded test machine (a fresh MariaDB connection, scheduling).
        HOOKFLEET_INBOUND_BUDGET_MS="1000",
    ) as web:
        assert call(web)[0] == 200  # before: the cache and the database warm
        own_redis.freeze()
        try:
            with ThreadPoolExecutor(32) as pool:
                calls, probes = [], []
                for tick in range(CALLS_PER_S * FREEZE_S):  # a steady rate
                    calls.append(pool.submit(call, web))
                    if tick % CALLS_PER_S == 0:
                        probes.append(pool.submit(healthz, web))
                    time.sleep(1 / CALLS_PER_S)
                answered = [future.result() for future in calls]
                health = [future.result() for future in probes]
        finally:
            own_redis.thaw()
        expected = 1 + len(answered)
        wait_until(lambda: total_queued(own_redis.client()) >= expected, 30, "every call recorded")
        time.sleep(1.0)  # a second record of any call would show by now
        recorded = total_queued(own_redis.client())
        log = web.log("web")
    with create_engine(database_url).connect() as connection:
        kept = connection.execute(
            select(func.count()).where(
                WebhookEvent.event_type == "call_inbound",
                WebhookEvent.status == EventStatus.RECEIVED,
            )
        ).scalar_one()

    slowest = max(seconds for _, _, seconds in answered)
    assert slowest < 2.0, slowest  # Retell waits 10 s; the lookup's budget is 1 s
    routed = [json.loads(body)["call_inbound"].get("override_agent_id") for _, body, _ in answered]
    assert routed == ["agent_mitte"] * len(answered)
    assert [status for status, _, _ in health] == [200] * len(health)
    assert max(seconds for _, _, seconds in health) < 1.0
    assert recorded == expected  # every answered call once, none twice
    assert kept == len(answered)  # each in the database before its answer
    assert "inline event not recorded" not in log
    assert "inline event record unconfirmed" not in log
    assert "Traceback" not in log

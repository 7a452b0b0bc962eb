"""No accepted delivery is lost in a Redis failover: with HOOKFLEET_REDIS_MIN_REPLICAS
the receiver answers 202 only once a real replica holds the delivery, and 503
``not_replicated`` when it does not confirm in time. The replica is a real
``redis-server --replicaof``, frozen with SIGSTOP to play a lagging or cut-off one."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select

from ingest import create_app
from ingest.dedup import DedupGate, NotReplicated
from ingest.providers import retell, standard
from models.calls import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from models.migrate import upgrade
from models.settings import Settings
from tests.helpers import dedup_keys, post_json, queued
from tests.processes import ONE_RECEIVER_WORKER, request, running_fleet
from tests.servers import RedisServer, sqlite_url, wait_until

SECRET = "whsec_" + "cmVwbGljYXMtbXVzdC1jb25maXJtLWl0"
WAIT_MS = 200
# Generous for a loaded two-core machine: the point is "about the wait", not "seconds".
PROMPT_S = WAIT_MS / 1000 + 1.0


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "primary").start()
    yield server
    server.stop()


@pytest.fixture
def replica(tmp_path: Path, primary: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "replica", replica_of=primary).start()
    yield server
    server.stop()


def receiver(redis_url: str, **extra: str) -> FlaskClient:
    env = {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_STANDARD_SECRETS": SECRET,
        "HOOKFLEET_RETELL_VERIFY": "off",
        "HOOKFLEET_REDIS_MIN_REPLICAS": "1",
        "HOOKFLEET_REDIS_REPLICA_WAIT_MS": str(WAIT_MS),
        "HOOKFLEET_RETRY_AFTER_S": "7",
        **extra,
    }
    return create_app(env).test_client()


def signed(webhook_id: str) -> tuple[bytes, dict[str, str]]:
    """A Standard Webhooks delivery, signed as the provider would (retries resend it)."""
    body = json.dumps({"type": "invoice.paid", "data": {"id": webhook_id}}).encode()
    now = int(time.time())
    return body, {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(now),
        "webhook-signature": standard.sign(SECRET, body, now, webhook_id=webhook_id),
    }


def deliver(client: FlaskClient, delivery: tuple[bytes, dict[str, str]]) -> Any:
    body, headers = delivery
    return client.post(
        "/webhooks/standard", data=body, content_type="application/json", headers=headers
    )


def test_a_delivery_the_replica_confirmed_is_accepted_and_already_on_the_replica(
    primary: RedisServer, replica: RedisServer
) -> None:
    response = deliver(receiver(primary.url), signed("msg_1"))

    assert (response.status_code, response.get_json()["status"]) == (202, "accepted")
    [message] = queued(primary.client())
    assert message["decoded_body"][1]["event_id"] == "msg_1"
    # Read at once, no waiting: the 202 came only after the replica had both.
    assert replica.client().llen(Queue.DEFAULT) == 1
    assert len(dedup_keys(replica.client())) == 1


def test_a_frozen_replica_turns_the_delivery_away_with_503_within_the_wait(
    primary: RedisServer, replica: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = receiver(primary.url)
    replica.freeze()

    started = time.monotonic()
    response = deliver(client, signed("msg_1"))
    elapsed = time.monotonic() - started

    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")
    assert response.get_json()["error"]["code"] == "not_replicated"
    assert 0.9 * WAIT_MS / 1000 <= elapsed < PROMPT_S
    # What the primary holds stays: the retry will find it (see the next test).
    assert primary.client().llen(Queue.DEFAULT) == 1
    # Logged with its outcome, which is also the outcome label of the received counter.
    # (Counted in /metrics too; asserted by the scrape of real processes in
    # test_metrics_e2e: this process's metrics are shared by every in-process test.)
    outcomes = [getattr(r, "outcome", None) for r in caplog.records]
    assert outcomes.count("not_replicated") == 1


def test_the_retry_is_a_duplicate_only_once_the_replica_holds_the_claim(
    primary: RedisServer, replica: RedisServer
) -> None:
    delivery = signed("msg_1")
    replica.freeze()
    assert deliver(receiver(primary.url), delivery).status_code == 503

    # A new receiver process, whose connection has written nothing: on Redis versions
    # where WAIT covers only a connection's own writes, it is the claim the script
    # writes again that makes the WAIT ask whether the replica has it.
    still_away = deliver(receiver(primary.url), delivery)
    replica.thaw()
    wait_until(replica.in_sync, 10, "the replica to catch up")
    back = deliver(receiver(primary.url), delivery)

    assert still_away.status_code == 503
    assert still_away.get_json()["error"]["code"] == "not_replicated"
    assert (back.status_code, back.get_json()["status"]) == (200, "duplicate")
    assert primary.client().llen(Queue.DEFAULT) == 1
    assert replica.client().llen(Queue.DEFAULT) == 1


def test_a_failover_that_lost_the_write_accepts_the_retry_anew(
    primary: RedisServer, replica: RedisServer
) -> None:
    delivery = signed("msg_1")
    replica.client().save()  # what the replica will come back with: nothing of msg_1
    replica.freeze()
    assert deliver(receiver(primary.url), delivery).status_code == 503
    # The failover: the primary dies, the replica, which never saw msg_1, is promoted
    # and takes over the primary's address (as Sentinel or a managed service arrange).
    assert replica.proc is not None
    replica.proc.kill()
    replica.proc.wait()
    replica.proc = None
    primary.stop()
    shutil.copy(replica.directory / "dump.rdb", primary.directory / "dump.rdb")
    primary.start()
    assert primary.client().llen(Queue.DEFAULT) == 0

    # (The promoted primary has no replica of its own yet, so nothing to wait for.)
    retry = deliver(receiver(primary.url, HOOKFLEET_REDIS_MIN_REPLICAS="0"), delivery)

    assert (retry.status_code, retry.get_json()["status"]) == (202, "accepted")
    assert [m["decoded_body"][1]["event_id"] for m in queued(primary.client())] == ["msg_1"]


def test_the_inbound_call_is_answered_and_recorded_without_waiting_for_replicas(
    primary: RedisServer, replica: RedisServer
) -> None:
    # A long wait, so that waiting for the frozen replica could not go unnoticed.
    client = receiver(primary.url, HOOKFLEET_REDIS_REPLICA_WAIT_MS="900")
    primary.client().config_resetstat()
    replica.freeze()
    ringing = {
        "event": "call_inbound",
        "call_inbound": {"from_number": "+4915112345678", "to_number": "+4930901820"},
    }

    started = time.monotonic()
    response = post_json(client, "/webhooks/retell", ringing)
    response.close()  # recorded before the answer, without waiting for the replica
    elapsed = time.monotonic() - started

    assert (response.status_code, response.get_json()) == (200, {"call_inbound": {}})
    assert elapsed < 0.9
    assert primary.client().llen(Queue.HIGH) == 1
    assert "cmdstat_wait" not in primary.client().info("commandstats")


def test_with_no_replicas_required_no_wait_is_sent(
    primary: RedisServer, replica: RedisServer
) -> None:
    client = receiver(primary.url, HOOKFLEET_REDIS_MIN_REPLICAS="0")
    primary.client().config_resetstat()
    replica.freeze()  # would hold every delivery if anything waited for it

    statuses = [deliver(client, signed(f"msg_{n}")).status_code for n in range(3)]

    assert statuses == [202] * 3
    assert "cmdstat_wait" not in primary.client().info("commandstats")


class CountingConnection(redis.Connection):
    """A connection that counts its writes to the socket: one per round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def test_the_wait_travels_with_the_script_in_one_round_trip(
    primary: RedisServer, replica: RedisServer
) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, host="127.0.0.1", port=primary.port
    )
    client = redis.Redis(connection_pool=pool)
    gate = DedupGate(client, client, same_server=True, min_replicas=1, replica_wait_ms=WAIT_MS)
    gate.admit("k0", "c0", 60, "q", "m0")  # connects (HELLO, ...) and caches the script
    primary.client().config_resetstat()
    CountingConnection.sends = 0

    admission = gate.admit("k1", "c1", 60, "q", "m1")

    assert admission.accepted
    assert CountingConnection.sends == 1
    stats = primary.client().info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_wait"]["calls"] == 1
    assert not any(name.startswith("cmdstat_script") for name in stats)  # no SCRIPT EXISTS


def test_a_primary_without_the_script_cached_still_admits_and_waits(
    primary: RedisServer, replica: RedisServer
) -> None:
    client = primary.client()
    gate = DedupGate(client, client, same_server=True, min_replicas=1, replica_wait_ms=WAIT_MS)
    gate.admit("k0", "c0", 60, "q", "m0")
    client.script_flush()  # what a promoted replica or a restarted primary looks like

    assert gate.admit("k1", "c1", 60, "q", "m1").accepted
    assert replica.client().llen("q") == 2
    replica.freeze()
    client.script_flush()
    with pytest.raises(NotReplicated):
        gate.admit("k2", "c2", 60, "q", "m2")


def test_a_separate_broker_gives_the_claim_back_when_its_replica_does_not_confirm(
    redis_url: str, redis_client: redis.Redis, primary: RedisServer, replica: RedisServer
) -> None:
    # Dedup keys on the shared test Redis, the queues on the replicated primary.
    client = receiver(redis_url, HOOKFLEET_BROKER_URL=primary.url)
    delivery = signed("msg_1")
    replica.freeze()

    refused = deliver(client, delivery)

    assert refused.get_json()["error"]["code"] == "not_replicated"
    # A failover of the broker could lose the message while the dedup Redis kept the
    # claim: the claim is given back, so the retry is new, not a "duplicate".
    assert dedup_keys(redis_client) == []
    replica.thaw()
    wait_until(replica.in_sync, 10, "the replica to catch up")
    assert deliver(client, delivery).status_code == 202
    # The first message survived here after all: two copies, one row (the database's
    # unique constraint), as with a failed publish.
    assert primary.client().llen(Queue.DEFAULT) == 2


def test_a_primary_refusing_writes_without_its_replicas_answers_503(
    primary: RedisServer,
) -> None:
    # deploy/redis.conf's min-replicas-to-write on a primary that lost its replicas:
    # Redis refuses the script's write, and the receiver says so, leaving nothing.
    primary.client().config_set("min-replicas-to-write", 1)
    client = receiver(primary.url, HOOKFLEET_REDIS_MIN_REPLICAS="0")

    response = deliver(client, signed("msg_1"))

    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    assert primary.client().llen(Queue.DEFAULT) == 0
    assert dedup_keys(primary.client()) == []


@pytest.mark.e2e
def test_after_the_replica_returns_the_retry_takes_effect_exactly_once(
    tmp_path: Path, primary: RedisServer, replica: RedisServer
) -> None:
    database_url = sqlite_url(tmp_path / "db")
    upgrade(Settings(database_url=database_url))
    key = "key_replicas"
    body = json.dumps(
        {
            "event": "call_ended",
            "call": {
                "call_id": "call_r1",
                "call_status": "ended",
                "direction": "inbound",
                "from_number": "+4915112345678",
                "to_number": "+4930901820",
            },
        }
    ).encode()
    headers = {"x-retell-signature": retell.sign(key, body, int(time.time() * 1000))}
    with running_fleet(
        tmp_path,
        primary.url,
        database_url,
        names=("web", "worker_high"),
        **ONE_RECEIVER_WORKER,
        HOOKFLEET_RETELL_SECRETS=key,
        HOOKFLEET_REDIS_MIN_REPLICAS="1",
        HOOKFLEET_REDIS_REPLICA_WAIT_MS=str(WAIT_MS),
    ) as fleet:
        fleet.wait_for_worker("worker_high")
        replica.freeze()
        first = request(fleet.base_url, "POST", "/webhooks/retell", body, headers)
        replica.thaw()
        wait_until(replica.in_sync, 10, "the replica to catch up")
        retry = request(fleet.base_url, "POST", "/webhooks/retell", body, headers)
        engine = create_engine(database_url)

        def processed() -> bool:
            with engine.connect() as connection:
                status = connection.scalar(select(WebhookEvent.status))
            return status == EventStatus.PROCESSED

        wait_until(processed, 60, "the event to be processed", interval=0.3)
        time.sleep(1)  # room for a second copy to be processed, were there one
        worker_log = fleet.log("worker_high")

    assert (first[0], first[2]["error"]["code"]) == (503, "not_replicated")
    assert (retry[0], retry[2]["status"]) == (200, "duplicate")
    with engine.connect() as connection:
        events = connection.execute(select(WebhookEvent.event_id, WebhookEvent.attempts)).all()
        calls = connection.execute(select(Call.call_id, Call.status)).all()
    engine.dispose()
    assert [tuple(e) for e in events] == [("call_r1:call_ended", 1)]
    assert [tuple(c) for c in calls] == [("call_r1", "ended")]
    processed_lines = [
        line
        for line in worker_log.splitlines()
        if line.startswith("{") and json.loads(line).get("message") == "processed"
    ]
    assert len(processed_lines) == 1

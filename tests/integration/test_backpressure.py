"""Backpressure: a queue at its limit refuses new asynchronous deliveries with 503, so
providers retry later instead of Redis growing without bound. The phone is never shed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from ingest import create_app
from ingest.providers import retell
from models.contract import PROCESS_EVENT, Queue
from tests.helpers import OPS, dedup_keys, post_json
from tests.servers import RedisServer

EVENT = {"type": "invoice.paid", "data": {"id": "in_1"}}
LIMIT = 3


def app_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_STANDARD_VERIFY": "off",
        "HOOKFLEET_RETELL_VERIFY": "off",
        "HOOKFLEET_SHED_QUEUE_DEPTH": str(LIMIT),
        "HOOKFLEET_RETRY_AFTER_S": "7",
        **extra,
    }


@pytest.fixture
def limited(redis_url: str) -> FlaskClient:
    return create_app(app_env(redis_url)).test_client()


def send(client: FlaskClient, webhook_id: str) -> tuple[int, dict[str, object], str | None]:
    response = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": webhook_id})
    return response.status_code, response.get_json(), response.headers.get("Retry-After")


def test_a_full_queue_sheds_new_deliveries_with_503_and_keeps_nothing_of_them(
    limited: FlaskClient, redis_client: redis.Redis
) -> None:
    accepted = [send(limited, f"msg_{n}")[0] for n in range(LIMIT)]

    status, body, retry_after = send(limited, "msg_over")

    assert accepted == [202] * LIMIT
    assert (status, retry_after) == (503, "7")
    assert body["error"]["code"] == "queue_full"  # type: ignore[index]
    assert redis_client.llen(Queue.DEFAULT) == LIMIT
    assert len(dedup_keys(redis_client)) == LIMIT  # no claim left for the shed one


def test_a_duplicate_is_still_a_duplicate_when_the_queue_is_full(
    limited: FlaskClient, redis_client: redis.Redis
) -> None:
    for n in range(LIMIT):
        send(limited, f"msg_{n}")

    status, body, _ = send(limited, "msg_0")

    assert (status, body["status"]) == (200, "duplicate")


def test_the_providers_retry_is_accepted_once_workers_drain_the_queue(
    limited: FlaskClient, redis_client: redis.Redis
) -> None:
    for n in range(LIMIT):
        send(limited, f"msg_{n}")
    assert send(limited, "msg_later")[0] == 503

    redis_client.rpop(Queue.DEFAULT)  # a worker took the oldest job

    assert send(limited, "msg_later")[0] == 202
    assert send(limited, "msg_later")[0] == 200


def test_each_queue_has_its_own_limit(limited: FlaskClient, redis_client: redis.Redis) -> None:
    for n in range(LIMIT):
        send(limited, f"msg_{n}")
    call = {"event": "call_ended", "call": {"call_id": "call_1"}}

    response = post_json(limited, "/webhooks/retell", call)

    assert response.status_code == 202  # hookfleet.high is not full
    assert redis_client.llen(Queue.HIGH) == 1


def test_the_inbound_call_is_never_shed(redis_url: str, redis_client: redis.Redis) -> None:
    client = create_app(app_env(redis_url)).test_client()
    for n in range(LIMIT):
        post_json(client, "/webhooks/retell", {"event": "call_ended", "call": {"call_id": f"c{n}"}})
    assert redis_client.llen(Queue.HIGH) == LIMIT
    ringing = {
        "event": "call_inbound",
        "call_inbound": {"from_number": "+4915112345678", "to_number": "+4930901820"},
    }

    response = post_json(client, "/webhooks/retell", ringing)

    assert (response.status_code, response.get_json()) == (200, {"call_inbound": {}})
    response.close()  # the server finished sending the answer: now it is recorded
    # ...past the limit: the inline path never sheds.
    assert redis_client.llen(Queue.HIGH) == LIMIT + 1


def test_a_separate_broker_sheds_too(tmp_path: Path, redis_url: str) -> None:
    broker = RedisServer(tmp_path / "broker").start()
    try:
        client = create_app(app_env(redis_url, HOOKFLEET_BROKER_URL=broker.url)).test_client()
        statuses = [send(client, f"msg_{n}")[0] for n in range(LIMIT + 1)]

        assert statuses == [202] * LIMIT + [503]
        assert broker.client().llen(Queue.DEFAULT) == LIMIT
    finally:
        broker.stop()


def test_zero_turns_shedding_off(redis_url: str, redis_client: redis.Redis) -> None:
    client = create_app(app_env(redis_url, HOOKFLEET_SHED_QUEUE_DEPTH="0")).test_client()

    statuses = {send(client, f"msg_{n}")[0] for n in range(LIMIT * 3)}

    assert statuses == {202}
    assert json.loads(redis_client.lindex(Queue.DEFAULT, 0) or b"{}")["headers"]["task"] == (
        PROCESS_EVENT
    )


def test_signed_retell_is_unaffected_by_other_queues(redis_url: str) -> None:
    # A sanity check that shedding is per queue with verification on as well.
    key = "key_test"
    client = create_app(
        {**app_env(redis_url), "HOOKFLEET_RETELL_VERIFY": "on", "HOOKFLEET_RETELL_SECRETS": key}
    ).test_client()
    for n in range(LIMIT):
        send(client, f"msg_{n}")
    body = json.dumps({"event": "call_started", "call": {"call_id": "call_s"}}).encode()
    signature = retell.sign(key, body, int(time.time() * 1000))

    response = client.post(
        "/webhooks/retell",
        data=body,
        content_type="application/json",
        headers={"x-retell-signature": signature},
    )

    assert response.status_code == 202


def test_a_shed_delivery_is_counted_as_shed(limited: FlaskClient) -> None:
    def count(outcome: str) -> float:
        metrics = limited.get("/metrics", base_url=OPS).get_data(as_text=True)
        label = f'hookfleet_webhooks_received_total{{outcome="{outcome}",provider="standard"}}'
        lines = [x for x in metrics.splitlines() if x.startswith(label)]
        return float(lines[0].split()[-1]) if lines else 0.0

    # The counters are process-wide: other tests' answers are already in them.
    shed, errors = count("shed"), count("error")
    for n in range(LIMIT + 2):
        send(limited, f"msg_{n}")

    assert count("shed") - shed == 2 and count("error") == errors

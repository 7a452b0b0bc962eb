"""Per-provider rate limits: a token bucket inside the one Redis step answers a sender
over its rate 429 ``rate_limited`` with ``Retry-After``, claiming nothing; duplicates and
Retell's inbound call pass untouched; providers are limited apart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from ingest import create_app
from ingest.dedup import DedupGate, NotReplicated, RateLimit, rate_key
from models.contract import Queue
from tests.bench import rate_limit_step
from tests.helpers import dedup_keys, post_json, retell_call_ended_body
from tests.servers import RedisServer

EVENT = {"type": "invoice.paid", "data": {"id": "in_1"}}


def ringing(caller: str) -> dict[str, Any]:
    return {"event": "call_inbound", "call_inbound": {"from_number": caller, "to_number": "+4930"}}


# Slow enough that no token comes back while a test sends its burst, however loaded
# the machine: one token per 20 s.
SLOW = "0.05"


def app_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_STANDARD_VERIFY": "off",
        "HOOKFLEET_RETELL_VERIFY": "off",
        "HOOKFLEET_STRIPE_VERIFY": "off",
        **extra,
    }


def limited_client(redis_url: str, **extra: str) -> FlaskClient:
    return create_app(app_env(redis_url, **extra)).test_client()


def send(client: FlaskClient, webhook_id: str) -> tuple[int, dict[str, Any], str | None]:
    response = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": webhook_id})
    return response.status_code, response.get_json(), response.headers.get("Retry-After")


def call_ended(client: FlaskClient, call_id: str) -> int:
    response = post_json(client, "/webhooks/retell", retell_call_ended_body(call_id))
    return int(response.status_code)


def test_a_burst_over_the_rate_gets_429_with_retry_after_and_claims_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT=SLOW, HOOKFLEET_STANDARD_RATE_BURST="3"
    )

    answers = [send(client, f"msg_{n}") for n in range(7)]

    assert [status for status, _, _ in answers] == [202] * 3 + [429] * 4
    for _, body, retry_after in answers[3:]:
        assert body["error"]["code"] == "rate_limited"
        assert "0.05 per second" in body["error"]["message"]
        # Whole seconds until the next token: 20 s at this rate, less what has passed.
        assert retry_after is not None and 1 <= int(retry_after) <= 20
    assert redis_client.llen(Queue.DEFAULT) == 3
    assert len(dedup_keys(redis_client)) == 3  # no claim for a limited one


def test_a_limited_delivery_sent_again_after_retry_after_is_accepted_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # 2 per second: a token every 500 ms, so Retry-After is 1 and the wait is short.
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT="2", HOOKFLEET_STANDARD_RATE_BURST="1"
    )
    assert send(client, "msg_a")[0] == 202
    status, _, retry_after = send(client, "msg_b")
    assert (status, retry_after) == (429, "1")

    time.sleep(int(retry_after))  # the bucket refilled meanwhile

    assert send(client, "msg_b")[0] == 202
    assert send(client, "msg_b")[0] == 200  # the next retry is a duplicate
    assert redis_client.llen(Queue.DEFAULT) == 2 and len(dedup_keys(redis_client)) == 2


def test_deliveries_under_the_rate_are_never_limited(redis_url: str) -> None:
    # 20 per second with no burst to spare: one every 50 ms is exactly the rate.
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT="20", HOOKFLEET_STANDARD_RATE_BURST="1"
    )
    statuses = []
    for n in range(8):
        statuses.append(send(client, f"msg_{n}")[0])
        time.sleep(0.06)  # sleeps at least this long: always under the rate

    assert statuses == [202] * 8


def test_the_bucket_refills_at_the_rate_up_to_the_burst(redis_url: str) -> None:
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT="2", HOOKFLEET_STANDARD_RATE_BURST="2"
    )
    assert [send(client, f"a_{n}")[0] for n in range(3)] == [202, 202, 429]

    time.sleep(2.0)  # 4 tokens' worth of time, but the bucket holds 2

    assert [send(client, f"b_{n}")[0] for n in range(3)] == [202, 202, 429]


def test_duplicates_are_answered_200_while_limited_and_spend_no_token(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT=SLOW, HOOKFLEET_STANDARD_RATE_BURST="2"
    )
    assert send(client, "msg_0")[0] == 202
    repeats = [send(client, "msg_0")[:2] for _ in range(5)]
    assert send(client, "msg_1")[0] == 202  # the repeats left the second token
    assert send(client, "msg_2")[0] == 429  # now the bucket is empty...

    during = send(client, "msg_1")  # ...and a duplicate is still a duplicate

    assert all(status == 200 and body["status"] == "duplicate" for status, body in repeats)
    assert (during[0], during[1]["status"]) == (200, "duplicate")
    assert redis_client.llen(Queue.DEFAULT) == 2


def test_the_inbound_call_is_never_limited_and_spends_no_token(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = limited_client(
        redis_url, HOOKFLEET_RETELL_RATE_LIMIT=SLOW, HOOKFLEET_RETELL_RATE_BURST="1"
    )

    for n in range(4):
        response = post_json(client, "/webhooks/retell", ringing(f"+491511234567{n}"))
        assert (response.status_code, response.get_json()) == (200, {"call_inbound": {}})
        response.close()  # the answer has gone: now it is recorded

    assert redis_client.llen(Queue.HIGH) == 4  # every ring recorded
    # The call's other events are limited, and the rings left them their token.
    assert [call_ended(client, f"call_{n}") for n in range(2)] == [202, 429]


def test_providers_are_limited_apart_and_one_without_a_limit_is_unaffected(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = limited_client(
        redis_url,
        HOOKFLEET_STANDARD_RATE_LIMIT=SLOW,
        HOOKFLEET_STANDARD_RATE_BURST="2",
        HOOKFLEET_RETELL_RATE_LIMIT=SLOW,
        HOOKFLEET_RETELL_RATE_BURST="1",
    )
    assert [send(client, f"msg_{n}")[0] for n in range(3)] == [202, 202, 429]

    retell = [call_ended(client, f"call_{n}") for n in range(2)]
    stripe = [
        post_json(client, "/webhooks/stripe", {"id": f"evt_{n}", "type": "invoice.paid"})
        for n in range(20)
    ]

    assert retell == [202, 429]  # its own bucket, not the one standard emptied
    assert {response.status_code for response in stripe} == {202}
    assert set(redis_client.scan_iter("hookfleet:rate:*")) == {
        rate_key("standard").encode(),
        rate_key("retell").encode(),
    }


def test_a_rate_limited_delivery_is_counted_by_provider(redis_url: str) -> None:
    client = limited_client(
        redis_url, HOOKFLEET_STANDARD_RATE_LIMIT=SLOW, HOOKFLEET_STANDARD_RATE_BURST="1"
    )

    def sample(name: str, labels: dict[str, str]) -> float:
        # This process's own counters (what its /metrics serves when it is alone; the
        # e2e row reads a real fleet's /metrics): another test in this process may have
        # switched /metrics to a shared multiprocess directory.
        return REGISTRY.get_sample_value(name, labels) or 0.0

    limited = ("hookfleet_rate_limited_total", {"provider": "standard"})
    outcome = (
        "hookfleet_webhooks_received_total",
        {"outcome": "rate_limited", "provider": "standard"},
    )
    # The counters are process-wide: other tests' answers are already in them.
    before = sample(*limited), sample(*outcome)
    for n in range(4):
        send(client, f"msg_{n}")

    assert (sample(*limited) - before[0], sample(*outcome) - before[1]) == (3, 3)


def test_a_separate_broker_limits_too(tmp_path: Path, redis_url: str) -> None:
    broker = RedisServer(tmp_path / "broker").start()
    try:
        client = limited_client(
            redis_url,
            HOOKFLEET_BROKER_URL=broker.url,
            HOOKFLEET_STANDARD_RATE_LIMIT=SLOW,
            HOOKFLEET_STANDARD_RATE_BURST="2",
        )
        statuses = [send(client, f"msg_{n}")[0] for n in range(4)]

        assert statuses == [202, 202, 429, 429]
        assert broker.client().llen(Queue.DEFAULT) == 2
        assert send(client, "msg_0")[0] == 200
    finally:
        broker.stop()


class CountingConnection(redis.Connection):
    """A connection that counts its writes to the socket: one per round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def counting_gate(redis_server_url: str) -> tuple[DedupGate, redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_server_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    return DedupGate(client, client, same_server=True), client


def test_a_rate_limit_adds_no_round_trip(redis_url: str, redis_client: redis.Redis) -> None:
    gate, _ = counting_gate(redis_url)
    limit = RateLimit(rate_key("standard"), per_second=0.05, burst=1)
    gate.admit("k0", "c0", 60, "q", "m0", rate_limit=limit)  # connects, caches the script
    redis_client.config_resetstat()
    CountingConnection.sends = 0

    limited = gate.admit("k1", "c1", 60, "q", "m1", rate_limit=limit)

    assert limited.limited_ms > 0 and not limited.accepted
    assert CountingConnection.sends == 1
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert not any(name.startswith("cmdstat_script") for name in stats)  # no SCRIPT EXISTS


@pytest.mark.parametrize(("per_second", "burst"), [(2.0, 4), (0.5, 1), (1.0, 10)])
def test_the_bucket_holds_burst_tokens_and_names_the_wait_for_the_next(
    redis_url: str, redis_client: redis.Redis, per_second: float, burst: int
) -> None:
    gate = DedupGate(redis_client, redis_client, same_server=True)
    limit = RateLimit(rate_key("standard"), per_second, burst)
    started = time.monotonic()

    admissions = [gate.admit(f"k{n}", "c", 60, "q", "m", rate_limit=limit) for n in range(burst)]
    refused = gate.admit("k_over", "c", 60, "q", "m", rate_limit=limit)
    elapsed_ms = (time.monotonic() - started) * 1000

    assert all(a.accepted for a in admissions)
    assert not refused.accepted and not refused.shed
    # One token takes 1000 / rate ms to come; some of that passed while we sent.
    token_ms = 1000 / per_second
    assert max(1.0, token_ms - elapsed_ms - 1) <= refused.limited_ms <= max(1.0, token_ms) + 1
    # The bucket's hash goes once it would be full again (a missing bucket is full).
    assert 0 < redis_client.pttl(limit.key) <= burst * token_ms + 1000
    assert redis_client.llen("q") == burst


def test_a_limited_delivery_waits_for_no_replica_it_did_not_write(
    redis_client: redis.Redis,
) -> None:
    # No replica at all: an accepted delivery cannot be confirmed, a refused one wrote
    # nothing that would need confirming, so it is answered 429 as it is.
    gate = DedupGate(redis_client, redis_client, same_server=True, min_replicas=1)
    limit = RateLimit(rate_key("standard"), per_second=0.05, burst=1)
    with pytest.raises(NotReplicated):
        gate.admit("k0", "c0", 60, "q", "m0", rate_limit=limit)

    refused = gate.admit("k1", "c1", 60, "q", "m1", rate_limit=limit)

    assert refused.limited_ms > 0 and not refused.accepted


def test_the_rate_limit_bench_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    rate_limit_step.main(["--rounds", "1", "--count", "20"])

    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["off", "on", "on"]

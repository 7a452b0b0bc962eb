"""A flood of junk cannot evict what a real sender sent during a wrong-secret outage:
refusals without a signature of the provider's scheme are kept in their own lane with
a quarter of the caps. The receiver in-process, a real Redis."""

from __future__ import annotations

import json
import time

import redis
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from ingest import create_app
from tests.integration.test_quarantine import RIGHT, WRONG, kept, standard_delivery

JUNK_BODY = json.dumps({"pad": "x" * 90_000}).encode()


def receiver(redis_url: str, **caps: str) -> FlaskClient:
    env = {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_STANDARD_SECRETS": WRONG,
        **{f"HOOKFLEET_QUARANTINE_{name.upper()}": value for name, value in caps.items()},
    }
    return create_app(env).test_client()


def genuine(client: FlaskClient, n: int) -> None:
    # What the real sender sends while our secret is wrong: well signed, with its own key.
    for i in range(n):
        body, headers = standard_delivery(RIGHT, f"msg_genuine_{i}")
        assert client.post("/webhooks/standard", data=body, headers=headers).status_code == 401


def junk(client: FlaskClient, n: int) -> None:
    # What probes send: no signature at all, or one that is not of the scheme.
    for i in range(n):
        headers = {"content-type": "application/json"}
        if i % 2:
            headers |= {"webhook-id": f"j{i}", "webhook-timestamp": "x", "webhook-signature": "?"}
        answer = client.post("/webhooks/standard", data=JUNK_BODY, headers=headers)
        assert answer.status_code in (400, 401)


def genuine_left(redis_url: str) -> list[str]:
    return [
        k["headers"]["webhook-id"]
        for k in kept(redis_url)
        if k["headers"].get("webhook-id", "").startswith("msg_genuine")
    ]


def dropped(lane: str, cause: str) -> float:
    labels = {"provider": "standard", "lane": lane, "cause": cause}
    return REGISTRY.get_sample_value("hookfleet_quarantine_dropped_total", labels) or 0.0


def test_a_junk_flood_does_not_evict_the_genuine_refusals(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = receiver(redis_url, max_bytes="2000000", rate="100000")
    before = {lane: dropped(lane, "bytes") for lane in ("signed", "unsigned")}
    genuine(client, 5)

    junk(client, 80)  # 7 MB of junk against a 2 MB budget

    assert genuine_left(redis_url) == [f"msg_genuine_{i}" for i in range(5)]
    # The junk holds at most its own quarter, and the evictions it caused show as its own.
    unsigned = [k for k in kept(redis_url) if k["reason"] != "invalid_signature"]
    assert 0 < sum(len(k["body"]) for k in unsigned) <= 2_000_000 // 4
    assert dropped("unsigned", "bytes") > before["unsigned"]
    assert dropped("signed", "bytes") == before["signed"]


def test_junk_over_the_rate_does_not_take_the_genuine_refusals_rate(redis_url: str) -> None:
    client = receiver(redis_url, rate="8")
    while time.time() % 1 > 0.5:  # all within one second, the box being slow
        time.sleep(0.05)

    junk(client, 20)
    genuine(client, 5)

    assert genuine_left(redis_url) == [f"msg_genuine_{i}" for i in range(5)]


def test_by_default_a_busy_senders_refusals_are_all_kept(redis_url: str) -> None:
    # A real sender delivering 100 a second through a wrong-secret outage: each kept.
    client = receiver(redis_url)

    genuine(client, 100)

    assert len(genuine_left(redis_url)) == 100

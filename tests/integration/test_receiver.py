"""The receiver as a provider meets it: accepted, duplicate, refused, unavailable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from ingest import create_app
from models.contract import PROCESS_EVENT, Queue
from tests.helpers import dedup_keys, post_json, queued, total_queued
from tests.servers import RedisServer, free_port

EVENT = {"type": "invoice.paid", "timestamp": "2026-11-23T08:00:00Z", "data": {"id": "in_1"}}


def test_new_delivery_is_accepted_and_queued_as_a_celery_task(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "msg_1"})

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    assert body["event_id"] == "msg_1"
    assert response.headers["X-Request-ID"] == body["correlation_id"]
    [message] = queued(redis_client, Queue.DEFAULT)
    assert message["headers"]["task"] == PROCESS_EVENT
    args, kwargs, _embed = message["decoded_body"]
    assert args == []
    assert kwargs["provider"] == "standard"
    assert kwargs["event_id"] == "msg_1"
    assert kwargs["event_type"] == "invoice.paid"
    assert json.loads(kwargs["payload"]) == EVENT
    assert kwargs["correlation_id"] == body["correlation_id"]


def test_duplicate_delivery_is_acknowledged_once(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    first = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "msg_dup"})
    second = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "msg_dup"})

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json()["status"] == "duplicate"
    assert second.get_json()["original_correlation_id"] == first.get_json()["correlation_id"]
    assert total_queued(redis_client) == 1


def test_request_id_is_carried_into_the_task(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = post_json(
        client, "/webhooks/standard", EVENT, **{"webhook-id": "m", "X-Request-ID": "req-42"}
    )

    assert response.headers["X-Request-ID"] == "req-42"
    assert response.get_json()["correlation_id"] == "req-42"
    [message] = queued(redis_client)
    assert message["headers"]["hookfleet_correlation_id"] == "req-42"
    assert message["decoded_body"][1]["correlation_id"] == "req-42"


def test_a_request_id_that_is_not_a_plain_token_is_replaced(client: FlaskClient) -> None:
    response = post_json(
        client, "/webhooks/standard", EVENT, **{"webhook-id": "m", "X-Request-ID": "a b\tc"}
    )

    assert response.status_code == 202
    assert response.headers["X-Request-ID"] not in ("", "a b\tc")


def test_dedup_key_lives_for_the_providers_ttl(redis_url: str, redis_client: redis.Redis) -> None:
    app = create_app(
        {
            "HOOKFLEET_REDIS_URL": redis_url,
            "HOOKFLEET_STANDARD_VERIFY": "off",
            "HOOKFLEET_STANDARD_DEDUP_TTL_S": "600",
        }
    )
    post_json(app.test_client(), "/webhooks/standard", EVENT, **{"webhook-id": "ttl"})

    [key] = dedup_keys(redis_client)
    assert 590 <= redis_client.ttl(key) <= 600
    assert b"ttl" not in key  # compact: a digest, not the raw id


def test_delivery_without_an_id_is_keyed_by_its_body(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    first = post_json(client, "/webhooks/standard", EVENT)
    again = post_json(client, "/webhooks/standard", EVENT)
    other = post_json(client, "/webhooks/standard", {**EVENT, "type": "other"})

    assert first.get_json()["event_id"].startswith("sha256:")
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)


def test_very_long_event_id_is_shortened_to_fit_the_database(client: FlaskClient) -> None:
    response = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "x" * 500})

    assert response.status_code == 202
    assert len(response.get_json()["event_id"]) <= 191


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"", "application/json", 400, "empty_body"),
        (b"not json{", "application/json", 400, "invalid_json"),
        (b'{"a": 1e400}', "application/json", 400, "invalid_json"),
        (b'{"a": NaN}', "application/json", 400, "invalid_json"),
        (b"\xff\xfe{}", "application/json", 400, "invalid_json"),
        (b"[" * 100_000, "application/json", 400, "invalid_json"),
        (b'{"a": 1}', "text/plain", 415, "unsupported_media_type"),
        (b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"x" * (1024 * 1024 + 1), "application/json", 413, "body_too_large"),
    ],
    ids=["empty", "not-json", "overflow", "nan", "not-utf8", "deep", "text", "form", "too-large"],
)
def test_bad_input_gets_a_json_error_and_nothing_is_queued(
    client: FlaskClient,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    response = client.post("/webhooks/standard", data=data, content_type=content_type)

    # The one log line the refusal leaves (there is no access log), with its code.
    refused = [r for r in caplog.records if r.getMessage() == "refused"]
    assert [(r.outcome, r.status) for r in refused] == [(code, status)]  # type: ignore[attr-defined]

    assert response.status_code == status
    assert response.get_json() == {
        "error": {"code": code, "message": response.get_json()["error"]["message"]}
    }
    assert response.get_json()["error"]["message"]
    assert total_queued(redis_client) == 0
    assert dedup_keys(redis_client) == []


def test_unknown_provider_is_404_json(client: FlaskClient) -> None:
    response = post_json(client, "/webhooks/nosuch", EVENT)

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_provider"


def test_wrong_method_and_unknown_path_are_json_errors(client: FlaskClient) -> None:
    wrong_method = client.get("/webhooks/standard")
    no_route = client.get("/nope")

    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]
    assert no_route.status_code == 404
    assert no_route.get_json()["error"]["code"] == "not_found"


def test_a_path_with_doubled_leading_slashes_is_no_route(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """As a server passes them (PATH_INFO as written; the test client would read
    //webhooks as a host): werkzeug alone would match them with one slash."""
    answers = [
        client.open("/", method=method, json=EVENT, environ_overrides={"PATH_INFO": path})
        for method, path in [
            ("POST", "//webhooks/standard"),
            ("POST", "///webhooks/standard"),
            ("GET", "//healthz"),
        ]
    ]

    assert [(a.status_code, a.get_json()["error"]["code"]) for a in answers] == [
        (404, "not_found")
    ] * 3
    assert all(a.headers["X-Request-ID"] for a in answers)
    assert total_queued(redis_client) == 0


def test_provider_without_a_secret_is_refused_unless_verification_is_off(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = create_app({"HOOKFLEET_REDIS_URL": redis_url})
    response = post_json(app.test_client(), "/webhooks/standard", EVENT, **{"webhook-id": "s"})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "provider_not_configured"
    assert "HOOKFLEET_STANDARD_SECRETS" in response.get_json()["error"]["message"]
    # It waits for an operator: no Retry-After hurries the sender through its attempts.
    assert "Retry-After" not in response.headers
    assert total_queued(redis_client) == 0


def test_healthz_answers_without_redis() -> None:
    app = create_app({"HOOKFLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})

    response = app.test_client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_redis_down_is_503_with_retry_after_and_the_retry_is_accepted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = create_app(
            {
                "HOOKFLEET_REDIS_URL": server.url,
                "HOOKFLEET_STANDARD_VERIFY": "off",
                "HOOKFLEET_REDIS_TIMEOUT_S": "0.5",
            }
        ).test_client()
        server.stop()

        down = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "while-down"})

        assert down.status_code == 503
        assert down.headers["Retry-After"] == "5"
        assert down.get_json()["error"]["code"] == "queue_unavailable"

        server.start()
        back = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "while-down"})

        assert back.status_code == 202
        assert total_queued(server.client()) == 1
    finally:
        server.stop()


def test_each_delivery_costs_redis_one_command(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "warm-up"})
    redis_client.config_resetstat()

    for i in range(3):
        post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": f"one-command-{i}"})
    post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "one-command-0"})

    calls = {name: stat["calls"] for name, stat in redis_client.info("commandstats").items()}
    # What the claim script runs inside counts too; nothing else was sent (no PING, no
    # SCRIPT EXISTS, no second round trip).
    inside = {"cmdstat_get", "cmdstat_llen", "cmdstat_lpush", "cmdstat_set"}
    assert calls.pop("cmdstat_evalsha") == 4
    assert set(calls) - inside == {"cmdstat_config|resetstat"}
    assert total_queued(redis_client) == 4  # the warm-up and three; the repeat was not


def test_after_redis_restarts_the_next_delivery_is_accepted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = create_app(
            {"HOOKFLEET_REDIS_URL": server.url, "HOOKFLEET_STANDARD_VERIFY": "off"}
        ).test_client()
        first = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "before"})
        assert first.status_code == 202
        server.stop()
        server.start()  # same port; the receiver's connections are now dead

        after = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "after"})

        assert after.status_code == 202
        assert total_queued(server.client()) >= 1
    finally:
        server.stop()


def test_redis_out_of_memory_is_503_and_leaves_no_claim(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    redis_client.config_set("maxmemory", 1)
    try:
        full = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "oom"})
    finally:
        redis_client.config_set("maxmemory", 0)

    assert full.status_code == 503
    assert "Retry-After" in full.headers
    assert dedup_keys(redis_client) == []
    assert (
        post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "oom"}).status_code == 202
    )


def test_separate_dedup_and_broker_release_the_claim_when_the_broker_is_down(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    broker = RedisServer(tmp_path / "broker").start()
    try:
        client = create_app(
            {
                "HOOKFLEET_REDIS_URL": redis_url,
                "HOOKFLEET_BROKER_URL": broker.url,
                "HOOKFLEET_STANDARD_VERIFY": "off",
                "HOOKFLEET_REDIS_TIMEOUT_S": "0.5",
            }
        ).test_client()
        broker.stop()

        down = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "split"})

        assert down.status_code == 503
        assert dedup_keys(redis_client) == []

        broker.start()
        back = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "split"})
        again = post_json(client, "/webhooks/standard", EVENT, **{"webhook-id": "split"})

        assert (back.status_code, again.status_code) == (202, 200)
        assert total_queued(broker.client()) == 1
        assert total_queued(redis_client) == 0
    finally:
        broker.stop()

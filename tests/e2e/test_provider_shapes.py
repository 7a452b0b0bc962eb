"""Every event shape Retell, Stripe and Standard Webhooks really send, through the real
fleet (gunicorn and celery workers) into MariaDB and SQLite.

The fixtures are the bodies as sent (``tests/fixtures/<provider>/``, sources in each
folder's SOURCES.md), signed as each sender signs. Each must be accepted with the key
the README's tables give, land on its queue, be recorded, and take its effect (calls
upserted) or none; a re-send of each is a duplicate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, undefer

from ingest.providers import retell, standard, stripe
from ingest.providers.base import body_digest
from models.calls import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.processes import (
    SESSION_FLEET,
    SIGNED_SECRETS,
    Processes,
    request,
    running_fleet,
    signed_fleet_env,
    worker_on,
)
from tests.servers import wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RETELL_KEY = SIGNED_SECRETS["retell"]
STRIPE_SECRET = SIGNED_SECRETS["stripe"]
STANDARD_SECRET = SIGNED_SECRETS["standard"]
CALL_ID = "call_fx_0f3a8b2c4d5e6f7a8b9c0d1e"
CHAT_ID = "chat_fx_9e8d7c6b5a4f3e2d1c0b"
# Retell events that may come more than once per call: keyed with the body's digest.
RECURRING = ("transcript_updated", "transfer_started", "transfer_bridged", "transfer_cancelled")


def fixture(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / f"{name}.json").read_bytes()


def retell_expected(name: str, body: bytes, signed_at_ms: int) -> tuple[str, str]:
    """(event_id, event_type) by the README's Retell table."""
    event = json.loads(body)["event"]
    if event in ("call_inbound", "chat_inbound"):
        return f"{event}:{signed_at_ms}:{body_digest(body)}", event
    subject = json.loads(body).get("call") or json.loads(body).get("chat")
    subject_id = subject.get("call_id") or subject.get("chat_id")
    if event in (*RECURRING, "transfer_ended"):
        return f"{subject_id}:{event}:{body_digest(body)}", event
    return f"{subject_id}:{event}", event


RETELL = sorted(p.stem for p in (FIXTURES / "retell").glob("*.json"))
STRIPE = sorted(p.stem for p in (FIXTURES / "stripe").glob("*.json"))
STANDARD = sorted(p.stem for p in (FIXTURES / "standard").glob("*.json"))


def deliveries() -> list[tuple[str, bytes, dict[str, str], str, str, str]]:
    """(provider, body, headers, event_id, event_type, queue) for every fixture."""
    now = int(time.time())
    out = []
    for name in RETELL:
        body = fixture("retell", name)
        headers = {"x-retell-signature": retell.sign(RETELL_KEY, body, now * 1000)}
        event_id, event_type = retell_expected(name, body, now * 1000)
        out.append(("retell", body, headers, event_id, event_type, Queue.HIGH))
    for name in STRIPE:
        body = fixture("stripe", name)
        # Test mode: an extra v0 signature, which must be ignored.
        signature = stripe.sign(STRIPE_SECRET, body, now) + ",v0=" + "0" * 64
        event = json.loads(body)
        out.append(
            (
                "stripe",
                body,
                {"Stripe-Signature": signature},
                event["id"],
                event["type"],
                Queue.DEFAULT,
            )
        )
    for name in STANDARD:
        body = fixture("standard", name)
        webhook_id = f"msg_fx_{name}"
        value = json.loads(body)
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(now),
            "webhook-signature": standard.sign(STANDARD_SECRET, body, now, webhook_id=webhook_id),
        }
        event_type = value.get("type", "") if isinstance(value, dict) else ""
        out.append(("standard", body, headers, webhook_id, event_type, Queue.DEFAULT))
    return out


def test_the_fixtures_cover_every_event_type() -> None:
    retell_events = {json.loads(fixture("retell", n))["event"] for n in RETELL}
    assert retell_events == {
        "call_started", "call_ended", "call_analyzed", "transcript_updated",
        "transfer_started", "transfer_bridged", "transfer_cancelled", "transfer_ended",
        "chat_started", "chat_ended", "chat_analyzed", "call_inbound", "chat_inbound",
    }  # fmt: skip
    assert {json.loads(fixture("stripe", n))["object"] for n in STRIPE} == {
        "event",
        "v2.core.event",
    }
    kinds = {type(json.loads(fixture("standard", n))).__name__ for n in STANDARD}
    assert kinds == {"dict", "list", "str", "int", "NoneType"}


@pytest.fixture
def fleet(
    backend: str, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Processes]:
    """A fleet verifying SIGNED_SECRETS on ``database_url``: on MariaDB the session's
    signed fleet (tests/conftest.py), on SQLite one of its own on the copy of the
    migrated file (the receiver and a worker on the fixtures' two queues)."""
    if backend == "mariadb":
        yield request.getfixturevalue("signed")
        return
    redis_url = request.getfixturevalue("redis_url")
    with running_fleet(
        tmp_path, redis_url, database_url, names=("web",), **signed_fleet_env()
    ) as processes:
        # One worker for both queues the fixtures go to: the queue a row records is the
        # one its message was sent on, whichever worker took it.
        processes.start("worker_default", worker_on(Queue.HIGH, Queue.DEFAULT))
        yield processes


# Both rows in the signed fleet's xdist group, so the MariaDB row finds it started.
@pytest.mark.xdist_group(SESSION_FLEET)
def test_every_real_shape_is_accepted_keyed_queued_recorded_and_applied(
    fleet: Processes, database_url: str
) -> None:
    sent = deliveries()
    for provider, body, headers, event_id, event_type, _ in sent:
        status, _, answer = request(fleet.base_url, "POST", f"/webhooks/{provider}", body, headers)
        if event_type in ("call_inbound", "chat_inbound"):
            assert (status, list(answer)) == (200, [event_type]), (provider, event_id, answer)
        else:
            assert (status, answer["event_id"]) == (202, event_id), (provider, answer)
    for provider, body, headers, event_id, event_type, _ in sent:
        if event_type in ("call_inbound", "chat_inbound"):
            continue
        status, _, answer = request(fleet.base_url, "POST", f"/webhooks/{provider}", body, headers)
        assert (status, answer["status"]) == (200, "duplicate"), (provider, event_id)

    engine = create_engine(database_url)
    try:

        def settled() -> bool:
            with engine.connect() as connection:
                done = connection.scalar(
                    select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
                )
            return done == len(sent)

        wait_until(settled, 90, "every fixture to be processed", interval=0.5)
        with Session(engine) as session:
            rows = session.execute(
                select(
                    WebhookEvent.provider,
                    WebhookEvent.event_id,
                    WebhookEvent.event_type,
                    WebhookEvent.queue,
                )
            ).all()
            calls = {
                c.call_id: c
                for c in session.scalars(select(Call).options(undefer(Call.transcript)))
            }
            payloads = dict(
                session.execute(
                    select(WebhookEvent.event_id, WebhookEvent.payload).where(
                        WebhookEvent.provider != "retell"
                    )
                ).all()
            )
    finally:
        engine.dispose()

    assert sorted(tuple(r) for r in rows) == sorted(
        (provider, event_id, event_type, queue)
        for provider, _, _, event_id, event_type, queue in sent
    )
    # Calls upserted from the call events; chat and transfer events recorded only.
    assert set(calls) == {CALL_ID, "call_fx_not_connected_77aa"}
    call = calls[CALL_ID]
    assert (call.status, call.duration_ms, call.summary) == (
        "ended",
        90000,
        "Der Anrufer möchte einen Termin.",
    )
    assert call.transcript is not None and "😀" in call.transcript
    assert calls["call_fx_not_connected_77aa"].status == "not_connected"
    assert CHAT_ID not in calls
    # Stored byte for byte (pretty-printed Stripe, scalars and arrays for Standard).
    for provider, body, _, event_id, _, _ in sent:
        if provider != "retell":
            assert payloads[event_id] == body.decode(), event_id


@pytest.mark.parametrize("name", STANDARD)
def test_any_json_payload_is_a_standard_webhook(client, name: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/webhooks/standard",
        data=fixture("standard", name),
        content_type="application/json",
        headers={"webhook-id": f"msg_any_{name}"},
    )

    assert response.status_code == 202, response.get_json()


def test_a_retell_event_added_later_without_a_call_object_is_recorded_not_refused(
    redis_url: str,
) -> None:
    from ingest import create_app

    client = create_app(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_RETELL_VERIFY": "off"}
    ).test_client()
    body = b'{"event":"agent_version_published","agent":{"agent_id":"agent_1","version":4}}'

    response = client.post("/webhooks/retell", data=body, content_type="application/json")

    assert response.status_code == 202
    assert response.get_json()["event_id"] == f"agent_version_published:{body_digest(body)}"

"""Stripe, Cal.com and Retell, checked from the outside: signed as each sender signs,
through the app, against a real Redis."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import create_app
from ingest.providers import calcom, retell, stripe
from ingest.providers.base import Delivery, ShapeError, VerificationError, body_digest
from models.contract import Queue
from models.logs import json_handler
from tests.helpers import dedup_keys, queued, total_queued

STRIPE_SECRET = "whsec_3kTq9vPz7LmN2xR8wY4bC6dF1gH5jK0s"
STRIPE_SECRET_NEW = "whsec_Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
CALCOM_SECRET = "cal-webhook-secret-7d1f0a93"
CALCOM_SECRET_NEW = "cal-webhook-secret-rotated-22b6"
RETELL_KEY = "key_8f3a1c2e9b7d4f60a5e1c3b2d9f7e6a4"
RETELL_KEY_NEW = "key_0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
WRONG_SECRET = "not-the-configured-secret"


def stripe_event(event_id: str = "evt_1PqR5sLkdIwHu7ixTb0aXc2N", **changes: Any) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1718000000,
        "type": "invoice.paid",
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {
            "object": {
                "id": "in_1PqR5rLkdIwHu7ixQm3ZbY9k",
                "object": "invoice",
                "amount_paid": 4200,
                "currency": "eur",
                "customer": "cus_QhX2mB7rT1vK9p",
                "status": "paid",
            }
        },
        **changes,
    }
    return json.dumps(event).encode()


def calcom_booking(
    trigger: str = "BOOKING_CREATED",
    uid: str | None = "bFJeNb2uX8ANpT3JL5EfXw",
    start: str | None = "2025-07-01T09:00:00Z",
    **changes: Any,
) -> bytes:
    booking: dict[str, Any] = {
        "title": "Erstgespräch between Praxis Nord and Anna Weber",
        "endTime": "2025-07-01T09:30:00Z",
        "organizer": {"name": "Praxis Nord", "email": "termine@praxis-nord.example"},
        "attendees": [
            {
                "name": "Anna Weber",
                "email": "anna.weber@example.com",
                "timeZone": "Europe/Berlin",
                "phoneNumber": "+4930123456789",
            }
        ],
        "eventTypeId": 1042,
        "status": "ACCEPTED",
        "responses": {"name": {"label": "your_name", "value": "Anna Weber"}},
        "metadata": {},
        **changes,
    }
    if uid is not None:
        booking["uid"] = uid
    if start is not None:
        booking["startTime"] = start
    body = {"triggerEvent": trigger, "createdAt": "2025-06-20T14:03:11.512Z", "payload": booking}
    return json.dumps(body).encode()


def retell_call(
    event: str = "call_ended", call_id: str = "call_4c1b9e2f7a6d43b8a0e5", **changes: Any
) -> bytes:
    call = {
        "call_id": call_id,
        "agent_id": "agent_2f8c41d0b9e3a7c6",
        "call_type": "phone_call",
        "call_status": "ended",
        "direction": "inbound",
        "from_number": "+4930123456789",
        "to_number": "+4940987654321",
        "start_timestamp": 1718000000000,
        "end_timestamp": 1718000095000,
        "disconnection_reason": "user_hangup",
        "transcript": "Agent: Praxis Nord, guten Tag.\nUser: Ich möchte einen Termin.\n" * 20,
        "recording_url": "https://dxc03zgurdly9.cloudfront.net/call_4c1b9e2f/recording.wav",
        "metadata": {},
        "retell_llm_dynamic_variables": {"customer_name": "Anna Weber"},
        **changes,
    }
    return json.dumps({"event": event, "call": call}).encode()


@dataclass(frozen=True)
class Sender:
    """How one provider signs and where its events go."""

    name: str
    queue: str
    header: str
    secret: str
    new_secret: str
    sign: Callable[[str, bytes, float], str]  # (secret, body, unix seconds) -> header value
    body: bytes
    event_id: str
    event_type: str
    tampered: bytes
    foreign_shape: bytes  # valid JSON object, not a shape this sender sends

    @property
    def url(self) -> str:
        return f"/webhooks/{self.name}"

    def headers(
        self, body: bytes, secret: str | None = None, at: float | None = None
    ) -> dict[str, str]:
        at = time.time() if at is None else at
        return {self.header: self.sign(secret or self.secret, body, at)}


STRIPE = Sender(
    name="stripe",
    queue=Queue.DEFAULT,
    header="Stripe-Signature",
    secret=STRIPE_SECRET,
    new_secret=STRIPE_SECRET_NEW,
    sign=lambda secret, body, at: stripe.sign(secret, body, int(at)),
    body=stripe_event(),
    event_id="evt_1PqR5sLkdIwHu7ixTb0aXc2N",
    event_type="invoice.paid",
    tampered=stripe_event(type="invoice.voided"),
    foreign_shape=json.dumps({"object": "event", "type": "invoice.paid"}).encode(),
)
CALCOM = Sender(
    name="calcom",
    queue=Queue.DEFAULT,
    header="X-Cal-Signature-256",
    secret=CALCOM_SECRET,
    new_secret=CALCOM_SECRET_NEW,
    sign=lambda secret, body, at: calcom.sign(secret, body),
    body=calcom_booking(),
    event_id="BOOKING_CREATED:bFJeNb2uX8ANpT3JL5EfXw:2025-07-01T09:00:00Z:2025-06-20T14:03:11.512Z:anna.weber@example.com",
    event_type="BOOKING_CREATED",
    tampered=calcom_booking(start="2025-07-01T10:00:00Z"),
    foreign_shape=json.dumps({"event": "booking", "booking": {"uid": "x"}}).encode(),
)
RETELL = Sender(
    name="retell",
    queue=Queue.HIGH,
    header="x-retell-signature",
    secret=RETELL_KEY,
    new_secret=RETELL_KEY_NEW,
    sign=lambda secret, body, at: retell.sign(secret, body, int(at * 1000)),
    body=retell_call(),
    event_id="call_4c1b9e2f7a6d43b8a0e5:call_ended",
    event_type="call_ended",
    tampered=retell_call(disconnection_reason="agent_hangup"),
    foreign_shape=json.dumps({"event": "call_ended", "call_id": "call_1"}).encode(),
)
SENDERS = [STRIPE, CALCOM, RETELL]
TIMED = [STRIPE, RETELL]
# Cal.com's custom payload templates can render any JSON object: none is foreign.
SHAPED = [STRIPE, RETELL]
by_sender = pytest.mark.parametrize("sender", SENDERS, ids=lambda s: s.name)


def post(client: FlaskClient, sender: Sender, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(sender.url, data=body, content_type="application/json", headers=headers)


def assert_error(response: Any, redis_client: redis.Redis, status: int, code: str) -> None:
    """The JSON error shape with ``code``, and no trace of the delivery in Redis."""
    assert response.status_code == status, response.get_data()
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert total_queued(redis_client) == 0
    assert dedup_keys(redis_client) == []


def task_kwargs(redis_client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [message["decoded_body"][1] for message in queued(redis_client, queue)]


@pytest.fixture
def make_app(redis_url: str) -> Callable[..., Flask]:
    def build(sender: Sender, *secrets: str, verify: str | None = None) -> Flask:
        env = {"HOOKFLEET_REDIS_URL": redis_url}
        prefix = f"HOOKFLEET_{sender.name.upper()}"
        if secrets:
            env[f"{prefix}_SECRETS"] = ",".join(secrets)
        if verify is not None:
            env[f"{prefix}_VERIFY"] = verify
        return create_app(env)

    return build


@pytest.fixture
def client_for(make_app: Callable[..., Flask]) -> Callable[[Sender], FlaskClient]:
    """The receiver with the sender's one secret configured."""
    return lambda sender: make_app(sender, sender.secret).test_client()


# --- Fixed vectors, computed with `openssl dgst -sha256 -hmac` ----------------------------


def test_stripe_sign_matches_an_independently_computed_signature() -> None:
    body = b'{"id":"evt_test","type":"ping"}'
    expected = "074a8f009149b1199a2e01a3b8ab8e86fe82c67391b5f7b4d383d43cd04e29d4"

    assert stripe.sign("whsec_vector", body, 1700000000) == f"t=1700000000,v1={expected}"


def test_calcom_sign_matches_an_independently_computed_signature() -> None:
    body = b'{"triggerEvent":"PING","payload":{}}'
    expected = "478e745e42c2766d9115b52276cb802bbf1dab0003b18a1bf19a126eafb65129"

    assert calcom.sign("cal_vector", body) == expected


def test_retell_sign_matches_an_independently_computed_signature() -> None:
    body = b'{"event":"call_started","call":{"call_id":"c1"}}'
    expected = "71350fcac75e3b94f1a5fc0a9b66a6a8819e0db890b4b84965981216a2792579"

    assert retell.sign("key_vector", body, 1700000000123) == f"v=1700000000123,d={expected}"


# --- Accepted and duplicate ---------------------------------------------------------------


@by_sender
def test_signed_delivery_is_accepted_202_and_queued_on_its_queue(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    headers = {**sender.headers(sender.body), "User-Agent": f"{sender.name}-sender/1.0"}

    response = post(client_for(sender), sender, sender.body, headers)

    assert response.status_code == 202, response.get_data()
    assert response.get_json()["status"] == "accepted"
    assert response.get_json()["event_id"] == sender.event_id
    [kwargs] = task_kwargs(redis_client, sender.queue)
    assert kwargs["provider"] == sender.name
    assert kwargs["event_id"] == sender.event_id
    assert kwargs["event_type"] == sender.event_type
    assert kwargs["queue"] == sender.queue
    assert kwargs["payload"] == sender.body.decode()
    assert kwargs["headers"]["user-agent"] == f"{sender.name}-sender/1.0"
    assert sender.header.lower() not in kwargs["headers"]  # a signature is never recorded
    assert total_queued(redis_client) == 1
    assert len(dedup_keys(redis_client)) == 1


@by_sender
def test_same_delivery_again_is_200_duplicate_and_queued_once(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    client = client_for(sender)
    headers = sender.headers(sender.body)

    first = post(client, sender, sender.body, headers)
    again = post(client, sender, sender.body, headers)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    assert again.get_json()["original_correlation_id"] == first.get_json()["correlation_id"]
    assert total_queued(redis_client) == 1


def test_calcom_records_its_webhook_version_header(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    headers = {**CALCOM.headers(CALCOM.body), "X-Cal-Webhook-Version": "2021-10-20"}

    assert post(client_for(CALCOM), CALCOM, CALCOM.body, headers).status_code == 202

    [kwargs] = task_kwargs(redis_client, CALCOM.queue)
    assert kwargs["headers"]["x-cal-webhook-version"] == "2021-10-20"


# --- Rejected: signature -------------------------------------------------------------------


@by_sender
def test_tampered_body_is_rejected_401_invalid_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    headers = sender.headers(sender.body)

    response = post(client_for(sender), sender, sender.tampered, headers)

    assert_error(response, redis_client, 401, "invalid_signature")


@by_sender
def test_delivery_signed_with_a_wrong_secret_is_rejected_401_invalid_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    headers = sender.headers(sender.body, secret=WRONG_SECRET)

    response = post(client_for(sender), sender, sender.body, headers)

    assert_error(response, redis_client, 401, "invalid_signature")


@pytest.mark.parametrize("sender", TIMED, ids=lambda s: s.name)
@pytest.mark.parametrize("offset_s", [-301, -86400, 301], ids=["301s-old", "1d-old", "ahead"])
def test_timestamp_outside_tolerance_is_rejected_401_timestamp_out_of_tolerance(
    client_for: Callable[[Sender], FlaskClient],
    redis_client: redis.Redis,
    sender: Sender,
    offset_s: int,
) -> None:
    # Correctly signed: only the timestamp's distance from our clock is wrong.
    headers = sender.headers(sender.body, at=time.time() + offset_s)

    response = post(client_for(sender), sender, sender.body, headers)

    assert_error(response, redis_client, 401, "timestamp_out_of_tolerance")


@by_sender
def test_missing_signature_header_is_rejected_401_missing_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    response = post(client_for(sender), sender, sender.body, {})

    assert_error(response, redis_client, 401, "missing_signature")


def test_calcom_no_secret_provided_is_rejected_401_missing_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    headers = {"X-Cal-Signature-256": "no-secret-provided"}

    response = post(client_for(CALCOM), CALCOM, CALCOM.body, headers)

    assert_error(response, redis_client, 401, "missing_signature")
    assert "secret" in response.get_json()["error"]["message"]
    assert "Cal.com" in response.get_json()["error"]["message"]


def _stripe_good() -> str:
    return STRIPE.headers(STRIPE.body)[STRIPE.header]


@pytest.mark.parametrize(
    ("sender", "value"),
    [
        pytest.param(STRIPE, lambda: "v1=" + _stripe_good().split("v1=")[1], id="stripe-no-t"),
        pytest.param(STRIPE, lambda: _stripe_good().split(",")[0], id="stripe-no-v1"),
        pytest.param(STRIPE, lambda: _stripe_good().replace("v1=", "v0="), id="stripe-v0-only"),
        pytest.param(STRIPE, lambda: _stripe_good().replace("t=", "t=+"), id="stripe-signed-t"),
        pytest.param(
            STRIPE, lambda: _stripe_good().replace("t=", "t=9" * 400 + "0"), id="stripe-huge-t"
        ),
        pytest.param(STRIPE, lambda: f"t=1,{_stripe_good()}", id="stripe-two-t"),
        pytest.param(CALCOM, lambda: "abc123", id="calcom-short"),
        pytest.param(
            CALCOM,
            lambda: "sha256=" + calcom.sign(CALCOM_SECRET, CALCOM.body),
            id="calcom-prefixed",
        ),
        pytest.param(CALCOM, lambda: "z" * 64, id="calcom-not-hex"),
        pytest.param(RETELL, lambda: "d=" + "0" * 64, id="retell-no-v"),
        pytest.param(RETELL, lambda: f"v={int(time.time() * 1000)}", id="retell-no-d"),
        pytest.param(RETELL, lambda: f"v={time.time()},d={'0' * 64}", id="retell-float-v"),
        pytest.param(
            RETELL, lambda: f"v={int(time.time() * 1000)},d=not-hex", id="retell-d-not-hex"
        ),
        pytest.param(RETELL, lambda: "9" * 400, id="retell-garbage"),
    ],
)
def test_malformed_signature_header_is_rejected_401_malformed_signature(
    client_for: Callable[[Sender], FlaskClient],
    redis_client: redis.Redis,
    sender: Sender,
    value: Callable[[], str],
) -> None:
    response = post(client_for(sender), sender, sender.body, {sender.header: value()})

    assert_error(response, redis_client, 401, "malformed_signature")


@pytest.mark.parametrize(
    ("sender", "value", "code"),
    [
        (STRIPE, lambda: f"t={int(time.time())},v1=\u00e9{'0' * 63}", "invalid_signature"),
        (CALCOM, lambda: "\u00e9" * 64, "malformed_signature"),
        (RETELL, lambda: f"v={int(time.time() * 1000)},d=\u00e9{'0' * 63}", "malformed_signature"),
    ],
    ids=["stripe", "calcom", "retell"],
)
def test_non_ascii_signature_is_rejected_401_not_500(
    client_for: Callable[[Sender], FlaskClient],
    redis_client: redis.Redis,
    sender: Sender,
    value: Callable[[], str],
    code: str,
) -> None:
    # hmac.compare_digest raises TypeError for non-ASCII str: compare bytes.
    response = post(client_for(sender), sender, sender.body, {sender.header: value()})

    assert_error(response, redis_client, 401, code)


# --- Rotation and several signatures --------------------------------------------------------


@by_sender
@pytest.mark.parametrize("which", ["old", "new"])
def test_during_rotation_a_delivery_signed_with_either_secret_is_accepted(
    make_app: Callable[..., Flask], redis_client: redis.Redis, sender: Sender, which: str
) -> None:
    client = make_app(sender, sender.secret, sender.new_secret).test_client()
    secret = sender.secret if which == "old" else sender.new_secret

    response = post(client, sender, sender.body, sender.headers(sender.body, secret=secret))

    assert response.status_code == 202
    assert total_queued(redis_client) == 1


@by_sender
def test_during_rotation_a_third_secret_is_still_rejected(
    make_app: Callable[..., Flask], redis_client: redis.Redis, sender: Sender
) -> None:
    client = make_app(sender, sender.secret, sender.new_secret).test_client()

    response = post(client, sender, sender.body, sender.headers(sender.body, WRONG_SECRET))

    assert_error(response, redis_client, 401, "invalid_signature")


@pytest.mark.parametrize("right_first", [False, True], ids=["wrong-then-right", "right-then-wrong"])
def test_stripe_header_with_several_v1_one_right_is_accepted(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, right_first: bool
) -> None:
    now = int(time.time())
    right = stripe.sign(STRIPE_SECRET, STRIPE.body, now).split(",")[1]
    wrong = stripe.sign(WRONG_SECRET, STRIPE.body, now).split(",")[1]
    entries = [right, wrong] if right_first else [wrong, right]
    # As Stripe sends it while an endpoint secret is rolled, with a v0 it ignores.
    header = f"t={now},{','.join(entries)},v0={'0' * 64}"

    response = post(client_for(STRIPE), STRIPE, STRIPE.body, {STRIPE.header: header})

    assert response.status_code == 202
    assert total_queued(redis_client) == 1


def test_stripe_header_with_several_v1_all_wrong_is_rejected_401_invalid_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    now = int(time.time())
    wrongs = [stripe.sign(s, STRIPE.body, now).split(",")[1] for s in (WRONG_SECRET, "x")]
    header = f"t={now},{','.join(wrongs)}"

    response = post(client_for(STRIPE), STRIPE, STRIPE.body, {STRIPE.header: header})

    assert_error(response, redis_client, 401, "invalid_signature")


# --- Shape and configuration ---------------------------------------------------------------


@pytest.mark.parametrize("sender", SHAPED, ids=lambda s: s.name)
def test_correctly_signed_foreign_shape_is_422_unknown_shape(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, sender: Sender
) -> None:
    body = sender.foreign_shape

    response = post(client_for(sender), sender, body, sender.headers(body))

    assert_error(response, redis_client, 422, "unknown_shape")


@pytest.mark.parametrize(
    ("sender", "payload"),
    [
        pytest.param(STRIPE, {"id": "", "type": "invoice.paid"}, id="stripe-empty-id"),
        pytest.param(STRIPE, {"id": 42, "type": "invoice.paid"}, id="stripe-int-id"),
        pytest.param(STRIPE, {"id": "evt_1", "type": None}, id="stripe-null-type"),
        pytest.param(RETELL, {"event": "", "call": {"call_id": "call_1"}}, id="retell-empty-event"),
        pytest.param(RETELL, {"event": "call_ended", "call": None}, id="retell-null-call"),
        pytest.param(
            RETELL,
            {"event": "chat_ended", "call": {"call_id": "call_1"}},
            id="retell-chat-event-with-call",
        ),
    ],
)
def test_near_miss_shapes_are_422_unknown_shape(
    client_for: Callable[[Sender], FlaskClient],
    redis_client: redis.Redis,
    sender: Sender,
    payload: dict[str, Any],
) -> None:
    body = json.dumps(payload).encode()

    response = post(client_for(sender), sender, body, sender.headers(body))

    assert_error(response, redis_client, 422, "unknown_shape")


@pytest.mark.parametrize(
    "payload",
    [
        {"event": "booking", "booking": {"uid": "x"}},
        {"triggerEvent": "", "payload": {}},
        {"triggerEvent": "BOOKING_CREATED", "payload": "uid=1"},
        {"triggerEvent": ["BOOKING_CREATED"], "payload": {}},
    ],
    ids=["foreign", "empty-trigger", "payload-string", "trigger-list"],
)
def test_calcom_any_signed_object_is_a_custom_template_recorded_by_its_digest(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis, payload: Any
) -> None:
    # A custom payload template (sendPayload.ts applyTemplate) can render any object.
    body = json.dumps(payload).encode()

    response = post(client_for(CALCOM), CALCOM, body, CALCOM.headers(body))

    assert response.status_code == 202, response.get_data()
    [kwargs] = task_kwargs(redis_client, CALCOM.queue)
    assert kwargs["event_id"].endswith(body_digest(body))


@by_sender
def test_verification_on_without_a_secret_is_503_provider_not_configured(
    make_app: Callable[..., Flask], redis_client: redis.Redis, sender: Sender
) -> None:
    client = make_app(sender).test_client()

    response = post(client, sender, sender.body, sender.headers(sender.body))

    assert_error(response, redis_client, 503, "provider_not_configured")


@by_sender
def test_verification_off_lets_an_unsigned_delivery_in(
    make_app: Callable[..., Flask], redis_client: redis.Redis, sender: Sender
) -> None:
    client = make_app(sender, verify="off").test_client()

    response = post(client, sender, sender.body, {})

    assert response.status_code == 202
    [kwargs] = task_kwargs(redis_client, sender.queue)
    assert kwargs["event_id"] == sender.event_id


# --- Which deliveries are the same event ----------------------------------------------------


def deliver(client: FlaskClient, sender: Sender, *bodies: bytes) -> list[int]:
    return [post(client, sender, body, sender.headers(body)).status_code for body in bodies]


def test_calcom_reschedule_of_a_booking_is_a_new_event(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    created = calcom_booking("BOOKING_CREATED", start="2025-07-01T09:00:00Z")
    moved = calcom_booking("BOOKING_RESCHEDULED", start="2025-07-03T14:00:00Z")
    moved_again = calcom_booking("BOOKING_RESCHEDULED", start="2025-07-04T08:00:00Z")

    assert deliver(client_for(CALCOM), CALCOM, created, moved, moved_again) == [202, 202, 202]

    ids = [kwargs["event_id"] for kwargs in task_kwargs(redis_client, CALCOM.queue)]
    assert ids == [
        "BOOKING_CREATED:bFJeNb2uX8ANpT3JL5EfXw:2025-07-01T09:00:00Z:2025-06-20T14:03:11.512Z:anna.weber@example.com",
        "BOOKING_RESCHEDULED:bFJeNb2uX8ANpT3JL5EfXw:2025-07-03T14:00:00Z:2025-06-20T14:03:11.512Z:anna.weber@example.com",
        "BOOKING_RESCHEDULED:bFJeNb2uX8ANpT3JL5EfXw:2025-07-04T08:00:00Z:2025-06-20T14:03:11.512Z:anna.weber@example.com",
    ]


def test_calcom_retry_is_a_duplicate_and_a_new_created_at_is_a_new_event(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    # Cal.com stamps createdAt once per trigger occurrence; its retry re-sends the same
    # body. The same uid, start and attendee at a later createdAt is a new occurrence
    # (a seat given up and booked again), which the worker applies idempotently.
    first = calcom_booking()
    again = first.replace(b"2025-06-20T14:03:11.512Z", b"2025-06-20T14:03:42.907Z")
    assert again != first

    assert deliver(client_for(CALCOM), CALCOM, first, first, again) == [202, 200, 202]
    assert total_queued(redis_client) == 2


def test_calcom_event_without_start_time_is_keyed_by_trigger_and_uid(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    ended = calcom_booking("MEETING_ENDED", start=None)

    assert deliver(client_for(CALCOM), CALCOM, ended) == [202]

    [kwargs] = task_kwargs(redis_client, Queue.HIGH)  # a meeting is happening now
    assert kwargs["event_id"] == "MEETING_ENDED:bFJeNb2uX8ANpT3JL5EfXw:"


def test_calcom_event_without_a_uid_is_keyed_by_the_body_digest(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    ping = json.dumps(
        {
            "triggerEvent": "PING",
            "createdAt": "2025-06-20T14:03:11.512Z",
            "payload": {"type": "Test", "title": "Test trigger event"},
        }
    ).encode()

    assert deliver(client_for(CALCOM), CALCOM, ping, ping) == [202, 200]

    [kwargs] = task_kwargs(redis_client, Queue.LOW)  # the test ping is not urgent
    assert kwargs["event_id"] == f"PING:{body_digest(ping)}"
    assert kwargs["event_type"] == "PING"


def test_retell_call_ended_and_call_analyzed_of_one_call_are_two_events(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    ended = retell_call("call_ended")
    analyzed = retell_call("call_analyzed", call_analysis={"call_successful": True})

    assert deliver(client_for(RETELL), RETELL, ended, analyzed) == [202, 202]

    ids = [kwargs["event_id"] for kwargs in task_kwargs(redis_client, RETELL.queue)]
    assert ids == [
        "call_4c1b9e2f7a6d43b8a0e5:call_ended",
        "call_4c1b9e2f7a6d43b8a0e5:call_analyzed",
    ]
    assert total_queued(redis_client) == 2  # all on hookfleet.high


def test_retell_call_ended_twice_is_one_event(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    # Retell is known to send call_ended twice within a second; each is signed anew.
    client = client_for(RETELL)
    first = post(client, RETELL, RETELL.body, RETELL.headers(RETELL.body, at=time.time() - 1))
    second = post(client, RETELL, RETELL.body, RETELL.headers(RETELL.body))

    assert (first.status_code, second.status_code) == (202, 200)
    assert total_queued(redis_client) == 1


def test_retell_transcript_updates_of_one_call_are_separate_events_but_dedup_when_resent(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    early = retell_call("transcript_updated", call_status="ongoing", transcript="Agent: Hallo")
    later = retell_call("transcript_updated", call_status="ongoing", transcript="Agent: Hallo\n")

    assert deliver(client_for(RETELL), RETELL, early, later, early) == [202, 202, 200]
    assert total_queued(redis_client) == 2


def test_retell_chat_events_are_keyed_by_chat_id(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    body = json.dumps(
        {"event": "chat_ended", "chat": {"chat_id": "chat_9a8b7c", "chat_status": "ended"}}
    ).encode()

    assert deliver(client_for(RETELL), RETELL, body, body) == [202, 200]

    [kwargs] = task_kwargs(redis_client, RETELL.queue)
    assert kwargs["event_id"] == "chat_9a8b7c:chat_ended"


# --- Retell identify() and verify directly ----------------------------------------------------


def delivery(body: bytes, headers: dict[str, str] | None = None) -> Delivery:
    return Delivery(body=body, headers=headers or {}, received_at=time.time())


@pytest.mark.parametrize("event", ["call_inbound", "chat_inbound"])
def test_retell_inbound_is_identified_inline_by_event_and_body(event: str) -> None:
    payload = {event: {"from_number": "+4930123456789", "to_number": "+4940987654321"}}
    body = json.dumps({"event": event, **payload}).encode()

    identity = retell.PROVIDER.identify(delivery(body), json.loads(body))

    assert identity.inline is True
    assert identity.event_type == event
    assert identity.event_id == f"{event}:{body_digest(body)}"


def test_retell_call_ended_is_not_inline() -> None:
    assert retell.PROVIDER.identify(delivery(RETELL.body), json.loads(RETELL.body)).inline is False


@pytest.mark.parametrize("inbound", [None, "+4930123456789", ["x"]], ids=["null", "str", "list"])
def test_retell_inbound_without_its_object_is_a_shape_error(inbound: Any) -> None:
    body = json.dumps({"event": "call_inbound", "call_inbound": inbound}).encode()

    with pytest.raises(ShapeError):
        retell.PROVIDER.identify(delivery(body), json.loads(body))


def test_retell_update_without_a_call_id_is_keyed_by_the_body_digest() -> None:
    # Recorded only, so it needs no call id; a call_started without one is refused
    # (tests/integration/test_call_fields.py): the worker could not make a call of it.
    body = json.dumps({"event": "transcript_updated", "call": {"agent_id": "a_1"}}).encode()

    identity = retell.PROVIDER.identify(delivery(body), json.loads(body))

    assert identity.event_id == body_digest(body)


@pytest.mark.parametrize("edge_ms", [-300_000, 300_000], ids=["oldest", "newest"])
def test_retell_timestamp_at_the_tolerance_edge_is_accepted_and_past_it_rejected(
    edge_ms: int,
) -> None:
    now = 1718000000.0
    sent_ms = int(now * 1000) + edge_ms
    signed = delivery(
        RETELL.body, {"x-retell-signature": retell.sign(RETELL_KEY, RETELL.body, sent_ms)}
    )

    retell.verify_retell_signature(signed, (RETELL_KEY,), 300, now=now)
    with pytest.raises(VerificationError) as caught:
        # 10 ms past the edge (float seconds lose sub-millisecond precision).
        later = now + (0.01 if edge_ms < 0 else -0.01)
        retell.verify_retell_signature(signed, (RETELL_KEY,), 300, now=later)
    assert caught.value.code == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("edge_s", [-300, 300], ids=["oldest", "newest"])
def test_stripe_timestamp_at_the_tolerance_edge_is_accepted_and_past_it_rejected(
    edge_s: int,
) -> None:
    now = 1718000000
    signed = delivery(
        STRIPE.body, {"stripe-signature": stripe.sign(STRIPE_SECRET, STRIPE.body, now + edge_s)}
    )

    stripe.verify_stripe_signature(signed, (STRIPE_SECRET,), 300, now=now)
    with pytest.raises(VerificationError) as caught:
        later = now + (1 if edge_s < 0 else -1)  # one second past the edge
        stripe.verify_stripe_signature(signed, (STRIPE_SECRET,), 300, now=later)
    assert caught.value.code == "timestamp_out_of_tolerance"


# --- Property: nothing unsigned ever gets in, nothing crashes ------------------------------------


# What a real HTTP server can hand over in a header value: latin-1, no CR/LF/NUL/DEL.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=["Cc"]),
    max_size=120,
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
_near_miss_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": _json_values | st.from_regex(r"evt_[A-Za-z0-9]{1,24}", fullmatch=True),
        "type": _json_values | st.just("invoice.paid"),
        "triggerEvent": _json_values | st.just("BOOKING_CREATED"),
        "payload": _json_values | st.just({"uid": "u1", "startTime": "2025-07-01T09:00:00Z"}),
        "event": _json_values | st.sampled_from(["call_ended", "call_inbound", "chat_ended"]),
        "call": _json_values | st.just({"call_id": "call_1"}),
        "call_inbound": _json_values | st.just({"from_number": "+4930123456789"}),
    },
)
bodies = st.one_of(
    _near_miss_objects.map(lambda d: json.dumps(d).encode()),
    st.dictionaries(st.text(max_size=10), _json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
_hex64 = st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)
_near_now_s = st.integers(-400, 400).map(lambda d: int(time.time()) + d)
signature_values = st.one_of(
    header_text,
    st.just("no-secret-provided"),
    _hex64,
    st.builds(lambda t, h: f"t={t},v1={h}", _near_now_s.map(str) | header_text, _hex64),
    st.builds(lambda t, v: f"t={t},v1={v}", _near_now_s, header_text),
    st.builds(lambda t, v: f"v={t},d={v}", _near_now_s.map(lambda s: str(s * 1000)), header_text),
    st.builds(lambda t, h: f"v={t},d={h}", _near_now_s.map(lambda s: str(s * 1000)), _hex64),
    st.integers(-(10**30), 10**30).map(lambda n: f"t={n},v1=00,v={n},d=00"),
    st.lists(header_text | _hex64.map("v1={}".format), max_size=5).map(",".join),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", ""]
)


class Receivers:
    """One receiver app per sender (both its secrets configured), built at its first
    example and kept for the test's other examples, as one running receiver serves many
    deliveries: building the app was ~6 ms of each example's ~15."""

    def __init__(self, make_app: Callable[..., Flask]) -> None:
        self.make_app = make_app
        self.apps: dict[str, Flask] = {}

    def client(self, sender: Sender) -> FlaskClient:
        if sender.name not in self.apps:
            self.apps[sender.name] = self.make_app(sender, sender.secret, sender.new_secret)
        return self.apps[sender.name].test_client()


@pytest.fixture
def receivers(make_app: Callable[..., Flask]) -> Receivers:
    return Receivers(make_app)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sender=st.sampled_from(SENDERS),
    body=bodies,
    signature=st.none() | signature_values,
    forge=st.booleans(),
    content_type=st.sampled_from(["application/json"]) | content_types,
)
@pytest.mark.slow
def test_arbitrary_unsigned_deliveries_never_5xx_and_never_queue(
    receivers: Receivers,
    redis_client: redis.Redis,
    sender: Sender,
    body: bytes,
    signature: str | None,
    forge: bool,
    content_type: str,
) -> None:
    client = receivers.client(sender)
    headers = {} if signature is None else {sender.header: signature}
    if forge:
        # Well formed in every way, but signed with a key the receiver does not hold.
        headers = sender.headers(body, secret=WRONG_SECRET)

    response = client.post(sender.url, data=body, content_type=content_type, headers=headers)

    assert response.status_code < 500, response.get_data()
    assert response.status_code >= 400  # nothing here is signed with a configured secret
    assert set(response.get_json()["error"]) == {"code", "message"}
    assert total_queued(redis_client) == 0
    assert dedup_keys(redis_client) == []


# --- Content types: Cal.com users can change it with a custom payload template ------------


def test_calcom_json_sent_with_another_content_type_is_accepted_on_its_signature(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    body = CALCOM.body
    response = client_for(CALCOM).post(
        CALCOM.url, data=body, content_type="text/plain", headers=CALCOM.headers(body)
    )

    assert response.status_code == 202
    assert task_kwargs(redis_client, CALCOM.queue)[0]["event_id"] == CALCOM.event_id


def test_calcom_custom_template_that_is_not_json_is_accepted_and_kept_whole(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    # sendPayload.ts: a template that is not JSON is sent as is, form-urlencoded.
    body = b"title=Haircut&uid=bk_1"
    response = client_for(CALCOM).post(
        CALCOM.url,
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers=CALCOM.headers(body),
    )

    assert response.status_code == 202, response.get_data()
    [kwargs] = task_kwargs(redis_client, CALCOM.queue)
    wrapped = json.loads(kwargs["payload"])["hookfleet_reframed"]
    assert wrapped["body"] == body.decode()
    assert wrapped["fields"] == {"title": "Haircut", "uid": "bk_1"}


def test_calcom_unsigned_form_body_is_still_401_not_422(
    client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    response = client_for(CALCOM).post(
        CALCOM.url, data=b"a=1", content_type="application/x-www-form-urlencoded"
    )

    assert_error(response, redis_client, 401, "missing_signature")


@pytest.mark.parametrize("sender", [STRIPE, RETELL], ids=lambda s: s.name)
def test_other_providers_refuse_a_non_json_content_type_415(
    sender: Sender, client_for: Callable[[Sender], FlaskClient], redis_client: redis.Redis
) -> None:
    response = client_for(sender).post(
        sender.url, data=sender.body, content_type="text/plain", headers=sender.headers(sender.body)
    )

    assert_error(response, redis_client, 415, "unsupported_media_type")


# --- What the logs say, and what they never say ---------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every hookfleet log line written while the test runs, as the receiver writes it."""
    stream = io.StringIO()
    handler = json_handler(stream)
    logger = logging.getLogger("hookfleet")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@by_sender
def test_logs_give_the_reason_and_correlation_id_and_never_a_secret_or_signature(
    make_app: Callable[..., Flask], json_log: io.StringIO, sender: Sender
) -> None:
    client = make_app(sender, sender.secret, sender.new_secret).test_client()
    good = sender.headers(sender.body)
    forged = sender.headers(sender.body, secret=WRONG_SECRET)

    accepted = post(client, sender, sender.body, {**good, "X-Request-ID": "req-good"})
    rejected = post(client, sender, sender.body, {**forged, "X-Request-ID": "req-forged"})

    assert (accepted.status_code, rejected.status_code) == (202, 401)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    rejections = [line for line in lines if line.get("correlation_id") == "req-forged"]
    assert any(line.get("reason") == "invalid_signature" for line in rejections), lines
    text = json_log.getvalue()
    for secret in (sender.secret, sender.new_secret, WRONG_SECRET):
        assert secret not in text
    for value in (*good.values(), *forged.values()):
        for digest in re.findall(r"[0-9a-fA-F]{64}", value):
            assert digest not in text

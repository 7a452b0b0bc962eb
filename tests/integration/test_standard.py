"""Standard Webhooks signatures, checked from the outside: the spec's vector, then the app."""

from __future__ import annotations

import base64
import json
import string
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import create_app
from ingest.providers.base import Delivery, VerificationError
from ingest.providers.standard import sign, verify_standard_signature
from tests.helpers import dedup_keys, queued, total_queued

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET_A = "whsec_" + base64.b64encode(b"A" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(bytes(range(24, 56))).decode()
SECRET_OTHER = "whsec_" + base64.b64encode(b"not the configured secret 123456").decode()

URL = "/webhooks/standard"
EVENT = {"type": "invoice.paid", "data": {"id": "in_1", "amount": 4200}}
BODY = json.dumps(EVENT).encode()


def spec_delivery(body: bytes = SPEC_BODY, signature: str = SPEC_SIGNATURE) -> Delivery:
    return Delivery(
        body=body,
        headers={
            "webhook-id": SPEC_ID,
            "webhook-timestamp": str(SPEC_TIMESTAMP),
            "webhook-signature": signature,
        },
        received_at=SPEC_TIMESTAMP,
    )


def signed_headers(
    secret: str, webhook_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, body, timestamp, webhook_id=webhook_id),
    }


def post(client: FlaskClient, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(URL, data=body, content_type="application/json", headers=headers)


def assert_rejected(response: Any, redis_client: redis.Redis, code: str) -> None:
    """A 401 with the JSON error shape, and no trace of the delivery in Redis."""
    assert response.status_code == 401
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert total_queued(redis_client) == 0
    assert dedup_keys(redis_client) == []


@pytest.fixture
def make_app(redis_url: str) -> Callable[..., Flask]:
    def build(*secrets: str, tolerance_s: int | None = None) -> Flask:
        env = {
            "HOOKFLEET_REDIS_URL": redis_url,
            "HOOKFLEET_STANDARD_SECRETS": ",".join(secrets or (SECRET_A,)),
        }
        if tolerance_s is not None:
            env["HOOKFLEET_STANDARD_TOLERANCE_S"] = str(tolerance_s)
        return create_app(env)

    return build


@pytest.fixture
def signed_client(make_app: Callable[..., Flask]) -> FlaskClient:
    """The receiver with SECRET_A configured and a 300 s tolerance."""
    return make_app(SECRET_A, tolerance_s=300).test_client()


# --- The specification's test vector, verified directly -------------------------------


def test_spec_test_vector_verifies() -> None:
    verify_standard_signature(spec_delivery(), (SPEC_SECRET,), 300, now=SPEC_TIMESTAMP)


def test_sign_reproduces_the_spec_test_vector_signature() -> None:
    assert sign(SPEC_SECRET, SPEC_BODY, SPEC_TIMESTAMP, webhook_id=SPEC_ID) == SPEC_SIGNATURE


def test_spec_test_vector_with_one_body_byte_changed_is_invalid() -> None:
    tampered = SPEC_BODY.replace(b"2432232314", b"2432232315")
    assert len(tampered) == len(SPEC_BODY) and tampered != SPEC_BODY

    with pytest.raises(VerificationError) as caught:
        verify_standard_signature(
            spec_delivery(body=tampered), (SPEC_SECRET,), 300, now=SPEC_TIMESTAMP
        )

    assert caught.value.code == "invalid_signature"


def test_spec_test_vector_checked_long_after_its_timestamp_is_out_of_tolerance() -> None:
    with pytest.raises(VerificationError) as caught:
        verify_standard_signature(spec_delivery(), (SPEC_SECRET,), 300, now=SPEC_TIMESTAMP + 301)

    assert caught.value.code == "timestamp_out_of_tolerance"


# --- Through the app: accepted, duplicate -----------------------------------------------


def test_signed_delivery_is_accepted_202_and_queued(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    headers = signed_headers(SECRET_A, "msg_signed_1", BODY)

    response = post(signed_client, BODY, headers)

    assert response.status_code == 202
    assert response.get_json()["status"] == "accepted"
    assert response.get_json()["event_id"] == "msg_signed_1"
    [message] = queued(redis_client)
    _args, kwargs, _embed = message["decoded_body"]
    assert kwargs["provider"] == "standard"
    assert kwargs["event_id"] == "msg_signed_1"
    assert kwargs["event_type"] == "invoice.paid"
    assert kwargs["payload"] == BODY.decode()
    assert kwargs["headers"]["webhook-id"] == "msg_signed_1"
    assert "webhook-signature" not in kwargs["headers"]  # a signature is never recorded
    assert total_queued(redis_client) == 1
    assert len(dedup_keys(redis_client)) == 1


def test_replayed_signed_delivery_is_200_duplicate_and_queued_once(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    headers = signed_headers(SECRET_A, "msg_replayed", BODY)

    first = post(signed_client, BODY, headers)
    replay = post(signed_client, BODY, headers)

    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.get_json()["status"] == "duplicate"
    assert replay.get_json()["original_correlation_id"] == first.get_json()["correlation_id"]
    assert total_queued(redis_client) == 1


# --- Through the app: rejections ----------------------------------------------------------


def test_tampered_body_is_rejected_401_invalid_signature(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    headers = signed_headers(SECRET_A, "msg_tampered", BODY)
    tampered = json.dumps({**EVENT, "data": {"id": "in_1", "amount": 1}}).encode()

    response = post(signed_client, tampered, headers)

    assert_rejected(response, redis_client, "invalid_signature")


def test_delivery_signed_with_a_wrong_secret_is_rejected_401_invalid_signature(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    response = post(signed_client, BODY, signed_headers(SECRET_OTHER, "msg_wrong_key", BODY))

    assert_rejected(response, redis_client, "invalid_signature")


def test_signature_moved_to_another_webhook_id_is_rejected_401_invalid_signature(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    headers = {**signed_headers(SECRET_A, "msg_original", BODY), "webhook-id": "msg_forged"}

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "invalid_signature")


def test_signature_moved_to_another_timestamp_is_rejected_401_invalid_signature(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    headers = {
        **signed_headers(SECRET_A, "msg_retimed", BODY, timestamp=now - 10),
        "webhook-timestamp": str(now),
    }

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "invalid_signature")


@pytest.mark.parametrize(
    "offset_s", [-301, -3600, 301, 3600], ids=["301s-old", "1h-old", "301s-ahead", "1h-ahead"]
)
def test_timestamp_outside_tolerance_is_rejected_401_timestamp_out_of_tolerance(
    signed_client: FlaskClient, redis_client: redis.Redis, offset_s: int
) -> None:
    # Correctly signed: only the timestamp's distance from our clock is wrong.
    headers = signed_headers(SECRET_A, "msg_stale", BODY, timestamp=int(time.time()) + offset_s)

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "timestamp_out_of_tolerance")


def test_configured_tolerance_decides_what_is_too_old(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(SECRET_A, tolerance_s=60).test_client()
    now = int(time.time())

    recent = post(client, BODY, signed_headers(SECRET_A, "msg_recent", BODY, timestamp=now - 30))
    old = post(client, BODY, signed_headers(SECRET_A, "msg_old", BODY, timestamp=now - 120))

    assert recent.status_code == 202
    assert old.status_code == 401
    assert old.get_json()["error"]["code"] == "timestamp_out_of_tolerance"
    assert total_queued(redis_client) == 1


@pytest.mark.parametrize(
    "missing",
    [
        ("webhook-id",),
        ("webhook-timestamp",),
        ("webhook-signature",),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ],
    ids=["no-id", "no-timestamp", "no-signature", "none"],
)
def test_missing_headers_are_rejected_401_missing_signature(
    signed_client: FlaskClient, redis_client: redis.Redis, missing: tuple[str, ...]
) -> None:
    headers = signed_headers(SECRET_A, "msg_missing", BODY)
    for name in missing:
        del headers[name]

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "missing_signature")


@pytest.mark.parametrize("timestamp", ["soon", "1614265330.5", "0x6037", "12e8", "-"])
def test_non_integer_timestamp_is_rejected_401_malformed_signature(
    signed_client: FlaskClient, redis_client: redis.Redis, timestamp: str
) -> None:
    headers = {**signed_headers(SECRET_A, "msg_bad_ts", BODY), "webhook-timestamp": timestamp}

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "malformed_signature")


@pytest.mark.parametrize(
    "make_signature",
    [
        lambda good: good.replace("v1,", "v2,", 1),
        lambda good: good.removeprefix("v1,"),
        lambda good: "v1,",
        lambda good: "v1a," + good.removeprefix("v1,"),
        lambda good: "v2,abc v1a,def",
    ],
    ids=["v2-only", "no-version", "v1-empty", "v1a", "several-non-v1"],
)
def test_signature_header_without_a_v1_entry_is_rejected_401_malformed_signature(
    signed_client: FlaskClient,
    redis_client: redis.Redis,
    make_signature: Callable[[str], str],
) -> None:
    headers = signed_headers(SECRET_A, "msg_no_v1", BODY)
    headers["webhook-signature"] = make_signature(headers["webhook-signature"])

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "malformed_signature")


# --- Rotation and several signatures -----------------------------------------------------


@pytest.mark.parametrize("signing_secret", [SECRET_A, SECRET_B], ids=["old", "new"])
def test_during_rotation_a_delivery_signed_with_either_secret_is_accepted(
    make_app: Callable[..., Flask], redis_client: redis.Redis, signing_secret: str
) -> None:
    client = make_app(SECRET_A, SECRET_B).test_client()

    response = post(client, BODY, signed_headers(signing_secret, "msg_rotation", BODY))

    assert response.status_code == 202
    assert total_queued(redis_client) == 1


def test_during_rotation_a_third_secret_is_still_rejected(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(SECRET_A, SECRET_B).test_client()

    response = post(client, BODY, signed_headers(SECRET_OTHER, "msg_rotation_x", BODY))

    assert_rejected(response, redis_client, "invalid_signature")


@pytest.mark.parametrize("right_first", [False, True], ids=["wrong-then-right", "right-then-wrong"])
def test_header_with_several_signatures_one_right_is_accepted(
    signed_client: FlaskClient, redis_client: redis.Redis, right_first: bool
) -> None:
    timestamp = int(time.time())
    right = sign(SECRET_A, BODY, timestamp, webhook_id="msg_several")
    wrong = sign(SECRET_OTHER, BODY, timestamp, webhook_id="msg_several")
    entries = [right, wrong] if right_first else [wrong, right]
    headers = {
        "webhook-id": "msg_several",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(entries),
    }

    response = post(signed_client, BODY, headers)

    assert response.status_code == 202
    assert total_queued(redis_client) == 1


def test_header_with_several_signatures_all_wrong_is_rejected_401_invalid_signature(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    timestamp = int(time.time())
    wrongs = [
        sign(s, BODY, timestamp, webhook_id="msg_all_wrong") for s in (SECRET_B, SECRET_OTHER)
    ]
    headers = {
        "webhook-id": "msg_all_wrong",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(wrongs),
    }

    response = post(signed_client, BODY, headers)

    assert_rejected(response, redis_client, "invalid_signature")


# --- Configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secrets",
    ["whsec_not base64!", "whsec_abc", "whsec_@@@@", f"{SECRET_A},whsec_%%%%"],
    ids=["space-and-bang", "bad-padding", "not-alphabet", "one-good-one-bad"],
)
def test_secret_that_is_not_base64_makes_create_app_raise_value_error(
    redis_url: str, secrets: str
) -> None:
    with pytest.raises(ValueError, match="base64"):
        create_app({"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_STANDARD_SECRETS": secrets})


# --- Hostile values at the edges ----------------------------------------------------------


def test_timestamp_too_large_for_a_float_is_rejected_401_not_500(
    signed_client: FlaskClient, redis_client: redis.Redis
) -> None:
    headers = {**signed_headers(SECRET_A, "msg_huge_ts", BODY), "webhook-timestamp": "9" * 400}

    response = post(signed_client, BODY, headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] in (
        "timestamp_out_of_tolerance",
        "malformed_signature",
    )
    assert total_queued(redis_client) == 0


@pytest.mark.parametrize("size", [0, 8, 23, 65])
def test_secret_outside_24_to_64_bytes_makes_create_app_raise_value_error(
    redis_url: str, size: int
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * size).decode()

    with pytest.raises(ValueError, match="24-64 bytes"):
        create_app({"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_STANDARD_SECRETS": secret})


# --- Property: nothing unsigned ever gets in, nothing crashes -----------------------------


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from one of ``options``, each picked in proportion to its weight."""
    slots = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(slots) - 1).flatmap(lambda i: slots[i])


# What a real HTTP server can hand over in a header value: latin-1, no CR/LF/NUL/DEL.
_HEADER_CHARS = st.characters(
    min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=("Cc",)
) | st.just("\t")
header_text = st.text(_HEADER_CHARS, max_size=80)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
# weighted() leans towards its first option: the likeliest come first, omissions last.
bodies = weighted(
    (
        3,
        st.dictionaries(st.text(max_size=10), _json_values, max_size=5).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    (1, _json_values.map(lambda v: json.dumps(v).encode())),
    (1, st.text(max_size=300).map(str.encode)),
    (1, st.binary(max_size=300)),
)

# None means the header is left out.
webhook_ids = weighted(
    (5, st.from_regex(r"msg_[A-Za-z0-9]{1,30}", fullmatch=True)),
    (2, header_text),
    (1, st.none()),
)
timestamps = weighted(
    # Near our clock, so the signature itself is what gets checked.
    (6, st.integers(-400, 400).map(lambda d: str(int(time.time()) + d))),
    (1, st.integers(-(10**400), 10**400).map(str)),
    (1, st.text(string.digits + " +-_", min_size=1, max_size=40)),
    (1, header_text),
    (1, st.none()),
)
_v1_entries = weighted(
    (2, st.binary(min_size=32, max_size=32)),  # the length of a real HMAC-SHA256
    (1, st.binary(max_size=40)),
).map(lambda raw: "v1," + base64.b64encode(raw).decode())
signatures = weighted(
    (3, _v1_entries),
    (3, st.lists(_v1_entries | header_text, min_size=1, max_size=4).map(" ".join)),
    (1, header_text),
    (1, st.none()),
)
_json_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/cloudevents+json"]
)
_other_types = st.sampled_from(
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "",
    ]
) | st.text(string.ascii_letters + string.digits + "/+;=- ", max_size=40)
content_types = weighted((5, _json_types), (1, _other_types))


@pytest.fixture
def receiver_a(make_app: Callable[..., Flask]) -> FlaskClient:
    """One receiver with SECRET_A for all examples of a property test, as one running
    receiver serves many deliveries (building the app was ~6 ms of each example)."""
    return make_app(SECRET_A).test_client()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=bodies,
    webhook_id=webhook_ids,
    timestamp=timestamps,
    signature=signatures,
    content_type=content_types,
    forge=st.booleans(),
)
@pytest.mark.slow
def test_arbitrary_unsigned_deliveries_never_500_and_never_queue(
    receiver_a: FlaskClient,
    redis_client: redis.Redis,
    body: bytes,
    webhook_id: str | None,
    timestamp: str | None,
    signature: str | None,
    content_type: str,
    forge: bool,
) -> None:
    client = receiver_a
    if forge and webhook_id and timestamp and timestamp.isascii() and timestamp.isdecimal():
        # Well formed in every way, but signed with a key the receiver does not hold.
        signature = sign(SECRET_OTHER, body, int(timestamp), webhook_id=webhook_id)
    headers = {
        name: value
        for name, value in (
            ("webhook-id", webhook_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        )
        if value is not None
    }

    response = client.post(URL, data=body, content_type=content_type, headers=headers)

    assert response.status_code < 500, response.get_data()
    assert response.status_code >= 400  # nothing here is signed with SECRET_A
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"}
    assert total_queued(redis_client) == 0
    assert dedup_keys(redis_client) == []

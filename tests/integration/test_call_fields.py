"""What a Retell call event carries is either refused at the door or stored: never a 202
the worker then fails.

The receiver refuses (422) a call event without a usable ``call_id``; every other field
of the call object may hold anything JSON can (numbers of any size, floats, booleans,
strings where numbers belong, timestamps before 1970 or far in the future, huge texts),
and the worker stores what fits its column, leaves the rest empty, and finishes the
event ``processed``. Shapes: retell-python-sdk ``types/call_response.py`` (``call_id``,
``start_timestamp``/``end_timestamp`` Unix ms, ``duration_ms``, ``call_analysis``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest import create_app
from ingest.providers import retell
from ingest.providers.base import Delivery
from models.calls import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.factories import incoming_event
from workers.pipeline.record import IncomingEvent, Outcome, record_event

# Anything JSON can hold, hostile towards the columns (INT, DATETIME, VARCHAR, TEXT).
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, 2**31 - 1, -1, 0, 99999999999, 1.5e12, 9.9e13, 1e14, 1e20]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["1700000000000", "", " ", "\u0000", "😀" * 70000, "é" * 40000]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
FIELDS = [
    "agent_id",
    "direction",
    "call_status",
    "from_number",
    "to_number",
    "start_timestamp",
    "end_timestamp",
    "duration_ms",
    "disconnection_reason",
    "recording_url",
    "transcript",
    "metadata",
]
ANALYSIS_FIELDS = ["call_summary", "user_sentiment", "call_successful"]


def call_event(event_type: str, call: dict[str, Any]) -> IncomingEvent:
    body = {"event": event_type, "call": call}
    return incoming_event("retell", f"{call['call_id']}:{event_type}", body, queue=Queue.HIGH)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    event_type=st.sampled_from(["call_started", "call_ended", "call_analyzed"]),
    values=st.fixed_dictionaries({name: HOSTILE for name in FIELDS}),
    analysis=st.one_of(HOSTILE, st.fixed_dictionaries({n: HOSTILE for n in ANALYSIS_FIELDS})),
)
@pytest.mark.slow
def test_a_call_with_hostile_field_values_is_stored_processed(
    sessions: sessionmaker[Session],
    event_type: str,
    values: dict[str, Any],
    analysis: Any,
) -> None:
    call_id = "call_" + uuid.uuid4().hex
    call = {"call_id": call_id, **values, "call_analysis": analysis}

    assert record_event(sessions, call_event(event_type, call)) is Outcome.PROCESSED

    with sessions() as session:
        row = session.scalars(select(Call).where(Call.call_id == call_id)).one()
        assert row.raw_payload is not None and call_id in row.raw_payload
        if row.duration_ms is not None:
            assert 0 <= row.duration_ms < 2**31
        event = session.scalars(
            select(WebhookEvent).where(WebhookEvent.event_id == f"{call_id}:{event_type}")
        ).one()
        assert event.status is EventStatus.PROCESSED


@pytest.mark.parametrize(
    "timing",
    [
        {"start_timestamp": 1.5e12, "end_timestamp": 1_700_000_000_000},  # end before start
        {"start_timestamp": 1_700_000_000_000 - 30 * 86_400_000, "end_timestamp": 1.7e12},
        {"duration_ms": 99_999_999_999},
        {"duration_ms": -5, "start_timestamp": 1.7e12, "end_timestamp": 1.7e12 + 60_000},
    ],
    ids=["end before start", "30 days long", "duration over INT", "negative duration"],
)
def test_a_call_whose_length_does_not_fit_is_stored_without_it(
    sessions: sessionmaker[Session], timing: dict[str, Any]
) -> None:
    call_id = "call_" + uuid.uuid4().hex

    outcome = record_event(sessions, call_event("call_ended", {"call_id": call_id, **timing}))

    assert outcome is Outcome.PROCESSED
    with sessions() as session:
        row = session.scalars(select(Call).where(Call.call_id == call_id)).one()
        assert row.status == "ended"
        if timing.get("duration_ms") == -5:
            assert row.duration_ms == 60_000  # derived from the timestamps instead
        else:
            assert row.duration_ms is None


@pytest.fixture
def retell_client(settings_env: dict[str, str]) -> FlaskClient:
    return create_app({**settings_env, "HOOKFLEET_RETELL_VERIFY": "off"}).test_client()


@pytest.mark.parametrize(
    "event_type", ["call_started", "call_ended", "call_analyzed", "chat_ended"]
)
@pytest.mark.parametrize(
    "call_id",
    [12345, "", None, " ", "c" * 129, True, ["call_1"]],
    ids=["number", "empty", "null", "blank", "129 chars", "bool", "list"],
)
def test_a_call_event_without_a_usable_call_id_is_422_at_the_door(
    retell_client: FlaskClient, event_type: str, call_id: Any
) -> None:
    subject = "chat" if event_type.startswith("chat_") else "call"
    body = {"event": event_type, subject: {f"{subject}_id": call_id}}

    response = retell_client.post("/webhooks/retell", json=body)

    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_shape"
    assert f"{subject}_id" in response.get_json()["error"]["message"]


def test_a_call_id_of_the_full_width_is_accepted(retell_client: FlaskClient) -> None:
    body = {"event": "call_ended", "call": {"call_id": "C" * 128}}

    response = retell_client.post("/webhooks/retell", json=body)

    assert response.status_code == 202


def inbound(body: bytes, signed_at_ms: int) -> Delivery:
    signature = retell.sign("key_inbound", body, signed_at_ms)
    return Delivery(body=body, headers={retell.HEADER: signature}, received_at=time.time())


@pytest.mark.parametrize("event", ["call_inbound", "chat_inbound"])
def test_two_inbound_calls_from_one_caller_are_two_events_and_a_resend_is_one(
    event: str,
) -> None:
    # Retell's inbound body names only the numbers: every call from this caller to this
    # number is the same bytes. Each request is signed when sent (v=, Unix ms).
    payload = {"event": event, event: {"from_number": "+4915112345678", "to_number": "+4930"}}
    body = json.dumps(payload).encode()

    first = retell.PROVIDER.identify(inbound(body, 1_764_061_200_000), payload)
    resent = retell.PROVIDER.identify(inbound(body, 1_764_061_200_000), payload)
    next_call = retell.PROVIDER.identify(inbound(body, 1_764_061_260_000), payload)

    assert first.event_id == resent.event_id
    assert first.event_id != next_call.event_id
    assert first.inline and next_call.inline

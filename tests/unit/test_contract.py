"""The receiver↔worker contract: the message the receiver queues is the one the worker
reads, field for field; nothing missing is filled in; what the previous version queued
is still read; the queue names are the ones the deployment files start workers on."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from models.contract import QUEUES, EventMessage, MalformedMessage, Queue
from tests.helpers import post_json, queued

ROOT = Path(__file__).resolve().parents[2]

# The arguments exactly as the previous release wrote them: its receiver (no
# "replay"), its stuck-work sweep ("replay": false) and its replay ("replay": true).
PREVIOUS_RECEIVER: dict[str, Any] = {
    "provider": "standard",
    "event_id": "msg_old",
    "event_type": "invoice.paid",
    "queue": "hookfleet.default",
    "correlation_id": "corr-old",
    "received_at": "2026-11-23T08:00:00.123456+00:00",
    "headers": {"content-type": "application/json", "webhook-id": "msg_old"},
    "payload": '{"type":"invoice.paid"}',
}
PREVIOUS_SWEEP = {**PREVIOUS_RECEIVER, "replay": False}
PREVIOUS_REPLAY = {**PREVIOUS_RECEIVER, "queue": "hookfleet.low", "replay": True}


def message(**changes: Any) -> EventMessage:
    fields: dict[str, Any] = {
        "provider": "retell",
        "event_id": "call_1:call_ended",
        "event_type": "call_ended",
        "queue": Queue.HIGH,
        "correlation_id": "corr-1",
        "received_at": datetime(2026, 11, 29, 23, 0, 0, 123456, tzinfo=UTC),
        "headers": {"user-agent": "Retell"},
        "payload": '{"event":"call_ended","ünïcode":"✓"}',
    }
    return EventMessage(**{**fields, **changes})


@pytest.mark.parametrize("replay", [False, True], ids=["delivery", "replay"])
def test_a_message_survives_the_round_trip_through_its_task_arguments(replay: bool) -> None:
    sent = message(replay=replay)

    assert EventMessage.from_kwargs(sent.to_kwargs()) == sent


@pytest.mark.parametrize(
    "kwargs",
    [PREVIOUS_RECEIVER, PREVIOUS_SWEEP, PREVIOUS_REPLAY],
    ids=["receiver", "sweep", "replay"],
)
def test_what_the_previous_version_queued_is_read_and_written_back_unchanged(
    kwargs: dict[str, Any],
) -> None:
    read = EventMessage.from_kwargs(kwargs)

    assert read.received_at == datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC)
    assert read.replay is kwargs.get("replay", False)
    # Written back in the same layout (a redelivery drops the redundant "replay": false).
    assert read.to_kwargs() == {k: v for k, v in kwargs.items() if k != "replay" or v}


def test_the_receiver_queues_exactly_the_previous_layout(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Workers of the previous release, still draining during an upgrade, read what a
    new receiver queues: the same keys, the same types."""
    response = post_json(
        client, "/webhooks/standard", {"type": "invoice.paid"}, **{"webhook-id": "msg_new"}
    )

    assert response.status_code == 202
    [queued_message] = queued(redis_client, Queue.DEFAULT)
    kwargs = queued_message["decoded_body"][1]
    assert list(kwargs) == list(PREVIOUS_RECEIVER)
    assert {k: type(v) for k, v in kwargs.items()} == {
        k: type(v) for k, v in PREVIOUS_RECEIVER.items()
    }
    assert EventMessage.from_kwargs(kwargs).event_id == "msg_new"


@pytest.mark.parametrize("field", list(PREVIOUS_RECEIVER))
def test_a_message_missing_a_field_is_refused_not_filled_in(field: str) -> None:
    kwargs = {k: v for k, v in PREVIOUS_RECEIVER.items() if k != field}

    with pytest.raises(MalformedMessage) as refused:
        EventMessage.from_kwargs(kwargs)

    assert refused.value.missing == (field,)
    assert f"lacks {field}" in refused.value.reason


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"event_id": 42}, "event_id is int, not str"),
        ({"headers": ["content-type"]}, "headers is list, not dict"),
        ({"replay": "yes"}, "replay is str, not bool"),
        ({"received_at": "yesterday"}, "not an ISO-8601 timestamp"),
        ({"received_at": "2026-11-23T08:00:00"}, "with a UTC offset"),  # naive
    ],
)
def test_a_field_of_the_wrong_type_is_refused(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(MalformedMessage) as refused:
        EventMessage.from_kwargs({**PREVIOUS_RECEIVER, **changes})

    assert says in refused.value.reason


def test_a_field_this_version_does_not_know_is_ignored() -> None:
    """A newer receiver may add one while older workers still drain the queues."""
    read = EventMessage.from_kwargs({**PREVIOUS_RECEIVER, "priority_hint": 3})

    assert read == EventMessage.from_kwargs(PREVIOUS_RECEIVER)


def test_the_queue_names_are_the_ones_the_procfile_and_deployments_start_workers_on() -> None:
    """The enum's values are names on the broker: the Procfile, systemd units and k8s
    manifests (not Python, so they spell them out) must name exactly these."""
    assert [q.value for q in QUEUES] == [
        "hookfleet.high",
        "hookfleet.default",
        "hookfleet.low",
        "hookfleet.provisioning",
    ]
    named = re.compile(r"hookfleet\.(?:high|default|low|provisioning)\b")
    procfile = set(named.findall((ROOT / "Procfile").read_text()))
    assert procfile == {q.value for q in QUEUES}
    for path in [
        *(ROOT / "deploy" / "systemd").glob("*"),
        ROOT / "deploy" / "k8s" / "workers.yaml",
    ]:
        assert set(named.findall(path.read_text())) <= {q.value for q in QUEUES}, path


texts = st.text(max_size=40)


@given(
    fields=st.fixed_dictionaries(
        {
            "provider": texts,
            "event_id": texts,
            "event_type": texts,
            "queue": st.sampled_from([*Queue, "hookfleet.gone"]) | texts,
            "correlation_id": texts,
            "received_at": st.datetimes(timezones=st.just(UTC)),
            "headers": st.dictionaries(texts, texts, max_size=5),
            "payload": st.text(max_size=200),
            "replay": st.booleans(),
        }
    )
)
def test_the_arguments_json_is_byte_for_byte_what_json_dumps_writes(
    fields: dict[str, Any],
) -> None:
    sent = EventMessage(**fields)

    assert sent.kwargs_json() == json.dumps(sent.to_kwargs(), separators=(",", ":"))


def test_arguments_that_are_not_text_are_left_to_the_general_encoder() -> None:
    sent = message(headers={"x-count": 3})

    assert sent.kwargs_json() == json.dumps(sent.to_kwargs(), separators=(",", ":"))

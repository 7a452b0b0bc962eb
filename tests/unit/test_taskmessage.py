"""The message the receiver pushes is the one Celery's own producer would push."""

from __future__ import annotations

import base64
import itertools
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from models.broker import envelope
from models.broker.envelope import build_event_message, build_task_message
from models.contract import PROCESS_EVENT, EventMessage, Queue
from models.settings import Settings
from tests.helpers import queued
from workers.celery_app import celery_config


def test_message_matches_what_celery_send_task_writes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = Celery("reference", set_as_current=False)
    app.conf.update(celery_config(Settings(broker_url=redis_url, redis_url=redis_url)))
    kwargs = {"provider": "standard", "event_id": "e1", "payload": "{}"}
    app.send_task(
        PROCESS_EVENT,
        kwargs=kwargs,
        queue=Queue.DEFAULT,
        exchange="",
        routing_key=Queue.DEFAULT,
        ignore_result=True,
    )
    _, ours = build_task_message(PROCESS_EVENT, kwargs, Queue.DEFAULT)
    redis_client.lpush(Queue.DEFAULT, ours)

    reference, mine = queued(redis_client, Queue.DEFAULT)

    assert mine.keys() == reference.keys()
    assert mine["headers"].keys() == reference["headers"].keys()
    assert mine["properties"].keys() == reference["properties"].keys()
    assert mine["decoded_body"] == reference["decoded_body"]
    for key in ("content-type", "content-encoding"):
        assert mine[key] == reference[key]
    for key in ("body_encoding", "delivery_mode", "priority", "delivery_info"):
        assert mine["properties"][key] == reference["properties"][key]
    same = ("lang", "task", "retries", "timelimit", "eta", "expires", "group", "parent_id")
    for key in same:
        assert mine["headers"][key] == reference["headers"][key]
    assert (
        mine["headers"]["root_id"] == mine["headers"]["id"] == mine["properties"]["correlation_id"]
    )


def test_kwargsrepr_keeps_the_payload_out_of_monitoring() -> None:
    _, raw = build_task_message(
        "t", {"payload": "secret-ish personal data"}, "q", kwargsrepr="{'event_id': 'e'}"
    )

    assert json.loads(raw)["headers"]["kwargsrepr"] == "{'event_id': 'e'}"


def test_extra_headers_travel_with_the_message_but_cannot_replace_celerys() -> None:
    _, raw = build_task_message("t", {}, "q", extra_headers={"hookfleet_correlation_id": "c1"})
    assert json.loads(raw)["headers"]["hookfleet_correlation_id"] == "c1"

    with pytest.raises(ValueError, match="Celery"):
        build_task_message("t", {}, "q", extra_headers={"id": "mine"})


def _former_build_task_message(
    task_name: str,
    kwargs: dict[str, Any],
    queue: str,
    kwargsrepr: str,
    extra_headers: dict[str, Any],
) -> str:
    """The message builder as it was before the receiver's ids and arguments were
    encoded directly (models/broker/envelope.py, round 17): the reference bytes."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    task_id = str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = base64.b64encode(dumps([[], kwargs, embed]).encode()).decode("ascii")
    headers, properties = envelope._fixed_parts(task_name, queue, envelope._origin.get())
    task = json.encoder.encode_basestring_ascii(task_id)
    varying = {"kwargsrepr": kwargsrepr, **extra_headers}
    return (
        f'{{"body":"{body}","content-encoding":"utf-8","content-type":"application/json",'
        f'"headers":{{{headers},"id":{task},"root_id":{task},{dumps(varying)[1:-1]}}},'
        f'"properties":{{"correlation_id":{task},{properties},'
        f'"delivery_tag":"{uuid.uuid4()}"}}}}'
    )


@given(
    event_id=st.text(max_size=30),
    payload=st.text(max_size=300),
    header=st.text(max_size=30),
    replay=st.booleans(),
)
def test_an_event_message_is_byte_for_byte_what_the_former_builder_wrote(
    event_id: str, payload: str, header: str, replay: bool
) -> None:
    event = EventMessage(
        provider="standard",
        event_id=event_id,
        event_type="invoice.paid",
        queue=Queue.DEFAULT,
        correlation_id="0123456789abcdef0123456789abcdef",
        received_at=datetime(2026, 11, 30, 8, 0, 0, 123456, tzinfo=UTC),
        headers={"webhook-id": event_id, "user-agent": header},
        payload=payload,
        replay=replay,
    )
    with pytest.MonkeyPatch.context() as patch:
        # The same random bytes for both builders' ids, read in the same order.
        patch.setattr(os, "urandom", _counting_bytes())
        _, ours = build_event_message(event)
        patch.setattr(os, "urandom", _counting_bytes())
        former = _former_build_task_message(
            PROCESS_EVENT,
            event.to_kwargs(),
            event.queue,
            f"{{'provider': {event.provider!r}, 'event_id': {event.event_id!r}}}",
            {"hookfleet_correlation_id": event.correlation_id},
        )

    assert ours == former


def _counting_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")

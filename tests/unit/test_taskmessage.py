"""The message the receiver pushes is the one Celery's own producer would push."""

from __future__ import annotations

import json

import pytest
import redis
from celery import Celery

from models.broker.envelope import build_task_message
from models.contract import PROCESS_EVENT, Queue
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

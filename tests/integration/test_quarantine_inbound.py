"""A refused Retell ``call_inbound``/``chat_inbound`` was answered when it came (the
refusal: the caller got the number's default agent), so a release forgets it instead of
recording it as if Hookfleet had answered it; the call's own events are let in."""

from __future__ import annotations

import json
import time

import redis

from ingest import create_app
from ingest.providers import retell
from ingest.providers.base import Delivery
from ingest.quarantine import Quarantine
from ingest.quarantine_release import Releaser, Selection, select
from models.contract import Queue
from models.settings import Settings

RETELL_KEY = "key_the_right_retell_api_key"


def kept_retell(store: Quarantine, payload: dict[str, object]) -> None:
    body = json.dumps(payload).encode()
    now = int(time.time() * 1000)
    headers = {
        "content-type": "application/json",
        "x-retell-signature": retell.sign(RETELL_KEY, body, now),
    }
    store.keep("retell", Delivery(body, headers, now / 1000), "invalid_signature", "corr")


def test_a_release_forgets_inbound_questions_and_lets_the_calls_events_in(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings.from_env(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_RETELL_SECRETS": RETELL_KEY}
    )
    store = Quarantine(redis.Redis.from_url(redis_url), settings)
    numbers = {"from_number": "+4915112345678", "to_number": "+4930901820"}
    kept_retell(store, {"event": "call_inbound", "call_inbound": numbers})
    kept_retell(store, {"event": "chat_inbound", "chat_inbound": {"agent_id": "a"}})
    kept_retell(store, {"event": "call_ended", "call": {"call_id": "call_1", **numbers}})
    gate = create_app(settings).extensions["hookfleet_gate"]
    releaser = Releaser(settings, store, gate, redis_client)

    dry = releaser.release(select(store, Selection()), dry_run=True)
    done = releaser.release(select(store, Selection()), dry_run=False)

    assert (dry.skipped["retell"], dry.released["retell"]) == (2, 1)
    assert (done.skipped["retell"], done.released["retell"], sum(done.stayed.values())) == (2, 1, 0)
    [message] = redis_client.lrange(Queue.LOW, 0, -1)
    assert b"call_ended" in message
    assert list(store.entries("retell")) == []

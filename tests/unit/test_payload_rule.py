"""One rule for valid input on both sides: what the receiver accepts, the worker stores.

The receiver queues what ``models.payloads.parse_payload`` accepts; these tests take the
queued message as it is and run the worker's own function on SQLite and MariaDB.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer

from ingest import create_app
from models import payloads as _payloads
from models.calls import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from models.payloads import MAX_DEPTH, PayloadError, parse_payload
from tests.helpers import queued, retell_call_ended_body, total_queued
from workers.pipeline.record import IncomingEvent, Outcome, record_batch

LONE = "\\ud83d"  # the JSON escape of half an emoji, as Node.js writes a truncated one


@pytest.fixture
def open_client(redis_url: str) -> FlaskClient:
    """Every provider unsigned (the rule under test comes after verification)."""
    env = {"HOOKFLEET_REDIS_URL": redis_url}
    for name in ("RETELL", "STRIPE", "STANDARD", "CALCOM"):
        env[f"HOOKFLEET_{name}_VERIFY"] = "off"
    return create_app(env).test_client()


def post(client: FlaskClient, provider: str, body: str, **headers: str) -> Any:
    return client.post(
        f"/webhooks/{provider}",
        data=body.encode(),
        content_type="application/json",
        headers=headers,
    )


def run_worker(sessions: sessionmaker[Session], redis_client: redis.Redis) -> list[Outcome]:
    """The worker's batch function over every queued message, as the task gets them."""
    batch = []
    for queue in (Queue.HIGH, Queue.DEFAULT, Queue.LOW):
        for message in queued(redis_client, queue):
            batch.append(IncomingEvent.from_kwargs(message["decoded_body"][1]))
    return record_batch(sessions, batch)


# --- The rule itself -------------------------------------------------------------------


def test_a_lone_surrogate_escape_becomes_the_replacement_character() -> None:
    value, text = parse_payload(f'{{"t": "Hi {LONE}!"}}'.encode())

    assert value == {"t": "Hi \ufffd!"}
    assert text == '{"t": "Hi \\ufffd!"}'  # only the escape changed


def test_surrogate_pairs_and_escaped_backslashes_are_kept_exactly() -> None:
    raw = '{"pair": "\\ud83d\\ude00", "literal": "\\\\ud83d", "low_first": "\\ude00\\ud83d"}'

    value, text = parse_payload(raw)

    assert value["pair"] == "\U0001f600"
    assert value["literal"] == "\\ud83d"  # a backslash and letters, not an escape
    assert value["low_first"] == "\ufffd\ufffd"  # a low then a high half: both lone
    assert text.startswith('{"pair": "\\ud83d\\ude00", "literal": "\\\\ud83d"')


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": -2.5E+999}',
        b'{"a": "\xff"}',  # not UTF-8
        b'{"a": 1',
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
    ids=[
        "nan",
        "infinity",
        "-infinity",
        "1e400",
        "-2.5e999",
        "latin1",
        "truncated",
        "deep",
        "very deep",
    ],
)
def test_what_the_rule_refuses(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_payload(body)


def test_what_the_rule_keeps_exactly() -> None:
    huge = "9" * 4000
    nested = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)
    body = '{"big": ' + huge + ', "f": 1e300, "neg": -0.0, "deep": ' + nested + "}"

    value, text = parse_payload(body)

    assert value["big"] == int(huge) and value["f"] == 1e300
    assert text == body


def _former_verdict(body: str) -> tuple[str, Any]:
    """What parse_payload answered before its decoders were made once and its depth
    walked by levels (round 17: json.loads with hooks, a (node, depth) stack): the
    reference for the test below. ``("ok", value)`` or ``("refused", reason)``."""
    text = body.removeprefix("\ufeff")
    if _payloads._MAYBE_SURROGATE.search(text):
        text = _payloads._SURROGATE_ESCAPES.sub(_payloads._keep_pairs, text)
    checked = _payloads._BIG_EXPONENT.search(text) is not None
    try:
        value = json.loads(
            text,
            parse_constant=_payloads._refuse_constant,
            parse_float=_payloads._finite_float if checked else None,
        )
    except PayloadError as error:
        return "refused", error.reason
    except RecursionError:
        return "refused", f"The body nests deeper than {MAX_DEPTH} levels."
    except ValueError as error:
        return "refused", f"The body is not valid JSON: {error}."
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "refused", f"The body nests deeper than {MAX_DEPTH} levels."
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return "ok", value


def _verdict(body: str) -> tuple[str, Any]:
    try:
        return "ok", parse_payload(body)[0]
    except PayloadError as error:
        return "refused", error.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=30,
)
# Valid JSON, JSON cut short or spoilt, NaN and huge exponents, nesting around the limit,
# and byte order marks: everything the rule decides on.
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.tuples(json_values, st.integers(0, 20)).map(lambda p: json.dumps(p[0])[: -p[1] or None]),
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2).map(lambda n: "[" * n + "]" * n),
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["NaN", "[1e400]", '{"a": -Infinity}', "[1e300, 2E-999]", "{}x"]),
    st.text(alphabet='{}[]",:1e\\ufeff ', max_size=30),
).flatmap(lambda b: st.sampled_from([b, "\ufeff" + b, "\ufeff\ufeff" + b]))


@settings(max_examples=400)
@given(bodies)
def test_the_rule_answers_as_it_did_before_it_was_made_faster(body: str) -> None:
    ours, former = _verdict(body), _former_verdict(body)
    # NaN != NaN: compare what the values write, which is what is queued.
    assert (ours[0], json.dumps(ours[1])) == (former[0], json.dumps(former[1]))


# --- Through the receiver and the worker, on both databases ---------------------------


def test_a_retell_transcript_with_a_lone_surrogate_is_accepted_stored_and_applied(
    open_client: FlaskClient, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    call_ended = retell_call_ended_body(
        "call_surrogate_1", transcript=f"Agent: Hello {LONE}\nUser: Hi"
    )
    body = json.dumps(call_ended).replace("\\\\ud83d", "\\ud83d")
    assert LONE in body

    answer = post(open_client, "retell", body)
    outcomes = run_worker(sessions, redis_client)

    assert answer.status_code == 202
    assert outcomes == [Outcome.PROCESSED]
    with sessions() as session:
        stored = session.scalars(select(Call).options(undefer(Call.transcript))).one()
        event = session.scalars(select(WebhookEvent).options(undefer(WebhookEvent.payload))).one()
    assert stored.transcript == "Agent: Hello \ufffd\nUser: Hi"
    assert event.status is EventStatus.PROCESSED
    assert "\\ufffd" in event.payload and LONE not in event.payload


def test_a_lone_surrogate_in_an_event_id_is_stored_as_the_replacement_character(
    open_client: FlaskClient, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    body = f'{{"id": "evt_{LONE}1", "object": "event", "type": "charge.succeeded"}}'

    answer = post(open_client, "stripe", body)
    outcomes = run_worker(sessions, redis_client)

    assert answer.status_code == 202 and answer.json["event_id"] == "evt_\ufffd1"
    assert outcomes == [Outcome.PROCESSED]
    with sessions() as session:
        assert session.scalars(select(WebhookEvent.event_id)).one() == "evt_\ufffd1"


def test_huge_integers_and_large_floats_are_stored_exactly(
    open_client: FlaskClient, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    body = '{"type": "n.test", "data": {"n": %s, "x": 1.5e308, "y": 1e-320}}' % ("7" * 1000)

    answer = post(open_client, "standard", body, **{"webhook-id": "msg_numbers"})
    run_worker(sessions, redis_client)

    assert answer.status_code == 202
    with sessions() as session:
        stored = session.scalars(select(WebhookEvent).options(undefer(WebhookEvent.payload))).one()
    assert stored.payload == body
    assert json.loads(stored.payload)["data"]["n"] == int("7" * 1000)


@pytest.mark.parametrize(
    "body",
    ['{"type": "x", "v": NaN}', '{"type": "x", "v": 1e999}', '{"a":' * 100 + "1" + "}" * 100],
    ids=["nan", "overflow", "too deep"],
)
def test_what_the_worker_could_not_store_is_refused_at_the_door(
    open_client: FlaskClient, redis_client: redis.Redis, body: str
) -> None:
    answer = post(open_client, "standard", body, **{"webhook-id": "msg_refused"})

    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "invalid_json"
    assert answer.json["error"]["message"]
    assert total_queued(redis_client) == 0


def test_an_event_type_longer_than_its_column_is_recorded_with_its_payload_whole(
    open_client: FlaskClient, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    long_type = "billing." + "x" * 300
    body = json.dumps({"type": long_type, "data": {}})

    answer = post(open_client, "standard", body, **{"webhook-id": "msg_long_type"})
    outcomes = run_worker(sessions, redis_client)

    assert answer.status_code == 202 and outcomes == [Outcome.PROCESSED]
    with sessions() as session:
        stored = session.scalars(select(WebhookEvent).options(undefer(WebhookEvent.payload))).one()
    assert stored.event_type == long_type[:128]
    assert json.loads(stored.payload)["type"] == long_type


def test_nul_characters_emoji_and_a_byte_order_mark_are_stored_faithfully(
    open_client: FlaskClient, sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    data = '{"nul": "a\\u0000b", "raw": "😀", "pair": "\\ud83d\\ude00"}'
    text = '{"type": "note.created", "data": ' + data + "}"
    body = "\ufeff".encode() + text.encode()  # a .NET sender's byte order mark

    answer = post_bytes(open_client, "standard", body, **{"webhook-id": "msg_bom"})
    outcomes = run_worker(sessions, redis_client)

    assert answer.status_code == 202 and outcomes == [Outcome.PROCESSED]
    with sessions() as session:
        stored = session.scalars(select(WebhookEvent).options(undefer(WebhookEvent.payload))).one()
    assert stored.payload == text
    assert json.loads(stored.payload)["data"] == {"nul": "a\0b", "raw": "😀", "pair": "😀"}


def post_bytes(client: FlaskClient, provider: str, body: bytes, **headers: str) -> Any:
    return client.post(
        f"/webhooks/{provider}", data=body, content_type="application/json", headers=headers
    )

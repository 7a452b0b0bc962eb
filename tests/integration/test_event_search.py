"""Finding recorded events: the payload search (``--where PATH=VALUE``) in SQL on both
backends, filters that combine, keyset pages that stay stable, and the ``events`` and
``dlq`` commands' output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from models.events import EventStatus, WebhookEvent
from models.payload_search import BadPath, parse_condition
from tests.servers import clean_env
from workers.cli.main import main
from workers.recovery.selection import Selection, list_events

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

PAYLOADS = {
    "evt_1": {
        "data": {
            "object": {
                "customer": "cus_1",
                "amount": 100,
                "livemode": True,
                "items": [{"id": "it_a"}, {"id": "it_b"}],
            }
        }
    },
    "evt_upper": {"data": {"object": {"customer": "CUS_1", "amount": "100", "livemode": "true"}}},
    "evt_float": {"data": {"object": {"customer": "cus_2", "amount": 100.0, "note": None}}},
    "evt_accent": {"data": {"object": {"customer": "jürgen", "amount": 250}}},
    "evt_plain": {"data": {"object": {"customer": "jurgen", "amount": 100.5}}},
    "evt_big": {"data": {"object": {"customer": "cus_3", "amount": 1732960000123456789}}},
}


def add(
    sessions: sessionmaker[Session],
    event_id: str,
    payload: str,
    *,
    provider: str = "stripe",
    event_type: str = "invoice.paid",
    status: EventStatus = EventStatus.PROCESSED,
    created: datetime = T0,
    correlation_id: str = "",
) -> int:
    with sessions() as session:
        row = WebhookEvent(
            provider=provider,
            event_id=event_id,
            event_type=event_type,
            queue="hookfleet.default",
            correlation_id=correlation_id or f"corr-{event_id}",
            status=status,
            headers={"stripe-signature": "t=1,v1=00"},
            payload=payload,
            received_at=created,
            created_at=created,
            updated_at=created,
        )
        session.add(row)
        session.commit()
        return row.id


@pytest.fixture
def stored(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    for event_id, payload in PAYLOADS.items():
        add(sessions, event_id, json.dumps(payload, ensure_ascii=False))
    call = {"event": "call_ended", "call": {"call_id": "abc", "to_number": "+4930"}}
    add(sessions, "abc:call_ended", json.dumps(call), provider="retell", event_type="call_ended")
    add(sessions, "evt_array", json.dumps([{"a": 1}, {"a": "x"}]))
    add(sessions, "evt_scalar", json.dumps("cus_1"))
    add(sessions, "evt_not_json", "customer=cus_1&amount=100")
    return sessions


def found(sessions: sessionmaker[Session], *conditions: str, **narrow: Any) -> list[str]:
    selection = Selection(where=tuple(parse_condition(c) for c in conditions), **narrow)
    return [line.event_id for line in list_events(sessions, selection, limit=0)]


def test_a_nested_string_matches_byte_for_byte_with_or_without_the_dollar(
    stored: sessionmaker[Session],
) -> None:
    assert found(stored, "data.object.customer=cus_1") == ["evt_1"]
    assert found(stored, "$.data.object.customer=cus_1") == ["evt_1"]
    # Case and accents count (MariaDB's default collation would fold both).
    assert found(stored, "data.object.customer=CUS_1") == ["evt_upper"]
    assert found(stored, "data.object.customer=jürgen") == ["evt_accent"]
    assert found(stored, "$.call.call_id=abc") == ["abc:call_ended"]


def test_array_positions_reach_into_lists_and_past_the_end_match_nothing(
    stored: sessionmaker[Session],
) -> None:
    assert found(stored, "data.object.items[1].id=it_b") == ["evt_1"]
    assert found(stored, "data.object.items[0].id=it_b") == []
    assert found(stored, "data.object.items[2].id=it_b") == []
    # A payload that is an array, searched from its root.
    assert found(stored, "$[1].a=x") == ["evt_array"]
    assert found(stored, "[0].a=1") == ["evt_array"]


def test_a_number_matches_numbers_by_value_and_the_same_string_but_quoted_only_strings(
    stored: sessionmaker[Session],
) -> None:
    assert found(stored, "data.object.amount=100") == ["evt_1", "evt_upper", "evt_float"]
    # The string must be spelled the same: "100" is not 100.0.
    assert found(stored, "data.object.amount=100.0") == ["evt_1", "evt_float"]
    assert found(stored, 'data.object.amount="100"') == ["evt_upper"]
    assert found(stored, "data.object.amount=100.5") == ["evt_plain"]
    assert found(stored, "data.object.amount=1732960000123456789") == ["evt_big"]
    assert found(stored, "data.object.amount=1732960000123456788") == []
    assert found(stored, "data.object.amount=101") == []


def test_true_false_and_null_match_json_literals_and_null_never_a_missing_key(
    stored: sessionmaker[Session],
) -> None:
    assert found(stored, "data.object.livemode=true") == ["evt_1", "evt_upper"]
    assert found(stored, 'data.object.livemode="true"') == ["evt_upper"]
    assert found(stored, "data.object.livemode=false") == []
    assert found(stored, "data.object.note=null") == ["evt_float"]


def test_missing_keys_scalars_and_payloads_that_are_not_objects_match_nothing_quietly(
    stored: sessionmaker[Session],
) -> None:
    assert found(stored, "data.object.nothing=x") == []
    assert found(stored, "data.object.customer.deeper=cus_1") == []  # through a string
    assert found(stored, "data.object.items.id=it_a") == []  # a key of a list
    # The payload that is the string "cus_1" and the one that is not JSON at all are
    # never matched by a path, and do not break the query for the others.
    assert found(stored, "customer=cus_1") == []
    assert found(stored, "amount=100") == []
    assert found(stored, "a=1") == []


def test_filters_combine_with_the_payload_search(stored: sessionmaker[Session]) -> None:
    dead = add(
        stored,
        "evt_dead",
        json.dumps({"data": {"object": {"customer": "cus_1"}}}),
        status=EventStatus.DEAD,
        created=T0 + timedelta(hours=2),
        correlation_id="corr-wanted",
    )
    where = "data.object.customer=cus_1"
    assert found(stored, where) == ["evt_1", "evt_dead"]
    assert found(stored, where, statuses=(EventStatus.DEAD,)) == ["evt_dead"]
    assert found(stored, where, since=T0 + timedelta(hours=1)) == ["evt_dead"]
    assert found(stored, where, until=T0 + timedelta(hours=1)) == ["evt_1"]
    assert found(stored, where, provider="retell") == []
    assert found(stored, where, event_type="invoice.paid", correlation_id="corr-wanted") == [
        "evt_dead"
    ]
    assert found(stored, where, "data.object.amount=100") == ["evt_1"]
    assert found(stored, where, up_to_id=dead - 1) == ["evt_1"]


def test_keyset_pages_cover_every_event_once_while_rows_arrive_and_change(
    stored: sessionmaker[Session],
) -> None:
    everything = [line.id for line in list_events(stored, Selection(), limit=0)]
    pages: list[list[int]] = []
    after = 0
    while True:
        page = [line.id for line in list_events(stored, Selection(), after_id=after, limit=3)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
        if len(pages) == 1:  # meanwhile: a new event, and an old one changes status
            add(stored, "evt_late", "{}")
            with stored() as session:
                session.get_one(WebhookEvent, everything[0]).status = EventStatus.DEAD
                session.commit()
    walked = [pk for page in pages for pk in page]
    assert walked[: len(everything)] == everything
    assert len(walked) == len(everything) + 1  # the late one at the end, nothing twice
    assert all(len(page) == 3 for page in pages[:-1])


def test_strings_match_byte_for_byte_trailing_spaces_included_on_both_backends(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, "evt_trailing", json.dumps({"k": "trailing ", "c": "cus_1"}))
    add(sessions, "evt_bare", json.dumps({"k": "trailing", "c": "cus_1   "}))
    assert found(sessions, 'k="trailing"') == ["evt_bare"]
    assert found(sessions, "k=trailing") == ["evt_bare"]
    # VALUE is everything after the first =, its spaces too.
    assert found(sessions, "k=trailing ") == ["evt_trailing"]
    assert found(sessions, "c=cus_1") == ["evt_trailing"]
    assert found(sessions, "c=cus_1   ") == ["evt_bare"]
    # Spaces before the path and before the = are not part of it.
    assert found(sessions, "  k =trailing") == ["evt_bare"]


def test_a_value_with_spaces_is_text_never_a_number(sessions: sessionmaker[Session]) -> None:
    add(sessions, "evt_number", json.dumps({"amount": 100}))
    add(sessions, "evt_spaced", json.dumps({"amount": " 100"}))
    assert found(sessions, "amount= 100") == ["evt_spaced"]
    assert found(sessions, "amount=100 ") == []
    assert found(sessions, "amount=100") == ["evt_number"]


def test_numbers_past_64_bits_and_past_double_precision_compare_exactly_on_both_backends(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, "evt_huge", '{"n": 12345678901234567890}')
    add(sessions, "evt_tenth", '{"n": 0.10000000000000001}')
    add(sessions, "evt_exp", '{"n": 1e2}')
    add(sessions, "evt_places", '{"n": 0.5000000000000000000000000000001}')
    assert found(sessions, "n=12345678901234567890") == ["evt_huge"]
    assert found(sessions, "n=12345678901234567891") == []
    assert found(sessions, "n=12345678901234567890.0") == ["evt_huge"]
    assert found(sessions, "n=0.1") == []
    assert found(sessions, "n=0.10000000000000001") == ["evt_tenth"]
    assert found(sessions, "n=100") == ["evt_exp"]
    assert found(sessions, "n=1E+2") == ["evt_exp"]
    # Rounded to 30 places on both (MariaDB's DECIMAL(65, 30)).
    assert found(sessions, "n=0.5") == ["evt_places"]
    with pytest.raises(BadPath, match="30 after"):
        parse_condition("n=0.5000000000000000000000000000001")


def test_type_and_correlation_id_match_exactly_on_both_backends(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, "evt_lower", "{}", event_type="t.a", correlation_id="corr-a")
    add(sessions, "evt_accent", "{}", event_type="t.é", correlation_id="corr-a ")
    add(sessions, "evt_exact", "{}", event_type="T.A", correlation_id="CORR-A")
    assert found(sessions, event_type="T.A") == ["evt_exact"]
    assert found(sessions, event_type="t.a") == ["evt_lower"]
    assert found(sessions, event_type="t.e") == []
    assert found(sessions, event_type="t.a ") == []
    assert found(sessions, correlation_id="corr-a") == ["evt_lower"]
    assert found(sessions, correlation_id="corr-a ") == ["evt_accent"]
    assert found(sessions, provider="STRIPE") == []
    assert found(sessions, event_ids=("EVT_LOWER",)) == []


def test_bad_paths_are_refused_with_what_is_wrong() -> None:
    for text, says in [
        ("data.object.customer", "no '=VALUE'"),
        ("=cus_1", "the path is empty"),
        ("  =cus_1", "the path is empty"),
        ("$=cus_1", "the path is empty"),
        ("data..customer=x", "expected PATH=VALUE"),
        ("items[x]=1", "expected PATH=VALUE"),
    ]:
        with pytest.raises(BadPath, match=says):
            parse_condition(text)
    assert parse_condition('a."b.c"[2]=x=y').json_path == '$."a"."b.c"[2]'
    assert parse_condition('a."b.c"[2]=x=y').text == "x=y"


def test_events_list_json_is_one_parseable_object_per_line_and_dlq_lists_dead_ones(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    add(sessions, "evt_ok", json.dumps({"data": {"object": {"customer": "cus_1"}}}))
    add(
        sessions,
        "evt_dead",
        json.dumps({"data": {"object": {"customer": "cus_1"}}}),
        status=EventStatus.DEAD,
    )
    add(sessions, "evt_other", json.dumps({"data": {"object": {"customer": "cus_9"}}}))
    runner = CliRunner()
    env = clean_env(HOOKFLEET_DATABASE_URL=database_url, HOOKFLEET_VAR_DIR=str(tmp_path))

    listed = runner.invoke(
        main, ["events", "list", "--json", "--where", "data.object.customer=cus_1"], env=env
    )
    dlq = runner.invoke(main, ["dlq", "list", "--where", "data.object.customer=cus_1"], env=env)
    paged = runner.invoke(main, ["events", "list", "--limit", "1"], env=env)
    bad = runner.invoke(main, ["events", "list", "--where", "data.object"], env=env)

    assert listed.exit_code == 0, listed.output
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(line["event_id"], line["status"]) for line in lines] == [
        ("evt_ok", "processed"),
        ("evt_dead", "dead"),
    ]
    assert "payload" not in lines[0] and lines[0]["correlation_id"] == "corr-evt_ok"
    assert dlq.exit_code == 0 and "evt_dead" in dlq.stdout and "evt_ok" not in dlq.stdout
    assert "more: hookfleet events list --after" in paged.stderr
    assert paged.stdout.count("\n") == 2  # the header and one event
    assert bad.exit_code == 2 and "no '=VALUE'" in bad.stderr


def test_events_show_prints_one_event_by_id_or_by_provider_event_id(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    payload = {"data": {"object": {"customer": "jürgen"}}}
    pk = add(sessions, "evt_shown", json.dumps(payload, ensure_ascii=False))
    runner = CliRunner()
    env = clean_env(HOOKFLEET_DATABASE_URL=database_url, HOOKFLEET_VAR_DIR=str(tmp_path))

    by_id = runner.invoke(main, ["events", "show", str(pk), "--json"], env=env)
    by_key = runner.invoke(main, ["events", "show", "stripe", "evt_shown"], env=env)
    missing = runner.invoke(main, ["events", "show", "stripe", "evt_nope"], env=env)

    assert by_id.exit_code == 0, by_id.output
    shown = json.loads(by_id.stdout)
    assert shown["payload"] == payload and shown["headers"] == {"stripe-signature": "t=1,v1=00"}
    assert (shown["id"], shown["status"]) == (pk, "processed")
    assert by_key.exit_code == 0, by_key.output
    assert "jürgen" in by_key.stdout and f"id:             {pk}" in by_key.stdout
    assert missing.exit_code == 1 and "no event stripe evt_nope" in missing.stderr

"""Refused deliveries are kept within their caps, and let in by a release once the
secret is right: the receiver in-process, a real Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any

import redis
from click.testing import CliRunner
from prometheus_client import REGISTRY

from ingest import create_app
from ingest.providers import standard, stripe
from ingest.providers.base import Delivery
from ingest.quarantine import Entry, Quarantine, keys, quarantine_for
from ingest.quarantine_release import Releaser, ReleaseReport, Selection, select
from models.contract import Queue
from models.settings import Settings
from tests.helpers import queued, total_queued
from tests.servers import free_port
from workers.cli.main import main

RIGHT = "whsec_" + base64.b64encode(b"the right secret, 32 bytes long!").decode()
WRONG = "whsec_" + base64.b64encode(b"an old secret that was rotated!!").decode()
FORGER = "whsec_" + base64.b64encode(b"nobody ever configured this one").decode()
STRIPE_RIGHT = "whsec_stripe_right"
STRIPE_WRONG = "whsec_stripe_wrong"


def standard_delivery(
    secret: str, webhook_id: str, sent_at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    sent_at = int(time.time()) if sent_at is None else sent_at
    body = json.dumps({"type": "order.created", "data": {"order": webhook_id}}).encode()
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": standard.sign(secret, body, sent_at, webhook_id=webhook_id),
    }
    return body, headers


def stripe_delivery(
    secret: str, event_id: str, sent_at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    sent_at = int(time.time()) if sent_at is None else sent_at
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"}, indent=2)
    headers = {
        "content-type": "application/json",
        "stripe-signature": stripe.sign(secret, body.encode(), sent_at),
    }
    return body.encode(), headers


def env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_STANDARD_SECRETS": WRONG,
        "HOOKFLEET_STRIPE_SECRETS": STRIPE_WRONG,
        **extra,
    }


def kept(redis_url: str, provider: str = "standard") -> list[dict[str, Any]]:
    quarantine = Quarantine(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))
    found = quarantine.fetch(list(quarantine.entries(provider)))
    return [
        {"reason": k.entry.reason, "headers": k.headers, "body": k.body, "arrived": k.entry.arrived}
        for k in found
    ]


def dropped(provider: str, cause: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "hookfleet_quarantine_dropped_total",
            {"provider": provider, "lane": lane, "cause": cause},
        )
        or 0.0
        for lane in ("signed", "unsigned")
    )


# --- the receiver keeps what it refuses for signature or configuration ------------------


def test_a_delivery_refused_for_its_signature_is_kept_as_it_came(redis_url: str) -> None:
    client = create_app(env(redis_url)).test_client()
    body, headers = standard_delivery(RIGHT, "msg_refused")

    before = time.time()
    response = client.post("/webhooks/standard", data=body, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_signature"
    [entry] = kept(redis_url)
    assert entry["reason"] == "invalid_signature"
    assert entry["body"] == body
    # Every header as received (what re-verifying needs), names in lower case.
    assert {k: v for k, v in entry["headers"].items() if k in headers} == headers
    assert before <= float(entry["arrived"]) <= time.time()


def test_a_delivery_for_a_provider_without_a_secret_is_kept(redis_url: str) -> None:
    client = create_app({"HOOKFLEET_REDIS_URL": redis_url}).test_client()
    body, headers = stripe_delivery(STRIPE_RIGHT, "evt_unconfigured")

    response = client.post("/webhooks/stripe", data=body, headers=headers)

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "provider_not_configured"
    assert [e["reason"] for e in kept(redis_url, "stripe")] == ["provider_not_configured"]


def test_accepted_and_otherwise_refused_deliveries_are_not_kept(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = create_app(env(redis_url, HOOKFLEET_STANDARD_SECRETS=RIGHT)).test_client()
    body, headers = standard_delivery(RIGHT, "msg_ok")
    not_json = b"{not json"
    bad_headers = {
        **headers,
        "webhook-signature": standard.sign(
            RIGHT, not_json, int(headers["webhook-timestamp"]), webhook_id="msg_ok"
        ),
    }

    accepted = client.post("/webhooks/standard", data=body, headers=headers)
    malformed = client.post("/webhooks/standard", data=not_json, headers=bad_headers)
    gzipped = client.post(
        "/webhooks/standard", data=body, headers={**headers, "content-encoding": "gzip"}
    )

    assert [accepted.status_code, malformed.status_code, gzipped.status_code] == [202, 400, 415]
    assert list(redis_client.scan_iter("hookfleet:quarantine:*")) == []


def test_the_refusal_is_answered_the_same_when_redis_cannot_keep_it(redis_url: str) -> None:
    up = create_app(env(redis_url)).test_client()
    down = create_app(env(f"redis://127.0.0.1:{free_port()}/0")).test_client()
    body, headers = standard_delivery(RIGHT, "msg_redis_down")
    before = dropped("standard", "unavailable")

    answers = []
    for client in (up, down, down):
        started = time.monotonic()
        response = client.post("/webhooks/standard", data=body, headers=headers)
        answers.append((response.status_code, response.get_json(), time.monotonic() - started))

    assert [(status, answer) for status, answer, _ in answers] == [(401, answers[0][1])] * 3
    assert dropped("standard", "unavailable") == before + 2
    # The refusal path waits for Redis a quarter of a second at most, then not at all.
    assert answers[1][2] < 2.0 and answers[2][2] < 1.0


def test_with_a_cap_of_zero_nothing_is_kept(redis_url: str, redis_client: redis.Redis) -> None:
    settings = env(redis_url, HOOKFLEET_QUARANTINE_MAX_DELIVERIES="0")
    client = create_app(settings).test_client()
    body, headers = standard_delivery(RIGHT, "msg_off")

    response = client.post("/webhooks/standard", data=body, headers=headers)

    assert response.status_code == 401
    assert quarantine_for(Settings.from_env(settings)) is None
    assert list(redis_client.scan_iter("hookfleet:quarantine:*")) == []


# --- the caps -----------------------------------------------------------------------------


def quarantine(redis_url: str, **caps: int) -> Quarantine:
    fields = {f"quarantine_{name}": value for name, value in caps.items()}
    return Quarantine(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url, **fields))


def delivery(n: int, body_bytes: int = 100) -> Delivery:
    body = json.dumps({"n": n, "pad": "x" * body_bytes}).encode()
    return Delivery(body=body, headers={"webhook-id": f"m{n}"}, received_at=time.time())


def test_past_the_count_cap_the_oldest_go(redis_url: str) -> None:
    store = quarantine(redis_url, max_deliveries=5)

    results = [store.keep("standard", delivery(n), "invalid_signature", "c") for n in range(8)]

    left = [json.loads(k.body)["n"] for k in store.fetch(list(store.entries("standard")))]
    assert left == [3, 4, 5, 6, 7]
    assert sum(r.dropped.get("count", 0) for r in results) == 3
    assert store.sizes(["standard"])["standard"][0] == 5


def test_past_the_byte_cap_the_oldest_go_and_the_bytes_stay_within_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = quarantine(redis_url, max_bytes=5_000)

    for n in range(20):
        # 500 B: a body is kept up to an eighth of the byte budget.
        store.keep("standard", delivery(n, body_bytes=500), "invalid_signature", "c")

    count, used = store.sizes(["standard"])["standard"]
    entries = list(store.entries("standard"))
    size = entries[0].size  # the body, its headers and the entry's bookkeeping
    assert size > 500 and count == 5_000 // size and used == count * size <= 5_000
    newest = list(range(20 - count, 20))
    assert [json.loads(k.body)["n"] for k in store.fetch(entries)] == newest
    # What the count says is what is there: every kept body, nothing left behind.
    assert redis_client.hlen(keys("standard")[1]) == 2 * count


def test_a_body_over_its_cap_is_not_kept_but_its_headers_and_reason_are(redis_url: str) -> None:
    store = quarantine(redis_url, max_body_bytes=500)

    store.keep("standard", delivery(1, body_bytes=1_000), "invalid_signature", "c")

    [entry] = store.fetch(list(store.entries("standard")))
    assert (entry.body, entry.entry.body_kept, entry.headers) == (b"", False, {"webhook-id": "m1"})
    assert entry.entry.body_bytes > 1_000


def test_the_rate_cap_holds_across_processes(redis_url: str) -> None:
    # Two receiver processes: each stops asking Redis past the rate, and Redis counts both.
    first, second = quarantine(redis_url, rate=3), quarantine(redis_url, rate=3)
    second_started = int(time.time())

    results = [
        store.keep("standard", delivery(n), "invalid_signature", "c")
        for n in range(10)
        for store in (first, second)
    ]

    spanned = int(time.time()) - second_started + 1  # whole seconds the loop touched
    kept_now = [r for r in results if r.entry_id is not None]
    assert 3 <= len(kept_now) <= 3 * spanned
    assert sum(r.dropped.get("rate", 0) for r in results) == 20 - len(kept_now)


def test_entries_past_the_age_limit_are_trimmed_at_the_next_write(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = quarantine(redis_url, days=7)
    stream, hashed, state = keys("standard")
    eight_days_ago_ms = int((time.time() - 8 * 86_400) * 1000)
    old_id = redis_client.xadd(stream, {"size": 300, "reason": "x"}, id=f"{eight_days_ago_ms}-0")
    redis_client.hset(hashed, mapping={f"{old_id.decode()}:headers": "{}"})
    redis_client.hset(state, "bytes", 300)

    store.keep("standard", delivery(1), "invalid_signature", "c")

    [entry] = list(store.entries("standard"))
    assert entry.reason == "invalid_signature"
    assert 0 < redis_client.ttl(stream) <= 7 * 86_400
    assert store.sizes(["standard"])["standard"][1] == entry.size


def test_forgetting_an_entry_twice_frees_its_bytes_once(redis_url: str) -> None:
    store = quarantine(redis_url)
    for n in range(2):
        store.keep("standard", delivery(n), "invalid_signature", "c")
    first, second = list(store.entries("standard"))

    assert store.forget([first]) == 1
    assert store.forget([first]) == 0
    assert store.sizes(["standard"])["standard"] == (1, second.size)


# --- release ----------------------------------------------------------------------------


def release(
    redis_url: str,
    *,
    dry_run: bool = False,
    entries: Iterable[Entry] | None = None,
    **selection: Any,
) -> ReleaseReport:
    settings = Settings.from_env(
        env(
            redis_url,
            HOOKFLEET_STANDARD_SECRETS=RIGHT,
            HOOKFLEET_STRIPE_SECRETS=STRIPE_RIGHT,
            HOOKFLEET_STANDARD_TOLERANCE_S="300",
        )
    )
    client = redis.Redis.from_url(redis_url)
    store = Quarantine(client, settings)
    gate = create_app(settings).extensions["hookfleet_gate"]
    chosen = select(store, Selection(**selection)) if entries is None else entries
    return Releaser(settings, store, gate, client).release(chosen, dry_run=dry_run)


def keep_refused(
    redis_url: str, provider: str, signed: tuple[bytes, dict[str, str]], arrived: float
) -> None:
    store = quarantine(redis_url)
    store.keep(provider, Delivery(signed[0], signed[1], arrived), "invalid_signature", "corr")


def test_a_release_lets_in_what_verifies_now_once_and_leaves_the_rest(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    three_days_ago = now - 3 * 86_400
    # Fresh when they came, days old now: judged by their arrival, they pass.
    keep_refused(
        redis_url, "standard", standard_delivery(RIGHT, "msg_1", three_days_ago), three_days_ago
    )
    keep_refused(
        redis_url, "stripe", stripe_delivery(STRIPE_RIGHT, "evt_1", three_days_ago), three_days_ago
    )
    # The same delivery again (the sender retried the refusal): one event.
    keep_refused(redis_url, "standard", standard_delivery(RIGHT, "msg_1", now), now)
    # Already stale when it came (a replay or a skewed clock): never.
    keep_refused(redis_url, "standard", standard_delivery(RIGHT, "msg_stale", now - 600), now)
    # Signed with a secret nobody configured: never.
    keep_refused(redis_url, "stripe", stripe_delivery(STRIPE_WRONG, "evt_forged", now), now)

    dry = release(redis_url, dry_run=True)
    assert (dry.released, dry.duplicate) == ({"standard": 1, "stripe": 1}, {"standard": 1})
    assert dry.stayed == {"timestamp_out_of_tolerance": 1, "invalid_signature": 1}
    assert total_queued(redis_client) == 0 and len(kept(redis_url)) == 3

    done = release(redis_url)

    assert (done.released, done.duplicate, done.stayed) == (dry.released, dry.duplicate, dry.stayed)
    messages = queued(redis_client, Queue.LOW)
    assert sorted(m["decoded_body"][1]["event_id"] for m in messages) == ["evt_1", "msg_1"]
    # Let in with the time it came, on the queue of bulk work.
    received = {
        m["decoded_body"][1]["event_id"]: m["decoded_body"][1]["received_at"] for m in messages
    }
    assert received["msg_1"].startswith(time.strftime("%Y-%m-%dT%H", time.gmtime(three_days_ago)))
    assert total_queued(redis_client) == 2
    # What stays is what still fails, and a second release lets nothing in twice.
    assert [e["reason"] for e in kept(redis_url)] == ["invalid_signature"]
    again = release(redis_url)
    assert (again.released, again.duplicate) == ({}, {})
    assert total_queued(redis_client) == 2


def test_a_release_meets_the_senders_own_retry_as_a_duplicate(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    keep_refused(redis_url, "stripe", stripe_delivery(STRIPE_RIGHT, "evt_retried", now), now)
    fixed = create_app(env(redis_url, HOOKFLEET_STRIPE_SECRETS=STRIPE_RIGHT)).test_client()
    body, headers = stripe_delivery(STRIPE_RIGHT, "evt_retried")
    assert fixed.post("/webhooks/stripe", data=body, headers=headers).status_code == 202

    report = release(redis_url, providers=("stripe",))

    assert (report.released, report.duplicate) == ({}, {"stripe": 1})
    assert total_queued(redis_client) == 1
    assert kept(redis_url, "stripe") == []


def test_a_release_lets_in_only_the_chosen_ones(redis_url: str, redis_client: redis.Redis) -> None:
    now = int(time.time())
    for n in range(3):
        keep_refused(redis_url, "standard", standard_delivery(RIGHT, f"msg_{n}", now), now)
    chosen = list(select(Quarantine(redis_client, Settings()), Selection()))[1]

    report = release(redis_url, ids=(chosen.id,))

    assert report.released == {"standard": 1}
    assert [m["decoded_body"][1]["event_id"] for m in queued(redis_client, Queue.LOW)] == ["msg_1"]
    assert len(kept(redis_url)) == 2


def test_nothing_is_let_in_while_verification_is_off(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = int(time.time())
    keep_refused(redis_url, "standard", standard_delivery(FORGER, "msg_forged", now), now)
    settings = Settings.from_env(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_STANDARD_VERIFY": "off"}
    )
    store = Quarantine(redis_client, settings)
    gate = create_app(settings).extensions["hookfleet_gate"]

    report = Releaser(settings, store, gate, redis_client).release(
        select(store, Selection()), dry_run=False
    )

    assert report.stayed == {"verification_off": 1}
    assert total_queued(redis_client) == 0


# --- the terminal -------------------------------------------------------------------------


def test_show_prints_what_was_kept_and_hides_the_senders_credentials(redis_url: str) -> None:
    client = create_app(env(redis_url)).test_client()
    body, headers = standard_delivery(RIGHT, "msg_shown")
    client.post(
        "/webhooks/standard", data=body, headers={**headers, "Authorization": "Basic c2VjcmV0"}
    )
    runner = CliRunner()
    cli_env = {"HOOKFLEET_REDIS_URL": redis_url}

    listed = runner.invoke(main, ["quarantine", "list", "--json"], env=cli_env)
    [entry] = [json.loads(line) for line in listed.output.splitlines()]
    shown = runner.invoke(main, ["quarantine", "show", entry["id"]], env=cli_env)
    missing = runner.invoke(main, ["quarantine", "show", "standard:1-0"], env=cli_env)
    wrong = runner.invoke(main, ["quarantine", "list", "--reason", "nope"], env=cli_env)

    assert (entry["provider"], entry["reason"], entry["body_kept"]) == (
        "standard",
        "invalid_signature",
        True,
    )
    assert shown.exit_code == 0, shown.output
    assert f"webhook-signature: {headers['webhook-signature']}" in shown.output
    assert "authorization: (14 characters, hidden)" in shown.output
    assert "c2VjcmV0" not in shown.output
    assert shown.output.rstrip().endswith(body.decode())
    assert missing.exit_code == 1 and "nothing kept with id standard:1-0" in missing.output
    assert wrong.exit_code == 2 and "--reason" in wrong.output

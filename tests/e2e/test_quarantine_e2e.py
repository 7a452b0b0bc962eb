"""A wrong secret for a while, then the fix and a release, with real processes: gunicorn
and celery workers from the Procfile, real Redis, real MariaDB, the `hookfleet` command.
And a junk flood against the same receiver: the quarantine stays within its caps and
accepted deliveries do not pay for it."""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from ingest.providers import standard, stripe
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.helpers import hookfleet_here
from tests.processes import ONE_RECEIVER_WORKER, Processes, request, running_fleet, worker_on
from tests.servers import wait_until

pytestmark = pytest.mark.e2e

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
RIGHT = "whsec_" + base64.b64encode(b"the right secret, 32 bytes long!").decode()
WRONG = "whsec_" + base64.b64encode(b"an old secret that was rotated!!").decode()
FORGER = "whsec_" + base64.b64encode(b"nobody ever configured this one").decode()
STRIPE_RIGHT, STRIPE_WRONG = "whsec_stripe_right", "whsec_stripe_wrong"


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    yield engine
    engine.dispose()


def send_standard(
    fleet: Processes, secret: str, webhook_id: str, sent_at: int | None = None, pad: int = 0
) -> tuple[int, Any]:
    sent_at = int(time.time()) if sent_at is None else sent_at
    body = json.dumps({"type": "order.created", "data": {"id": webhook_id, "pad": "x" * pad}})
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": standard.sign(secret, body.encode(), sent_at, webhook_id=webhook_id),
    }
    status, _, answer = request(
        fleet.base_url, "POST", "/webhooks/standard", body.encode(), headers
    )
    return status, answer


def send_stripe(fleet: Processes, secret: str, event_id: str) -> tuple[int, Any]:
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"}, indent=2)
    signature = stripe.sign(secret, body.encode(), int(time.time()))
    status, _, answer = request(
        fleet.base_url, "POST", "/webhooks/stripe", body.encode(), {"Stripe-Signature": signature}
    )
    return status, answer


def hookfleet(fleet: Processes, *args: str) -> str:
    """``hookfleet quarantine args`` as the operator runs it: the console script, in a
    process of its own, with the fleet's environment."""
    done = subprocess.run(
        [HOOKFLEET, "quarantine", *args], env=fleet.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def hookfleet_in_here(fleet: Processes, *args: str) -> str:
    """The same command line in this process (tests.helpers.hookfleet_here: the same
    code below ``main()`` without a fresh interpreter's ~0.7 CPU-s of imports), for the
    commands that only read (``list``, ``release --dry-run``); the releases themselves
    stay processes."""
    done = hookfleet_here(["quarantine", *args], None, fleet.env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kept_reasons(fleet: Processes) -> list[str]:
    lines = hookfleet_in_here(fleet, "list", "--json", "--limit", "0").splitlines()
    return sorted(json.loads(line)["reason"] for line in lines)


def rows(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        found = connection.execute(
            select(WebhookEvent.event_id, WebhookEvent.queue, WebhookEvent.status)
        ).all()
    return sorted((r.event_id, r.queue, r.status) for r in found)


def processed(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
            or 0
        )


def test_deliveries_refused_for_a_wrong_secret_take_effect_once_after_the_fix_and_a_release(
    tmp_path: Path, redis_url: str, mariadb_url: str, engine: Engine
) -> None:
    wrong = {
        "HOOKFLEET_STANDARD_SECRETS": WRONG,
        "HOOKFLEET_STRIPE_SECRETS": STRIPE_WRONG,
        # A short window, so "fresh when it came, old at the release" happens within
        # the test: the release must judge by arrival.
        "HOOKFLEET_STANDARD_TOLERANCE_S": "5",
        "HOOKFLEET_STRIPE_TOLERANCE_S": "5",
    }
    with running_fleet(
        tmp_path, redis_url, mariadb_url, names=("web",), **ONE_RECEIVER_WORKER, **wrong
    ) as fleet:
        # One worker for the accepted retry's queue and the release's (hookfleet.low).
        fleet.start("worker_default", worker_on(Queue.DEFAULT, Queue.LOW))
        standard_ids = [f"msg_{n}" for n in range(10)]
        stripe_ids = [f"evt_{n}" for n in range(5)]
        answers = [send_standard(fleet, RIGHT, i) for i in standard_ids]
        answers += [send_stripe(fleet, STRIPE_RIGHT, i) for i in stripe_ids]
        answers.append(send_standard(fleet, RIGHT, "msg_0"))  # the sender retried once
        refused_until = time.time()
        forged = send_standard(fleet, FORGER, "msg_forged")
        stale = send_standard(fleet, RIGHT, "msg_stale", sent_at=int(time.time()) - 60)

        assert {(s, a["error"]["code"]) for s, a in answers} == {(401, "invalid_signature")}
        assert forged[0] == 401 and stale[1]["error"]["code"] == "timestamp_out_of_tolerance"
        assert len(kept_reasons(fleet)) == 18

        # The fix: the right secrets, receivers restarted. The sender's next retry of
        # one of them is accepted as usual.
        fleet.stop("web")
        fleet.env.update(HOOKFLEET_STANDARD_SECRETS=RIGHT, HOOKFLEET_STRIPE_SECRETS=STRIPE_RIGHT)
        fleet.start("web")
        fleet.wait_for_web()
        assert send_standard(fleet, RIGHT, "msg_1")[0] == 202
        wait_until(lambda: processed(engine) == 1, 60, "the retried delivery", interval=0.2)
        # Every refused delivery is now older than the tolerance.
        time.sleep(max(0.0, refused_until + 6 - time.time()))

        dry = hookfleet_in_here(fleet, "release", "--dry-run")

        assert "would release 14 (standard: 9, stripe: 5)" in dry
        assert "would be duplicates 2 (standard: 2)" in dry
        assert "invalid_signature: 1" in dry and "timestamp_out_of_tolerance: 1" in dry
        assert len(kept_reasons(fleet)) == 18 and processed(engine) == 1

        done = hookfleet(fleet, "release")

        assert "released 14 (standard: 9, stripe: 5) onto hookfleet.low" in done
        assert "duplicate 2 (standard: 2)" in done and "still refused 2:" in done
        wait_until(lambda: processed(engine) == 15, 90, "15 processed rows", interval=0.5)
        expected = sorted(
            (i, "hookfleet.default" if i == "msg_1" else "hookfleet.low", EventStatus.PROCESSED)
            for i in standard_ids + stripe_ids
        )
        assert rows(engine) == expected  # each once; the forged and the stale one never
        assert kept_reasons(fleet) == ["invalid_signature", "timestamp_out_of_tolerance"]

        again = hookfleet(fleet, "release")

        assert "released 0 (none)" in again and "duplicate 0 (none)" in again
        time.sleep(2)
        assert rows(engine) == expected


def metric(fleet: Processes, name: str, **labels: str) -> float:
    _, _, text = request(fleet.ops_url, "GET", "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(str(text)):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def accepted_latencies(fleet: Processes, prefix: str, n: int) -> list[float]:
    took = []
    for i in range(n):
        started = time.perf_counter()
        status, _ = send_standard(fleet, RIGHT, f"{prefix}-{i}")
        took.append(time.perf_counter() - started)
        assert status == 202
    return took


def flood(fleet: Processes, prefix: str, n: int) -> list[int]:
    def junk(i: int) -> int:
        # Forged, with bodies of two sizes: the count cap and the byte cap both bite.
        return send_standard(fleet, FORGER, f"{prefix}-{i}", pad=2_000 if i % 2 else 10)[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(junk, range(n)))


# Large enough that both caps bite many times over: 300 forged deliveries against a
# 40-delivery cap, half of them 2 KB (~300 KB) against a 50,000-byte cap. The accepted
# deliveries keep their ratio to the flood (1 in 10, sent while it runs), so their
# median is still taken during the flood. 600 and 60 before: the same caps were passed
# as often in proportion, at ~1.5 CPU-s more per run.
FLOOD, ACCEPTED_DURING = 300, 30


def test_a_junk_flood_stays_within_the_caps_and_costs_accepted_deliveries_nothing(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    caps = {
        **ONE_RECEIVER_WORKER,
        "HOOKFLEET_STANDARD_SECRETS": RIGHT,
        "HOOKFLEET_QUARANTINE_MAX_DELIVERIES": "40",
        "HOOKFLEET_QUARANTINE_MAX_BYTES": "50000",
        # Every junk delivery asks Redis (the rate cap would stop most of them): the caps
        # must hold on their own, and the worst case must not cost accepted deliveries.
        "HOOKFLEET_QUARANTINE_RATE": "1000",
    }
    # No process yet: each phase starts the receiver with its own setting.
    with running_fleet(tmp_path, redis_url, mariadb_url, names=(), **caps) as fleet:
        # The same flood with the quarantine off, then on: accepted deliveries sent
        # during each are compared (the flood's own CPU cost is in both).
        medians = {}
        for phase, max_deliveries in (("off", "0"), ("on", "40")):
            if "web" in fleet.running:
                fleet.stop("web")
            fleet.env["HOOKFLEET_QUARANTINE_MAX_DELIVERIES"] = max_deliveries
            fleet.start("web")
            fleet.wait_for_web()
            with ThreadPoolExecutor(max_workers=1) as background:
                flooding = background.submit(flood, fleet, f"junk-{phase}", FLOOD)
                took = accepted_latencies(fleet, f"ok-{phase}", ACCEPTED_DURING)
                assert set(flooding.result()) == {401}
            medians[phase] = statistics.median(took)

        kept = metric(fleet, "hookfleet_quarantine_kept", provider="standard")
        used = metric(fleet, "hookfleet_quarantine_bytes", provider="standard")
        assert 0 < kept <= 40 and 0 < used <= 50_000
        pushed_out = sum(
            metric(fleet, "hookfleet_quarantine_dropped_total", provider="standard", cause=cause)
            for cause in ("count", "bytes")
        )
        assert pushed_out >= FLOOD - 40
        assert metric(fleet, "hookfleet_refused_total", provider="standard") >= FLOOD
        # Generous: two shared cores, a flood in the same run.
        assert medians["on"] < medians["off"] * 2 + 0.02, medians

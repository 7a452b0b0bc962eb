"""OpenTelemetry on a running fleet: gunicorn and Celery workers export to a real
OTLP/HTTP receiver (tests/otlp.py), and one delivery is one trace across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from ingest.providers import retell
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.otlp import Span, otlp_sink
from tests.processes import SIGNED_SECRETS, Processes, request, running_fleet, worker_on
from tests.servers import wait_until
from tests.waterfall import save, waterfall

pytestmark = pytest.mark.e2e

SECRET = "key_retell_tracing"
SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"


def deliver(
    fleet: Processes, call_id: str, headers: dict[str, str] | None = None, secret: str = SECRET
) -> str:
    body = json.dumps(
        {
            "event": "call_ended",
            "call": {
                "call_id": call_id,
                "call_status": "ended",
                "direction": "inbound",
                "from_number": "+4915112345678",
                "to_number": "+49301234567",
            },
        }
    ).encode()
    signature = retell.sign(secret, body, int(time.time() * 1000))
    status, _, answer = request(
        fleet.base_url,
        "POST",
        "/webhooks/retell",
        body,
        {"x-retell-signature": signature, **(headers or {})},
    )
    assert status == 202, answer
    return str(answer["event_id"])


def one(spans: list[Span], **match: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name) for s in spans])
    return found[0]


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers, Celery's pool children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def exporter_loaded(fleet: Processes, name: str) -> list[bool]:
    """For each process of ``name``: whether the OTLP exporter's protobuf runtime
    (google/_upb, a shared object nothing else in Hookfleet loads) is mapped in it."""
    return [
        "/_upb/" in Path(f"/proc/{pid}/maps").read_text()
        for pid in process_tree(fleet.running[name].pid)
    ]


def ancestors(span: Span, spans: list[Span]) -> list[str]:
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    found = []
    while span.parent_id in by_id:
        found.append(span.parent_id)
        span = by_id[span.parent_id]
    return found


def is_db(span: Span) -> bool:
    return any(key.startswith("db.") for key in span.attributes)


def delivery_done(trace_id: str):  # type: ignore[no-untyped-def]
    """The trace holds the worker's event span and a statement span under it."""

    def done(spans: list[Span]) -> bool:
        trace = in_trace(spans, trace_id)
        events = [s for s in trace if s.name == "hookfleet.process_event"]
        return bool(events) and any(s.parent_id == events[0].span_id and is_db(s) for s in trace)

    return done


def test_a_delivery_is_one_trace_from_the_receiver_into_the_worker_and_a_replay_links_to_it(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    with (
        otlp_sink() as sink,
        running_fleet(
            tmp_path,
            redis_url,
            mariadb_url,
            names=("web",),
            HOOKFLEET_RETELL_SECRETS=SECRET,
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as fleet,
    ):
        # One worker for the delivery's queue and the replay's (hookfleet.low).
        fleet.start("worker_high", worker_on(Queue.HIGH, Queue.LOW))
        fleet.wait_for_worker("worker_high")
        # A sender that traces its own calls: the delivery joins the sender's trace.
        event_id = deliver(
            fleet, "call_traced", {"traceparent": f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"}
        )
        spans = sink.wait_for(delivery_done(SENDER_TRACE))
        trace = in_trace(spans, SENDER_TRACE)
        received = one(trace, name="POST /webhooks/retell")
        assert (received.service, received.parent_id) == ("hookfleet-receiver", SENDER_SPAN)
        assert received.attributes["hookfleet.outcome"] == "accepted"
        assert received.attributes["hookfleet.event_id"] == event_id
        assert received.attributes["http.response.status_code"] == 202
        assert received.attributes["hookfleet.correlation_id"]
        for step in ("hookfleet.verify", "hookfleet.claim_and_enqueue"):
            assert one(trace, name=step).parent_id == received.span_id
        processed = one(trace, name="hookfleet.process_event")
        assert (processed.service, processed.parent_id) == ("hookfleet-worker", received.span_id)
        assert processed.attributes["hookfleet.event_id"] == event_id
        assert processed.attributes["hookfleet.outcome"] == "processed"
        assert (
            processed.attributes["hookfleet.correlation_id"]
            == received.attributes["hookfleet.correlation_id"]
        )
        # The batch it ran in: a span of its own, linked both ways.
        batch = one(spans, name="hookfleet.batch", span_id=next(iter(processed.links))[1])
        assert (processed.trace_id, processed.span_id) in batch.links
        statements = [s for s in trace if s.parent_id == processed.span_id and is_db(s)]
        assert statements and {s.service for s in statements} == {"hookfleet-worker"}
        # The picture in the README: this trace, and the batch's own it links to.
        pictured = trace + in_trace(spans, batch.trace_id)
        if out := os.environ.get("HOOKFLEET_TRACE_OUT"):
            save(pictured, Path(out))
        print(waterfall(pictured))

        # Without a sender's traceparent the request span starts the trace.
        other_id = deliver(fleet, "call_untraced")
        spans = sink.wait_for(
            lambda spans: (
                any(s.attributes.get("hookfleet.event_id") == other_id for s in spans)
                and any(
                    s.name == "hookfleet.process_event"
                    and s.attributes.get("hookfleet.event_id") == other_id
                    for s in spans
                )
            )
        )
        root = one(spans, name="POST /webhooks/retell", parent_id="", service="hookfleet-receiver")
        worker = one(spans, name="hookfleet.process_event", trace_id=root.trace_id)
        assert worker.parent_id == root.span_id and root.trace_id != SENDER_TRACE

        # A replay: the command's publish span and the worker's new span link to the
        # span the event was first received under.
        replay = subprocess.run(
            [str(Path(sys.executable).parent / "hookfleet"), "replay", "--event-id", event_id],
            env=fleet.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr

        def replayed(spans: list[Span]) -> bool:
            return any(s.attributes.get("hookfleet.replay") is True for s in spans)

        spans = sink.wait_for(replayed)
        again = next(s for s in spans if s.attributes.get("hookfleet.replay") is True)
        published = one(spans, name="hookfleet.replay")
        assert published.service == "hookfleet-cli"
        # Under the publish span (through Celery's own publish span, when it makes one).
        assert published.span_id in ancestors(again, spans)
        assert (SENDER_TRACE, received.span_id) in published.links
        assert (SENDER_TRACE, received.span_id) in again.links
        assert again.attributes["hookfleet.outcome"] == "processed"
        # The exporter runs in every process that does the work (the control for the
        # test below): gunicorn's workers and Celery's pool children.
        assert exporter_loaded(fleet, "web").count(True) == 2
        assert exporter_loaded(fleet, "worker_high").count(True) == 2


def test_without_an_endpoint_no_process_of_the_fleet_loads_the_exporter(
    signed: Processes, mariadb_url: str
) -> None:
    # The session's signed fleet (tests/conftest.py): the whole Procfile, no endpoint.
    event_id = deliver(signed, "call_untraced", secret=SIGNED_SECRETS["retell"])
    engine = create_engine(mariadb_url)
    try:
        wait_until(lambda: processed(engine, event_id), 60, "the call processed", interval=0.2)
    finally:
        engine.dispose()

    # Every gunicorn master and worker, every Celery main process and pool child, beat:
    # after a delivery received and processed, none has the exporter mapped.
    loaded = {name: exporter_loaded(signed, name) for name in signed.running}
    assert len(loaded["web"]) == 1 + int(signed.env["WEB_CONCURRENCY"]), loaded
    assert len(loaded["worker_high"]) == 1 + int(signed.env["HOOKFLEET_WORKER_CONCURRENCY"])
    assert not any(any(found) for found in loaded.values()), loaded


def processed(engine: Engine, event_id: str) -> bool:
    with engine.connect() as connection:
        status = connection.scalar(
            select(WebhookEvent.status).where(WebhookEvent.event_id == event_id)
        )
    return status == EventStatus.PROCESSED

"""The worker's spans for a batch (workers/pipeline/tracing.py): each event in its own
delivery's trace, the batch linked both ways, failures, retries and dead letters on the
event's span, and a retry's message continuing the trace.

The batch runs in a fresh Python process with tracing on (exporting to a real OTLP/HTTP
receiver, tests/otlp.py), as a Celery pool child would: the SDK's tracer provider is
process-wide and must not leak into the other tests of this process."""

from __future__ import annotations

import json
from base64 import b64decode
from pathlib import Path

import pytest
import redis

from tests.databases import copy_sqlite
from tests.helpers import last_json_line, run_python
from tests.otlp import Span, otlp_sink
from tests.servers import clean_env

pytestmark = pytest.mark.slow  # each test runs its probe or command as a process of its own

# Three deliveries, each from a trace of its own, in one batch: one applies, one cannot
# be applied (permanent: failed), one meets a dropped connection (transient: retried).
TRACES = {
    "evt_ok": ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    "bad_one": ("1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331"),
    "flaky_one": ("2af7651916cd43dd8448eb211c80319c", "d7ad6b7169203331"),
}

BATCH = f"""
import json
import os
from datetime import UTC, datetime

from sqlalchemy.exc import DisconnectionError

from models import tracing
from models.contract import EventMessage
from workers import runtime
from workers.broker.batching import Entry
from workers.pipeline import record, tasks
from workers.retries import PermanentError
from workers.tracing import _in_pool_child

_in_pool_child()  # what a prefork pool child runs when it starts


def handler(session, row):
    if row.event_id.startswith("bad"):
        raise PermanentError("cannot map this one")
    if row.event_id.startswith("flaky"):
        raise DisconnectionError("connection dropped")
    session.get(type(row), row.id)  # a statement of the event's own


record.HANDLERS["test"] = handler
entries = []
for event_id, (trace_id, span_id) in {TRACES!r}.items():
    # The sender's sampled flag and tracestate, as the receiver's message carries them.
    flags = os.environ.get("PROBE_FLAGS", "01")
    trace = {{"traceparent": f"00-{{trace_id}}-{{span_id}}-{{flags}}"}}
    if os.environ.get("PROBE_TRACESTATE"):
        trace["tracestate"] = os.environ["PROBE_TRACESTATE"]
    event = EventMessage(
        provider="test", event_id=event_id, event_type="t", queue="hookfleet.default",
        correlation_id="corr-" + event_id, received_at=datetime(2026, 11, 30, tzinfo=UTC),
        headers={{}}, payload="{{}}",
    )
    entries.append(Entry(
        task_id="task-" + event_id, kwargs=event.to_kwargs(), retries=0,
        queue="hookfleet.default", trace=trace,
    ))
print(json.dumps([v.value for v in tasks.process_batch(entries)]))
tracing.flush()
"""


def run_batch(database_url: str, redis_url: str, otlp_url: str, **env: str) -> str:
    """Run BATCH in a process of its own on ``database_url`` (a copy of the session's
    migrated SQLite file: migrating in the probe cost ~1.5 CPU-s), exporting to
    ``otlp_url``; assert that every entry was settled (acked: applied, failed for good or
    retried) and return what the process said (stdout and stderr)."""
    done = run_python(
        BATCH,
        clean_env(
            HOOKFLEET_DATABASE_URL=database_url,
            HOOKFLEET_REDIS_URL=redis_url,
            HOOKFLEET_DB_RETRY_ATTEMPTS="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp_url,
            **env,
        ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_json_line(done) == ["ack", "ack", "ack"]
    return done.stdout + done.stderr


def test_a_batch_gives_each_event_a_span_in_its_own_trace_with_failures_and_retries_on_it(
    tmp_path: Path, redis_url: str, sqlite_template: Path
) -> None:
    with otlp_sink() as sink:
        run_batch(
            copy_sqlite(sqlite_template, tmp_path),
            redis_url,
            sink.url,
            PROBE_TRACESTATE="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        )
        spans = sink.wait_for(
            lambda spans: sum(s.name == "hookfleet.process_event" for s in spans) == 3
        )

    events: dict[str, Span] = {
        str(s.attributes["hookfleet.event_id"]): s
        for s in spans
        if s.name == "hookfleet.process_event"
    }
    (batch,) = [s for s in spans if s.name == "hookfleet.batch"]
    assert batch.attributes["hookfleet.batch.size"] == 3
    for event_id, (trace_id, parent_id) in TRACES.items():
        span = events[event_id]
        assert (span.trace_id, span.parent_id, span.service) == (
            trace_id,
            parent_id,
            "hookfleet-worker",
        )
        assert span.attributes["hookfleet.correlation_id"] == f"corr-{event_id}"
        assert (batch.trace_id, batch.span_id) in span.links
        assert (span.trace_id, span.span_id) in batch.links

    ok, bad, flaky = events["evt_ok"], events["bad_one"], events["flaky_one"]
    assert ok.attributes["hookfleet.outcome"] == "processed" and ok.status != 2
    assert any(s.parent_id == ok.span_id and "db.system" in s.attributes for s in spans)
    assert bad.attributes["hookfleet.outcome"] == "failed"
    assert bad.status == 2 and "exception" in bad.events
    assert flaky.attributes["hookfleet.outcome"] == "retried"
    assert "retry scheduled" in flaky.events

    # The retry's message carries the flaky event's trace: its next attempt is a child
    # of this one (through Celery's own publish span).
    messages = _queued_retries(redis_url)
    (retry,) = [m for m in messages if m["kwargs"]["event_id"] == "flaky_one"]
    _version, trace_id, parent_id, _flags = retry["headers"]["traceparent"].split("-")
    assert trace_id == TRACES["flaky_one"][0]
    # ...and the sender's tracestate with it (W3C Trace Context: both headers travel).
    assert retry["headers"]["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    by_id = {s.span_id: s for s in spans}
    chain = []
    while parent_id in by_id:
        chain.append(parent_id)
        parent_id = by_id[parent_id].parent_id
    assert flaky.span_id in chain


def _queued_retries(redis_url: str) -> list[dict[str, object]]:
    """Every Celery message on the default queue (a countdown's message waits there
    like any other; the worker holds it until it is due)."""
    found = []
    for raw in redis.Redis.from_url(redis_url).lrange("hookfleet.default", 0, -1):
        message = json.loads(raw)
        body = json.loads(b64decode(message["body"]))
        found.append({"headers": message["headers"], "kwargs": body[1]})
    return found


def test_a_propagator_not_installed_leaves_the_worker_untraced_and_processing(
    tmp_path: Path, redis_url: str, sqlite_template: Path
) -> None:
    with otlp_sink() as sink:
        # The batch runs as without tracing: applied, failed for good, retried.
        said = run_batch(
            copy_sqlite(sqlite_template, tmp_path), redis_url, sink.url, OTEL_PROPAGATORS="b3"
        )
    assert [m["kwargs"]["event_id"] for m in _queued_retries(redis_url)] == ["flaky_one"]
    assert said.count("tracing stays off") == 1 and "Traceback" not in said
    assert sink.spans == []


def test_a_batch_of_deliveries_the_sender_did_not_sample_exports_no_span(
    tmp_path: Path, redis_url: str, sqlite_template: Path
) -> None:
    with otlp_sink() as sink:
        run_batch(copy_sqlite(sqlite_template, tmp_path), redis_url, sink.url, PROBE_FLAGS="00")
    # No batch root trace, no statement or retry-publish span: the process exported
    # nothing (it flushed before exiting; the sampled run above shows the path works).
    assert sink.spans == []
    # The retry still carries the delivery's (unsampled) trace on.
    (retry,) = _queued_retries(redis_url)
    assert retry["headers"]["traceparent"].split("-")[1] == TRACES["flaky_one"][0]

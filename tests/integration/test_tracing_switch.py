"""Tracing is off unless asked for: no SDK tracer provider, no exporter (module or
thread), nothing in the message.

Each case runs the receiver (a delivery through ``create_app()``'s fast path) and what
a Celery pool child runs at start (``workers.tracing``) in a fresh Python process, so
nothing imported by other tests can hide an import or a thread."""

from __future__ import annotations

import json
from base64 import b64decode

import pytest
import redis

from tests.helpers import last_json_line, run_python
from tests.otlp import otlp_sink
from tests.servers import clean_env

pytestmark = pytest.mark.slow  # each test runs a probe as a process (a tracer is per process)

SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

PROBE = f"""
import json, sys, threading
from ingest import create_app
from workers.tracing import _in_pool_child

app = create_app()
_in_pool_child()  # what a prefork pool child runs when it starts
answer = app.test_client().post(
    "/webhooks/standard",
    json={{"type": "probe", "data": {{}}}},
    headers={{
        "webhook-id": "evt_probe",
        "traceparent": "00-{SENDER_TRACE}-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE",
    }},
)
from opentelemetry import trace

print(json.dumps({{
    "status": answer.status_code,
    "threads": [t.name for t in threading.enumerate()],
    "provider": type(trace.get_tracer_provider()).__name__,
    "exporters": sorted(m for m in sys.modules if m.startswith("opentelemetry.exporter")),
}}))
"""


def probe(redis_url: str, **otel: str) -> tuple[dict[str, object], dict[str, object]]:
    """The probe's report, and the headers of the Celery message it queued."""
    env = clean_env(HOOKFLEET_REDIS_URL=redis_url, HOOKFLEET_STANDARD_VERIFY="off", **otel)
    done = run_python(PROBE, env, timeout_s=60)
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json_line(done)
    client = redis.Redis.from_url(redis_url)
    (raw,) = client.lrange("hookfleet.default", 0, -1)
    message = json.loads(raw)
    assert json.loads(b64decode(message["body"]))[1]["event_id"] == "evt_probe"
    return report, message["headers"]


def test_without_an_otlp_endpoint_no_sdk_is_loaded_and_no_exporter_thread_runs(
    redis_url: str,
) -> None:
    report, headers = probe(redis_url)
    assert report["status"] == 202
    # The API's no-op provider: no SDK provider was installed. (redis-py 7 imports the
    # SDK's modules when they are installed, for its own optional metrics; it starts
    # nothing.)
    assert report["provider"] == "ProxyTracerProvider"
    assert report["exporters"] == []
    assert report["threads"] == ["MainThread"]
    # Nothing is carried either: not even the sender's own traceparent is passed on.
    assert "traceparent" not in headers


def test_sdk_disabled_wins_over_an_endpoint(redis_url: str) -> None:
    report, headers = probe(
        redis_url, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SDK_DISABLED="true"
    )
    assert (report["provider"], report["threads"]) == ("ProxyTracerProvider", ["MainThread"])
    assert report["exporters"] == []
    assert "traceparent" not in headers


def test_with_an_endpoint_the_exporter_runs_and_the_message_continues_the_senders_trace(
    redis_url: str,
) -> None:
    with otlp_sink() as sink:
        report, headers = probe(
            redis_url, OTEL_EXPORTER_OTLP_ENDPOINT=sink.url, OTEL_BSP_SCHEDULE_DELAY="100"
        )
        spans = sink.wait_for(lambda spans: any(s.name.startswith("POST ") for s in spans))
    assert report["status"] == 202
    assert report["threads"] == ["MainThread", "OtelBatchSpanRecordProcessor"]
    assert report["provider"] == "TracerProvider"
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in report["exporters"]
    received = next(s for s in spans if s.name == "POST /webhooks/standard")
    version, trace_id, span_id, _flags = str(headers["traceparent"]).split("-")
    assert (version, trace_id, span_id) == ("00", SENDER_TRACE, received.span_id)
    assert headers["tracestate"] == "congo=t61rcWkgMzE"  # the sender's, carried on


def test_a_propagator_not_installed_leaves_tracing_off_and_the_receiver_serves(
    redis_url: str,
) -> None:
    report, headers = probe(
        redis_url, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_PROPAGATORS="b3"
    )
    assert report["status"] == 202
    assert (report["provider"], report["threads"]) == ("ProxyTracerProvider", ["MainThread"])
    assert "traceparent" not in headers


STALLED_EXIT = """
from models import tracing

assert tracing.start("hookfleet-test")
with tracing.span("last words"):
    pass
"""


def test_a_stalled_otlp_backend_does_not_hold_a_process_exit() -> None:
    import socket
    import time

    with socket.socket() as stalled:  # accepts connections (backlog), never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        port = stalled.getsockname()[1]
        started = time.monotonic()
        done = run_python(
            STALLED_EXIT,
            clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}"),
            timeout_s=60,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        took = time.monotonic() - started
    # The SDK's own exit waits out its 10 s export timeout (and retries); ours waits
    # about 1 s (models.tracing.SHUTDOWN_FLUSH_MS) on top of the interpreter's start.
    assert took < 6, took

"""A bad ``OTEL_*`` value, or an error of the tracing itself, never stops a delivery:
starting tracing logs one line and leaves it off; a helper that meets an error gives
up its span, never raising into the pipeline (models/tracing.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from models import tracing
from workers.broker.batching import Entry
from workers.pipeline import tracing as pipeline_tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}

# One or more bad values of each kind of variable the SDK (or its OTLP exporter) reads.
BAD = {
    "propagator not installed": {"OTEL_PROPAGATORS": "b3"},
    "one of two propagators unknown": {"OTEL_PROPAGATORS": "tracecontext,jaeger"},
    "sampler name": {"OTEL_TRACES_SAMPLER": "sometimes"},
    "sampler ratio not a number": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "half",
    },
    "sampler ratio above 1": {
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "2",
    },
    "exporter Hookfleet has not": {"OTEL_TRACES_EXPORTER": "zipkin"},
    "exporter among others": {"OTEL_TRACES_EXPORTER": "otlp,console"},
    "protocol": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    "traces protocol": {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
    "headers not key=value": {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization Bearer s3cret"},
    "traces headers without a key": {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "=x"},
    "resource attributes": {"OTEL_RESOURCE_ATTRIBUTES": "deployment"},
    "timeout not a number": {"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"},
    "traces timeout negative": {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-1"},
    "batch queue size": {"OTEL_BSP_MAX_QUEUE_SIZE": "lots"},
    "batch schedule delay": {"OTEL_BSP_SCHEDULE_DELAY": "-5"},
    "batch export timeout": {"OTEL_BSP_EXPORT_TIMEOUT": "soon"},
    "span limit": {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "-3"},
    "attribute limit": {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "x"},
    "compression": {"OTEL_EXPORTER_OTLP_COMPRESSION": "zip"},
    "certificate file missing": {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
    "endpoint not a URL": {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process where tracing has not been started (nor failed to start)."""
    for name in [*tracing.NUMBERS, *tracing.KEY_VALUE_LISTS, *tracing.FILES]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(tracing._state, "broken", False)
    yield
    assert not tracing.on()


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_a_bad_otel_value_leaves_tracing_off_with_one_log_line(
    fresh: None,
    bad: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in {**ENDPOINT, **bad}.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING):
        assert tracing.start("hookfleet-test") is False
        assert tracing.start("hookfleet-test") is False  # a second start: no second line
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in lines] == ["tracing stays off"]
    assert lines[0].exc_info is None  # one line, no traceback
    assert "s3cret" not in lines[0].getMessage()
    assert (tracing.trace_headers(), tracing.current_ids()) == ({}, None)


class _BrokenTracer:
    """A tracer whose every span fails to start, as an SDK bug or exhausted resource
    would make it."""

    def start_span(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError("tracer broke")


def test_a_tracing_error_mid_delivery_drops_the_span_and_never_reaches_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(tracing._state, "on", True)
    monkeypatch.setitem(tracing._state, "tracer", _BrokenTracer())
    entry = Entry(task_id="t1", kwargs={}, retries=0, queue="hookfleet.default")
    ran = []
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            with tracing.span("hookfleet.verify") as span:
                ran.append(span)
            with pipeline_tracing.batch_spans([entry], [None]):
                with pipeline_tracing.event_scope(entry):
                    pipeline_tracing.outcome(entry, "processed")
                    ran.append("batch")
    assert ran == [None, "batch"] * 3
    # Logged once per helper, not once per delivery.
    assert len([r for r in caplog.records if "tracing error" in r.getMessage()]) == 2


def test_an_error_of_the_traced_work_still_leaves_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(tracing._state, "on", True)
    monkeypatch.setitem(tracing._state, "tracer", _BrokenTracer())
    with pytest.raises(KeyError), tracing.span("hookfleet.verify"):
        raise KeyError("the delivery's own error")

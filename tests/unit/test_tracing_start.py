"""A bad ``OTEL_*`` value, or an error of the tracing itself, never stops a delivery:
starting tracing logs one line and leaves it off; a helper that meets an error gives
up its span, never raising into the pipeline (models/tracing.py)."""

from __future__ import annotations

import logging
import re
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
    # Whitespace is a value to the exporter (it would send every batch to " /v1/traces").
    "endpoint blank": {"OTEL_EXPORTER_OTLP_ENDPOINT": " "},
    "traces endpoint blank, over a good endpoint": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "\t"},
    # The SDK reads counts and milliseconds with int(): it logged a traceback for these
    # and went on with its default, tracing on.
    **{
        f"{name}={raw}": {name: raw}
        for name in ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        for raw in ("1.5", "1e3", "inf", "-1", "0x10", "+5", "1_000")
    },
    "span limit as a float": {"OTEL_SPAN_LINK_COUNT_LIMIT": "2.0"},
    "timeout endless": {"OTEL_EXPORTER_OTLP_TIMEOUT": "inf"},
    "timeout in hex": {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0x10"},
    "timeout nan": {"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"},
    # Host-less or portless endpoints: every batch's export failed, logged each time.
    "endpoint without a host": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://"},
    "endpoint with a port only": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4318"},
    "endpoint port out of range": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:99999"},
    "endpoint port not a number": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:otlp"},
    "endpoint port 0": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:0/"},
    "endpoint ftp": {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://h"},
    "traces endpoint without a host": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https:///v1/traces"},
    # OTel spec: only "true" disables; a value that is neither is refused, not guessed.
    "sdk disabled maybe": {"OTEL_SDK_DISABLED": "maybe"},
    "sdk disabled 1": {"OTEL_SDK_DISABLED": "1"},
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
    reason = lines[0].getMessage().removeprefix("tracing stays off: ")
    assert re.match(r"\w+(Error|Exception): ", reason) is None, reason  # what, not a type
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


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_sdk_disabled_true_in_any_case_keeps_tracing_off_without_a_word(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert tracing.wanted({**ENDPOINT, "OTEL_SDK_DISABLED": value}) is False
    assert caplog.records == []


def test_only_the_endpoint_the_exporter_uses_is_checked() -> None:
    traces = "http://127.0.0.1:9/v1/traces"
    for general in ("collector:4318", " ", "http://h:99999"):
        # The traces endpoint wins (OTel spec, OTLP exporter configuration): on.
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": general,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces,
        }
        assert tracing.used_endpoint(environ) == ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)
        assert tracing.wanted(environ) is True
        tracing.check_environment(environ)
    # An empty traces endpoint is unset (OTel spec): the general one is used, and checked.
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    }
    with pytest.raises(tracing.TracingSettingError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        tracing.check_environment(environ)


def test_sdk_disabled_false_or_empty_leaves_tracing_to_the_endpoint() -> None:
    for value in ("false", "FALSE", ""):
        assert tracing.wanted({**ENDPOINT, "OTEL_SDK_DISABLED": value}) is True
        tracing.check_environment({**ENDPOINT, "OTEL_SDK_DISABLED": value})


@pytest.mark.parametrize(
    "good",
    [
        {"OTEL_BSP_SCHEDULE_DELAY": "500", "OTEL_BSP_MAX_QUEUE_SIZE": "0"},
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "1.5"},
        {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1e1"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1]:4318/v1/traces"},
    ],
)
def test_good_otel_values_pass_the_start_check(good: dict[str, str]) -> None:
    tracing.check_environment({**ENDPOINT, **good})


def test_the_otlp_certificate_wins_over_requests_ca_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's verify
    (where the OTLP exporter puts OTEL_EXPORTER_OTLP_CERTIFICATE); the exporter's
    session keeps the collector's CA file, and without one follows requests' rule."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/system-bundle.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/system-bundle.crt")
    url = "https://collector.example:4318/v1/traces"
    pinned = tracing._session_keeping_its_ca_file()
    pinned.verify = "/etc/hookfleet/collector-ca.pem"  # as the exporter's transport sets it
    plain = tracing._session_keeping_its_ca_file()

    assert pinned.merge_environment_settings(url, {}, None, None, None)["verify"] == (
        "/etc/hookfleet/collector-ca.pem"
    )
    assert plain.merge_environment_settings(url, {}, None, None, None)["verify"] == (
        "/etc/ssl/certs/system-bundle.crt"
    )

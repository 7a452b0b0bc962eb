"""OpenTelemetry tracing for every Hookfleet process: on only when the environment asks.

Configured by the standard variables of the OpenTelemetry SDK specification
(opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/), read by
the SDK itself: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
turns tracing on (OTLP over HTTP/protobuf; ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` when
``opentelemetry-exporter-otlp-proto-grpc`` is installed); ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keeps it off whatever else is set; ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_PROPAGATORS``,
``OTEL_EXPORTER_OTLP_HEADERS`` / ``_TIMEOUT`` and ``OTEL_BSP_*`` work as documented.

Off (the default), :func:`start` imports nothing of the SDK, starts no thread and
installs no tracer provider, and every helper here returns at its first line: the
receiver's hot path pays one boolean test per helper. On, each process has one SDK
``TracerProvider`` with a ``BatchSpanProcessor`` (one export thread, re-made after a
fork by the SDK itself).

The trace context crosses processes as W3C Trace Context (``traceparent`` /
``tracestate``, www.w3.org/TR/trace-context/) through the configured propagator: from a
sender's HTTP headers into the receiver's request span, and from there into the Celery
message headers the receiver writes by hand (:mod:`models.broker.envelope`), where the
worker reads it back (``workers.tracing``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanKind

log = logging.getLogger("hookfleet.tracing")

#: The instrumentation scope every Hookfleet span is made under.
SCOPE = "hookfleet"

_TRUE = ("true", "1", "yes", "on")
_state: dict[str, Any] = {"on": False, "provider": None, "tracer": None}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for traces: an OTLP endpoint is set, and neither
    ``OTEL_SDK_DISABLED`` nor ``OTEL_TRACES_EXPORTER=none`` says no."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def on() -> bool:
    """Whether this process exports traces (:func:`start` found them wanted)."""
    return bool(_state["on"])


def start(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK tracer provider with an OTLP exporter, if ``environ`` (default:
    ``os.environ``) asks for traces; returns whether tracing is on. ``service`` is the
    ``service.name`` unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name one.
    Idempotent within a process. A misconfiguration (grpc asked for but not installed)
    is logged and leaves tracing off: traces never stop a delivery."""
    environ = os.environ if environ is None else environ
    if _state["on"] or not wanted(environ):
        return on()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        exporter = _exporter(environ)
    except ImportError as error:
        log.error("tracing stays off: %s", error)
        return False
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # The batch processor logs a warning for every span it drops when its queue is full
    # (more spans than the exporter keeps up with): under load, that line per span
    # would cost more than the spans. One a minute says the same.
    logging.getLogger(_BATCH_LOGGER).addFilter(_OncePerMinute())
    # The sampler comes from OTEL_TRACES_SAMPLER (parentbased_always_on by default).
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # One tracer for the process: asking the provider for it costs more than a span.
    _state.update(on=True, provider=provider, tracer=provider.get_tracer(SCOPE))
    return True


#: The logger of the SDK's batch span processor (opentelemetry/sdk/_shared_internal).
_BATCH_LOGGER = "opentelemetry.sdk._shared_internal"


class _OncePerMinute(logging.Filter):
    """Lets one record through a minute; the rest are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.created < self._next:
            return False
        self._next = record.created + 60
        return True


def _exporter(environ: Mapping[str, str]) -> Any:
    """The OTLP span exporter the protocol variables ask for; it reads its endpoint,
    headers, timeout and compression from the environment itself."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol.strip().lower() == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ImportError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
            ) from None
        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (a process about to end without ``atexit``: a pool
    child leaves with ``os._exit``)."""
    provider = _state["provider"]
    if provider is not None:
        provider.force_flush(timeout_ms)


def tracer() -> Any:
    """Hookfleet's tracer (call only while tracing is on)."""
    return _state["tracer"]


#: What :func:`span` returns while tracing is off: one shared, reusable no-op.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    *,
    kind: SpanKind | None = None,
    context: Context | None = None,
    attributes: Mapping[str, Any] | None = None,
    links: list[Link] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A current span named ``name`` (child of ``context``, else of the current span);
    yields None and does nothing when tracing is off. An exception leaving the block
    is recorded on the span and sets its status to error, then raised on. Under a
    current span that is not recording (sampled out), yields None too."""
    if not _state["on"]:
        return _OFF
    return _span(name, kind, context, attributes, links)


@contextlib.contextmanager
def _span(
    name: str,
    kind: SpanKind | None,
    context: Context | None,
    attributes: Mapping[str, Any] | None,
    links: list[Link] | None,
) -> Iterator[Span | None]:
    from opentelemetry.trace import SpanKind, get_current_span

    parent = get_current_span() if context is None else None
    if parent is not None and parent.get_span_context().is_valid and not parent.is_recording():
        # Under a span the sampler left out, a child would be left out too: skip the
        # cost of making one (a delivery sampled out pays for its request span only).
        yield None
        return
    with tracer().start_as_current_span(
        name,
        context=context,
        kind=kind or SpanKind.INTERNAL,
        attributes=dict(attributes or {}),
        links=links,
    ) as current:
        yield current


def trace_headers() -> dict[str, str]:
    """The current span's context as propagation headers (``traceparent`` and, when
    set, ``tracestate``); empty when tracing is off or no span is current."""
    if not _state["on"]:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(headers: Mapping[str, Any]) -> Context | None:
    """The remote context in propagation ``headers`` (a ``traceparent``), or None."""
    if not _state["on"] or not headers:
        return None
    from opentelemetry import propagate, trace

    context = propagate.extract({k: str(v) for k, v in headers.items() if v is not None})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def link_to(headers: Mapping[str, Any], **attributes: Any) -> Link | None:
    """A span link to the span named by ``headers``' ``traceparent``, or None."""
    context = extract(headers)
    if context is None:
        return None
    from opentelemetry import trace

    return trace.Link(trace.get_current_span(context).get_span_context(), attributes)


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span in hex (as OTLP backends show them),
    or None when tracing is off or no span is recording."""
    if not _state["on"]:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def instrument_engine(engine: Any) -> None:
    """Statement spans for ``engine`` (opentelemetry-instrumentation-sqlalchemy's
    ``EngineTracer``), under whatever span is current; nothing when tracing is off.

    Per engine, not the instrumentor's global ``instrument()``: that also wraps
    ``create_async_engine``, importing SQLAlchemy's asyncio support (and greenlet,
    which Hookfleet does not install), and its dependency check refuses
    SQLAlchemy 2.1, whose engine events the tracer hooks are unchanged."""
    if not _state["on"]:
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy import __name__ as scope
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    connections = metrics.get_meter(scope).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(trace.get_tracer(scope), engine, connections)

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

import atexit
import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanKind

log = logging.getLogger("hookfleet.tracing")

#: The instrumentation scope every Hookfleet span is made under.
SCOPE = "hookfleet"

#: ``OTEL_SDK_DISABLED``'s values (OTel spec, "Configuration / Environment variables",
#: boolean: only ``true``, any case, is true; the SDK's TracerProvider reads it so).
#: Another value is refused with one line (tracing stays off), never guessed at.
SDK_DISABLED_VALUES = ("", "true", "false")


class TracingSettingError(ValueError):
    """An ``OTEL_*`` value tracing does not start with; the message names the variable
    and says what is wrong (never a header's value: those hold credentials)."""


_state: dict[str, Any] = {"on": False, "provider": None, "tracer": None, "broken": False}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for traces: an OTLP endpoint is set, and neither
    ``OTEL_SDK_DISABLED`` nor ``OTEL_TRACES_EXPORTER=none`` says no."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return used_endpoint(environ) is not None


def on() -> bool:
    """Whether this process exports traces (:func:`start` found them wanted)."""
    return bool(_state["on"])


def start(
    service: str,
    environ: Mapping[str, str] | None = None,
    instrument: Callable[[Any], None] | None = None,
) -> bool:
    """Install the SDK tracer provider with an OTLP exporter, if ``environ`` (default:
    ``os.environ``) asks for traces; returns whether tracing is on. ``service`` is the
    ``service.name`` unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name one;
    ``instrument(provider)`` installs a process's instrumentation libraries.

    Idempotent within a process. Any error while starting — a propagator, sampler,
    exporter or protocol the SDK does not know, malformed headers or numbers, a missing
    package — is logged once (``tracing stays off: ...``) and leaves tracing off in
    this process, and later calls return False at once: traces never stop a delivery."""
    environ = os.environ if environ is None else environ
    if _state["on"] or _state["broken"] or not wanted(environ):
        return on()
    try:
        provider = _provider(service, environ)
    except Exception as error:  # noqa: BLE001 (tracing must never stop the process)
        _state["broken"] = True
        log.error("tracing stays off: %s", _what_is_wrong(error))
        return False
    try:
        if instrument is not None:
            instrument(provider)
    except Exception as error:  # noqa: BLE001 (as above)
        _state["broken"] = True
        log.error("tracing stays off: %s", _what_is_wrong(error))
        provider.shutdown()
        return False
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    # One tracer for the process: asking the provider for it costs more than a span.
    _state.update(on=True, provider=provider, tracer=provider.get_tracer(SCOPE))
    return True


def _what_is_wrong(error: BaseException) -> str:
    """The reason, for the one log line: ours and the SDK's messages name the variable;
    the exception's type only when it says nothing else."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


#: The exporters ``OTEL_TRACES_EXPORTER`` may name (besides ``none``): OTLP only.
EXPORTERS = ("otlp",)
#: The OTLP protocols (``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``) Hookfleet can export with.
PROTOCOLS = ("http/protobuf", "grpc")


def _provider(service: str, environ: Mapping[str, str]) -> Any:
    """The SDK tracer provider ``environ`` describes, every part of it built (and so
    checked) now; raises what the SDK raises for a value it does not accept, or
    ValueError for one Hookfleet does not support."""
    exporters = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    ]
    unknown = [name for name in exporters if name not in EXPORTERS]
    if unknown:
        raise TracingSettingError(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported (otlp, none)"
        )
    check_environment(environ)
    # The propagators OTEL_PROPAGATORS names are loaded when this module is first
    # imported: an unknown one (b3 without its package) raises here, once, instead of
    # in every message's trace headers.
    from opentelemetry import propagate  # noqa: F401
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider, sampling
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sampler = _sampler(environ, sampling)
    exporter = _exporter(environ)
    processor = BatchSpanProcessor(exporter, export_timeout_millis=_export_timeout_ms(environ))
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # The batch processor logs a warning for every span it drops when its queue is full
    # (more spans than the exporter keeps up with): under load, that line per span
    # would cost more than the spans. One a minute says the same.
    logging.getLogger(_BATCH_LOGGER).addFilter(_OncePerMinute())
    # Not the SDK's own atexit shutdown: it waits out a stalled backend's export
    # timeout and retries; ours (:func:`shutdown`) is bounded.
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    atexit.register(shutdown)
    return provider


#: OTEL_* variables holding a count or a number of milliseconds (the SDK's span limits
#: and batch processor): the SDK reads them with ``int()`` (opentelemetry-sdk
#: ``trace/export/__init__.py``, ``trace/__init__.py`` SpanLimits) and on anything else
#: logs a traceback and uses its default, so only digits pass here.
WHOLE_NUMBERS = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)
#: Seconds, read with ``float()`` by the OTLP exporter (``_resolve_timeout``): a finite
#: number of at least 0 (``1.5`` and ``1e1`` are fine, ``inf`` or ``0x10`` are not).
SECONDS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
NUMBERS = (*WHOLE_NUMBERS, *SECONDS)
#: ``key=value,...`` lists (W3C Baggage format, SDK spec).
KEY_VALUE_LISTS = (
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_RESOURCE_ATTRIBUTES",
)
COMPRESSIONS = ("OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
FILES = tuple(
    f"OTEL_EXPORTER_OTLP{part}_{name}"
    for part in ("", "_TRACES")
    for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")
)
#: The traces endpoint first: it wins (:func:`used_endpoint`).
ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise ValueError for an ``OTEL_*`` value the SDK would not use as given: it
    falls back to a default with a warning (or a logged traceback) for most, and
    raises for some only when the first span is exported. Tracing is off instead."""
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip()
    if disabled.lower() not in SDK_DISABLED_VALUES:
        raise TracingSettingError(f"OTEL_SDK_DISABLED={disabled!r} is neither true nor false")
    for name in WHOLE_NUMBERS:
        raw = environ.get(name, "").strip()
        if raw and not (raw.isascii() and raw.isdigit()):
            raise TracingSettingError(f"{name}={raw!r} is not a whole number of at least 0")
    for name in SECONDS:
        raw = environ.get(name, "").strip()
        if raw and not _non_negative(raw):
            raise TracingSettingError(f"{name}={raw!r} is not a number of seconds (at least 0)")
    for name in KEY_VALUE_LISTS:
        for item in environ.get(name, "").split(","):
            key, equals, _value = item.partition("=")
            if item.strip() and (not equals or not key.strip()):
                # Not the item itself: a header list holds credentials.
                raise TracingSettingError(f"{name} is not a list of key=value")
    for name in COMPRESSIONS:
        raw = environ.get(name, "").strip().lower()
        if raw not in ("", "gzip", "deflate", "none"):
            raise TracingSettingError(f"{name}={raw!r} is not gzip, deflate or none")
    for name in FILES:
        raw = environ.get(name, "")
        if raw and not os.path.isfile(raw):
            raise TracingSettingError(f"{name}: no file {raw!r}")
    used = used_endpoint(environ)
    if used is not None:
        _check_endpoint(*used)
    from opentelemetry.util._importlib_metadata import entry_points

    for raw in environ.get("OTEL_PROPAGATORS", "").split(","):
        name = raw.strip().lower()
        if (
            name
            and name != "none"
            and not entry_points(group="opentelemetry_propagator", name=name)
        ):
            raise TracingSettingError(f"OTEL_PROPAGATORS: propagator {name} is not installed")


def _non_negative(raw: str) -> bool:
    try:
        value = float(raw)
    except ValueError:
        return False
    return math.isfinite(value) and value >= 0


def used_endpoint(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, value)`` of the endpoint the OTLP exporter sends to, or None: the
    traces endpoint when set, else the general one (OTel spec, "OTLP Exporter
    Configuration": the signal-specific variable wins). "Set" as the exporter reads
    it (``opentelemetry.exporter.otlp.proto.http._common._resolve_endpoint``): any
    non-empty value, whitespace too. The unused one is never looked at."""
    for name in ENDPOINTS:
        if raw := environ.get(name):
            return name, raw
    return None


def _check_endpoint(name: str, raw: str) -> None:
    """An http(s) URL with a host and, if given, a port in 1-65535: anything else the
    exporter takes at start and fails to send every batch to (a logged error each).
    Whitespace alone is refused, not taken as unset: the exporter would send to it."""
    if not raw.strip():
        raise TracingSettingError(f"{name} is blank (unset it, or name the collector)")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https"):
        raise TracingSettingError(f"{name} is not an http(s) URL")
    try:
        port = parts.port
    except ValueError:
        raise TracingSettingError(f"{name} has a port that is not a number in 0-65535") from None
    if not parts.hostname:
        raise TracingSettingError(f"{name} names no host")
    if port == 0:
        raise TracingSettingError(f"{name} has port 0")


def _sampler(environ: Mapping[str, str], sampling: Any) -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER(_ARG)`` name (parentbased_always_on by default).
    The SDK falls back to its default, with a warning, on a name it does not know and
    to a ratio of 1 on a malformed ratio: here either is an error (tracing off)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in sampling._KNOWN_SAMPLERS:
        raise TracingSettingError(f"OTEL_TRACES_SAMPLER={name} is not a sampler the SDK knows")
    if "traceidratio" in name:
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            raise TracingSettingError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise TracingSettingError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not between 0 and 1")
    return sampling._get_from_env_or_default()


#: How long one export may take before it is given up (``OTEL_BSP_EXPORT_TIMEOUT``
#: overrides; the SDK's own default is 30 s, which a stalled backend would cost a
#: process at every flush).
EXPORT_TIMEOUT_MS = 2000
#: How long a process that is ending waits for its last spans to be exported.
SHUTDOWN_FLUSH_MS = 1000


def _export_timeout_ms(environ: Mapping[str, str]) -> int:
    raw = environ.get("OTEL_BSP_EXPORT_TIMEOUT")
    if raw is None:
        return EXPORT_TIMEOUT_MS
    try:
        return int(raw)
    except ValueError:
        raise TracingSettingError(f"OTEL_BSP_EXPORT_TIMEOUT={raw!r} is not a number") from None


def shutdown(timeout_ms: int = SHUTDOWN_FLUSH_MS) -> None:
    """End tracing in this process: export what is buffered, waiting at most
    ``timeout_ms`` (a stalled backend does not hold a process's exit), then stop the
    export thread. Registered with ``atexit`` by :func:`start`; never raises."""
    provider = _state["provider"]
    if provider is None:
        return
    _state.update(on=False, provider=None)
    # The SDK's shutdown exports what is left with the exporter's own timeout and
    # retries: run it aside and wait for it at most timeout_ms (a daemon thread: the
    # process may end under it).
    ender = threading.Thread(target=provider.shutdown, name="hookfleet-tracing-end", daemon=True)
    try:
        ender.start()
        ender.join(timeout_ms / 1000)
    except Exception as error:  # noqa: BLE001 (an ending process: nothing to stop)
        log.warning("tracing shutdown: %s", type(error).__name__)


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
    protocol = protocol.strip().lower()
    if protocol not in PROTOCOLS:
        raise TracingSettingError(
            f"OTLP protocol {protocol!r} is not supported (http/protobuf, grpc)"
        )
    if protocol == "grpc":
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

    return OTLPSpanExporter(session=_session_keeping_its_ca_file())


def _session_keeping_its_ca_file() -> Any:
    """A requests session for the OTLP HTTP exporter in which the CA file the exporter
    sets (``OTEL_EXPORTER_OTLP(_TRACES)_CERTIFICATE``, as ``session.verify``) wins over
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: requests lets those variables override
    a session's ``verify`` (``Session.merge_environment_settings``, psf/requests#3829),
    so the collector's own CA would be ignored. Proxies from the environment still
    apply; without an OTLP certificate, requests' behaviour is unchanged."""
    import requests

    class SessionKeepingItsCaFile(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return SessionKeepingItsCaFile()


def flush(timeout_ms: int = SHUTDOWN_FLUSH_MS) -> None:
    """Export what is buffered now, waiting at most about ``timeout_ms``."""
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
def untraced() -> Iterator[None]:
    """No instrumentation span (a database statement's, an HTTP call's) is made inside
    this block, nor in a thread that runs with its context copied: for a process's own
    housekeeping (a receiver worker's boot-time warm-up), which would otherwise be a
    trace of its own that no request or task started. OpenTelemetry's
    ``suppress_instrumentation`` (opentelemetry-instrumentation ``utils``); nothing
    when tracing is off."""
    if not _state["on"]:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def guarded(default: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a tracing helper return ``default`` instead of raising: an error of the SDK
    or of an instrumentation (a bug, a value it chokes on) is logged once per helper
    and never reaches the delivery the helper was tracing."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def safe(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 (traces never stop a delivery)
                failed_quietly(function.__qualname__, error)
                return default

        return safe

    return wrap


def failed_quietly(where: str, error: BaseException) -> None:
    """Log a tracing helper's error, once per ``where`` in this process."""
    if where in _failures:
        return
    _failures.add(where)
    log.error("tracing error in %s (span dropped): %s: %s", where, type(error).__name__, error)


_failures: set[str] = set()


@contextlib.contextmanager
def _span(
    name: str,
    kind: SpanKind | None,
    context: Context | None,
    attributes: Mapping[str, Any] | None,
    links: list[Link] | None,
) -> Iterator[Span | None]:
    current = _open(name, kind, context, attributes, links)
    if current is None:
        yield None
        return
    from opentelemetry import trace

    # use_span records an exception leaving the block and sets the error status.
    with trace.use_span(current, end_on_exit=True):
        yield current


@guarded(None)
def _open(
    name: str,
    kind: SpanKind | None,
    context: Context | None,
    attributes: Mapping[str, Any] | None,
    links: list[Link] | None,
) -> Span | None:
    """The span :func:`span` makes current, or None (sampled out, or an error)."""
    from opentelemetry.trace import SpanKind, get_current_span

    parent = get_current_span() if context is None else None
    if parent is not None and parent.get_span_context().is_valid and not parent.is_recording():
        # Under a span the sampler left out, a child would be left out too: skip the
        # cost of making one (a delivery sampled out pays for its request span only).
        return None
    span: Span = tracer().start_span(
        name,
        context=context,
        kind=kind or SpanKind.INTERNAL,
        attributes=dict(attributes or {}),
        links=links,
    )
    return span


#: Providers whose event ids end in personal data: Cal.com's
#: ``T:uid:startTime:createdAt:<attendees' e-mails, or names and phones>`` and
#: ``T:bookingUid:hostEmail`` (ingest/providers/calcom.py ``event_key``).
PERSONAL_EVENT_IDS = frozenset({"calcom"})
#: An e-mail address inside any other provider's event id.
_EMAIL = re.compile(r"[^\s:/]+@[^\s:/]+")


def private_event_id(provider: str, event_id: str) -> str:
    """``event_id`` as span attributes show it. For a provider of
    :data:`PERSONAL_EVENT_IDS`, its first two parts (trigger and booking uid) and
    ``h:`` with the first 12 hex digits of the rest's BLAKE2b hash; in any other, each
    e-mail address replaced by ``email:`` and its hash so. A trace backend (often a
    vendor's) need not hold attendees' addresses, names or phones; the same event still
    gives the same attribute, and the correlation id leads to the log lines, which
    carry the event id whole (they stay where the operator keeps them)."""
    if provider in PERSONAL_EVENT_IDS:
        parts = event_id.split(":", 2)
        if len(parts) == 3:
            return f"{parts[0]}:{parts[1]}:h:{_digest(parts[2])}"
        return event_id
    if "@" not in event_id:
        return event_id
    return _EMAIL.sub(lambda found: "email:" + _digest(found[0]), event_id)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@guarded(None)
def current_context() -> Context | None:
    """The current trace context, to make a span under it later or in another thread
    (``span(context=...)``); None when tracing is off."""
    if not _state["on"]:
        return None
    from opentelemetry import context

    return context.get_current()


@guarded(None)
def record_error(span: Span | None, error: BaseException) -> None:
    """Record ``error`` on ``span`` (an event and the error status) when the code that
    failed handles it itself (no exception leaves the span's block)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


@guarded({})
def trace_headers() -> dict[str, str]:
    """The current span's context as propagation headers (``traceparent`` and, when
    set, ``tracestate``); empty when tracing is off or no span is current."""
    if not _state["on"]:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@guarded(None)
def extract(headers: Mapping[str, Any]) -> Context | None:
    """The remote context in propagation ``headers`` (a ``traceparent``), or None."""
    if not _state["on"] or not headers:
        return None
    from opentelemetry import propagate, trace

    context = propagate.extract({k: str(v) for k, v in headers.items() if v is not None})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


@guarded(None)
def link_to(headers: Mapping[str, Any], **attributes: Any) -> Link | None:
    """A span link to the span named by ``headers``' ``traceparent``, or None."""
    context = extract(headers)
    if context is None:
        return None
    from opentelemetry import trace

    return trace.Link(trace.get_current_span(context).get_span_context(), attributes)


@guarded(None)
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


@guarded(None)
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

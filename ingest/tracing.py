"""The receiver's request span, made by hand for the fast path (ingest/fastpath.py).

``POST /webhooks/<provider>`` never reaches Flask's dispatch, so Flask's
instrumentation would not see a delivery; the span is made here instead, with the
attribute names of the OpenTelemetry HTTP semantic conventions
(opentelemetry.io/docs/specs/semconv/http/http-spans/) and Hookfleet's own under
``hookfleet.*``. A sender's ``traceparent`` / ``tracestate`` headers (W3C Trace
Context, read by the configured propagator) make it the child of the sender's span:
the delivery joins the sender's trace. Used only while tracing is on
(:func:`models.tracing.on`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from models import tracing

#: Log-context keys copied onto the request span, and the attribute each becomes.
_ATTRIBUTES = {
    "correlation_id": "hookfleet.correlation_id",
    "event_id": "hookfleet.event_id",
    "queue": "hookfleet.queue",
}


@tracing.guarded({})
def _propagation_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The propagator's headers (``traceparent``, ``tracestate``, ``baggage``...) as
    the WSGI environ holds them (``HTTP_TRACEPARENT``)."""
    from opentelemetry import propagate

    carrier = {}
    for name in propagate.get_global_textmap().fields:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value:
            carrier[name] = value
    return carrier


@contextmanager
def request_span(environ: Mapping[str, Any], provider: str) -> Iterator[Any]:
    """The server span of one delivery, current while it is taken: its verify and
    claim/enqueue spans are its children, and the Celery message carries its context."""
    from opentelemetry.trace import SpanKind

    path = environ.get("PATH_INFO", "")
    with tracing.span(
        f"POST /webhooks/{provider}",
        kind=SpanKind.SERVER,
        context=tracing.extract(_propagation_headers(environ)),
        attributes={
            "http.request.method": "POST",
            "url.path": path,
            "http.route": "/webhooks/<provider>",
            "hookfleet.provider": provider,
        },
    ) as span:
        yield span


#: The refusal code of a webhook path Flask answers (the provider is not known).
REFUSAL_BY_STATUS = {404: "unknown_provider", 405: "method_not_allowed"}
_WEBHOOKS = "/webhooks/"


def refusal_code(status: int, path: str) -> str | None:
    """The ``ErrorCode`` value Flask's answer to a webhook ``path`` names in its body,
    for the span's ``error.type``: a 404 for one path segment after ``/webhooks/`` is
    ``unknown_provider`` (ingest/views.py, the ``/webhooks/<provider>`` route), any other
    404 (``/webhooks/``, ``/webhooks/x/extra``, ``/webhooks//x``) matched no route and is
    ``not_found`` (ingest/errors.py)."""
    if status == 404:
        provider = path[len(_WEBHOOKS) :] if path.startswith(_WEBHOOKS) else ""
        return "unknown_provider" if provider and "/" not in provider else "not_found"
    return REFUSAL_BY_STATUS.get(status)


@contextmanager
def refusal_span(environ: Mapping[str, Any]) -> Iterator[Any]:
    """The server span of a request to a webhook path that is refused before any
    provider takes it (unknown provider, not a POST); in the sender's trace too."""
    from opentelemetry.trace import SpanKind

    method = str(environ.get("REQUEST_METHOD", ""))
    with tracing.span(
        f"{method} /webhooks/<provider>",
        kind=SpanKind.SERVER,
        context=tracing.extract(_propagation_headers(environ)),
        attributes={
            "http.request.method": method,
            "url.path": environ.get("PATH_INFO", ""),
            "http.route": "/webhooks/<provider>",
        },
    ) as span:
        yield span


@tracing.guarded(None)
def describe_answer(
    span: Any,
    status: int,
    outcome: str,
    context: Mapping[str, object] | None,
    refused: str | None = None,
) -> None:
    """Put the answer on the request span: status code, outcome (the metrics' bucket:
    accepted, duplicate, answered, unauthorized, bad_request, shed, error...), the
    refusal's own code as ``error.type`` (the ``ErrorCode`` value the JSON body names:
    missing_signature, body_too_large, queue_unavailable...), and the delivery's
    correlation id, event id and queue (the receiver's log context). A 5xx is an
    error status (a sender's 4xx is not the server's fault: semantic conventions)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    span.set_attribute("hookfleet.outcome", outcome)
    if refused is not None:
        span.set_attribute("error.type", refused)
    context = context or {}
    for key, attribute in _ATTRIBUTES.items():
        value = context.get(key)
        if value is not None:
            value = str(value)
            if key == "event_id":  # without the attendees of a Cal.com event id
                value = tracing.private_event_id(str(context.get("provider", "")), value)
            span.set_attribute(attribute, value)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, refused or outcome))

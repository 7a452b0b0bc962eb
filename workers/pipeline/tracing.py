"""The worker's spans for a batch of deliveries (``workers.pipeline.tasks``).

Each message carries its delivery's trace context in its ``traceparent`` header (the
receiver's request span, :mod:`models.broker.envelope`; a replay's or a sweep's publish
span, :mod:`workers.recovery.deadletters`), so each event gets its own
``hookfleet.process_event`` span (kind CONSUMER) in its own delivery's trace: a child
of that context. The work a batch shares — the multi-row INSERT, the claiming UPDATE —
belongs to no one delivery: it runs under one ``hookfleet.batch`` span, which links to
every event's span, and every event span links back to it (batch membership); the
batch's size is an attribute of both. An event's own work (its handler's statements,
its outbound calls, a settle-one retry of it) runs with its span current, so the
database (SQLAlchemy instrumentation) and HTTP (httpx instrumentation) spans sit under
it. How it ended (processed, already done, failed, dead, retried) is the span's
``hookfleet.outcome``; failures set the error status and record a span event.

A replayed event's span also links to the trace it was first received in (the
``traceparent`` kept in its row's headers, see :func:`remember_trace`).

Every function here returns at once when tracing is off (``models.tracing.on``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from models import tracing
from models.contract import EventMessage
from workers.broker.batching import Entry

#: The key under which a row's headers keep the trace the event was received in.
TRACE_KEY = "traceparent"
#: Its W3C companion (vendors' trace data), kept beside it when the message had one.
STATE_KEY = "tracestate"

_batch: dict[str, Any] = {}  # task id -> event span, for the batch this process runs


def remember_trace(entry: Entry, event: EventMessage) -> EventMessage:
    """``event`` with the trace its message came with kept in its headers, so its row
    records it (a later replay links to it). A replay's row keeps its original."""
    traceparent = entry.trace.get(TRACE_KEY)
    if not tracing.on() or not traceparent or TRACE_KEY in event.headers:
        return event
    kept = {k: v for k, v in entry.trace.items() if k in (TRACE_KEY, STATE_KEY) and v}
    return dataclasses.replace(event, headers={**event.headers, **kept})


@contextmanager
def batch_spans(entries: list[Entry], events: list[EventMessage | None]) -> Iterator[None]:
    """Open a span for every event of the batch and the batch's own span (current while
    the block runs); end them all when it ends. A batch none of whose events is sampled
    (each sender's ``traceparent`` said not-sampled, or the sampler said no) gets no
    batch span either: an unsampled event's span is current instead, so the shared
    statements are left out like the events. An error of the tracing itself leaves
    the batch untraced; it never fails the batch."""
    opened = _open_batch(entries, events) if tracing.on() else None
    if opened is None:
        yield
        return
    from opentelemetry import trace

    current, spans = opened
    _batch.clear()
    _batch.update(spans)
    try:
        with trace.use_span(current, end_on_exit=False):
            yield
    finally:
        _end([current, *spans.values()])
        _batch.clear()


@tracing.guarded(None)
def _open_batch(entries: list[Entry], events: list[EventMessage | None]) -> Any:
    """``(the span current for the batch's shared work, {task id: event span})``."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = tracing.tracer()
    size = len(entries)
    spans = {}
    for entry, event in zip(entries, events, strict=True):
        spans[entry.task_id] = tracer.start_span(
            "hookfleet.process_event",
            context=tracing.extract(entry.trace),
            kind=SpanKind.CONSUMER,
            attributes=_attributes(entry, event, size),
            links=_original(entry, event),
        )
    sampled = [s for s in spans.values() if s.is_recording()]
    if not sampled:
        # Not a root of its own (the sampler would take it): under an unsampled
        # event's context, the batch's statements are sampled out with it.
        return next(iter(spans.values())), spans
    batch = tracer.start_span(
        "hookfleet.batch",
        context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root of its own
        attributes={"hookfleet.batch.size": size},
        links=[trace.Link(s.get_span_context()) for s in sampled],
    )
    for span in sampled:
        span.add_link(batch.get_span_context(), {"hookfleet.link": "batch"})
    return batch, spans


@tracing.guarded(None)
def _end(spans: list[Any]) -> None:
    for span in spans:
        span.end()  # a second end() of the same span is a no-op (the SDK warns only)


@tracing.guarded(nullcontext())
def event_scope(entry: Entry) -> Any:
    """A context manager making ``entry``'s span current (its handler, its settling)."""
    span = _batch.get(entry.task_id)
    if span is None:
        return nullcontext()
    from opentelemetry import trace

    return trace.use_span(span, end_on_exit=False, record_exception=False)


@tracing.guarded(None)
def outcome(entry: Entry, value: str) -> None:
    """Record how ``entry`` ended (processed, already_done, ...)."""
    span = _batch.get(entry.task_id)
    if span is not None:
        span.set_attribute("hookfleet.outcome", value)


@tracing.guarded(None)
def failed(entry: Entry, value: str, error: BaseException) -> None:
    """``entry`` failed or went dead: the error status and the exception as an event."""
    span = _batch.get(entry.task_id)
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("hookfleet.outcome", value)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{value}: {type(error).__name__}"))


@tracing.guarded(None)
def retried(entry: Entry, countdown_s: int, error: BaseException) -> None:
    """``entry`` goes to a new message in ``countdown_s`` (its span is that message's
    parent: the retry continues this trace)."""
    span = _batch.get(entry.task_id)
    if span is None:
        return
    span.set_attribute("hookfleet.outcome", "retried")
    span.add_event(
        "retry scheduled",
        {
            "hookfleet.retry.countdown_s": countdown_s,
            "hookfleet.retry.attempt": entry.retries + 2,
            "exception.type": type(error).__name__,
        },
    )


def _attributes(entry: Entry, event: EventMessage | None, size: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.destination.name": entry.queue,
        "messaging.message.id": entry.task_id,
        "hookfleet.attempt": entry.retries + 1,
        "hookfleet.batch.size": size,
    }
    if event is not None:
        attributes.update(
            {
                "hookfleet.provider": event.provider,
                "hookfleet.event_id": tracing.private_event_id(event.provider, event.event_id),
                "hookfleet.event_type": event.event_type,
                "hookfleet.correlation_id": event.correlation_id,
                "hookfleet.replay": event.replay,
            }
        )
    return attributes


def _original(entry: Entry, event: EventMessage | None) -> list[Any]:
    """A link to the trace a replayed or swept event was first received in (none when
    that is the trace its message came with)."""
    if event is None or event.headers.get(TRACE_KEY) in (None, entry.trace.get(TRACE_KEY)):
        return []
    link = tracing.link_to(_first_trace(event), **{"hookfleet.link": "original"})
    return [link] if link is not None else []


def _first_trace(event: EventMessage) -> dict[str, Any]:
    """The trace context the event was first received in, as its row keeps it."""
    return {k: event.headers.get(k) for k in (TRACE_KEY, STATE_KEY) if event.headers.get(k)}


@tracing.guarded(nullcontext())
def publish_span(event: EventMessage) -> Any:
    """The span of publishing ``event`` again from its row (kind PRODUCER): a replay
    (``hookfleet.replay``) or a stuck event's requeue (``hookfleet.requeue``), a child
    of whatever is current (the command, the sweep task) and linked to the trace the
    event was first received in. The message it publishes carries this span's context
    (pass ``models.tracing.trace_headers()`` as its headers inside the block)."""
    if not tracing.on():
        return nullcontext()
    from opentelemetry.trace import SpanKind

    link = tracing.link_to(_first_trace(event), **{"hookfleet.link": "original"})
    return tracing.span(
        "hookfleet.replay" if event.replay else "hookfleet.requeue",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.destination.name": event.queue,
            "hookfleet.provider": event.provider,
            "hookfleet.event_id": tracing.private_event_id(event.provider, event.event_id),
            "hookfleet.correlation_id": event.correlation_id,
        },
        links=[link] if link is not None else None,
    )

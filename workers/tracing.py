"""Tracing in the worker processes, beat and the ``hookfleet`` command (models.tracing).

Started where each process begins its own work, after any fork: a prefork pool child
in ``worker_process_init`` (tasks run there, never in the main process), beat in
``beat_init``, the command line's replay and sweep in :func:`start_cli`. Besides the
SDK (and the SQLAlchemy instrumentation :func:`models.tracing.start` installs), a
worker gets the Celery instrumentation (spans for Celery's own tasks and publishes:
beat's schedule, the sweep, a retry's new message) and the httpx instrumentation
(outbound calls to Retell and Cal.com, under the event span that makes them).
``hookfleet.process_event`` runs in batches, past Celery's per-task signals: its spans
are made by ``workers.pipeline.tracing``.

The Redis instrumentation is left out on purpose: kombu polls the broker (BRPOP,
lease renewals) several times a second, and each poll would be a trace of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import beat_init, worker_process_init, worker_process_shutdown

from models import tracing


def _instrument(provider: Any) -> None:
    """Celery's and httpx's instrumentation, exporting through ``provider``."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument(tracer_provider=provider)
    if not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
        HTTPXClientInstrumentor().instrument(tracer_provider=provider)


def _start(service: str) -> bool:
    # Any error starting (a bad OTEL_* value, a missing package) is logged once and
    # leaves tracing off: the pool child goes on processing deliveries untraced.
    return tracing.start(service, instrument=_instrument)


@worker_process_init.connect
def _in_pool_child(**_: Any) -> None:
    _start("hookfleet-worker")


@beat_init.connect
def _in_beat(**_: Any) -> None:
    _start("hookfleet-beat")


@worker_process_shutdown.connect
def _flush(**_: Any) -> None:
    # A pool child leaves with os._exit: no atexit, so the SDK would drop what it holds.
    # Bounded (models.tracing.SHUTDOWN_FLUSH_MS): a stalled backend does not hold it.
    tracing.shutdown()


def start_cli() -> bool:
    """Tracing for a ``hookfleet`` command; what is left is exported when the command
    exits (bounded, :func:`models.tracing.shutdown`)."""
    return _start("hookfleet-cli")


#: Commands that run no work of their own to trace: they run (or become) the fleet.
UNTRACED_COMMANDS = frozenset({"up", "run"})


@contextmanager
def command_span(command: str | None) -> Iterator[None]:
    """While tracing is wanted, the root span ``hookfleet <command>`` of one command's
    run: its statements, HTTP calls and publishes (a queued task carries its context,
    Celery's instrumentation) are its children, one trace per command."""
    if command is None or command in UNTRACED_COMMANDS or not tracing.wanted(os.environ):
        yield
        return
    start_cli()
    with tracing.span(f"hookfleet {command}", attributes={"hookfleet.command": command}):
        yield

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

from typing import Any

from celery.signals import beat_init, worker_process_init, worker_process_shutdown

from models import tracing


def _start(service: str) -> bool:
    if not tracing.start(service):
        return False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument()
    if not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
        HTTPXClientInstrumentor().instrument()
    return True


@worker_process_init.connect
def _in_pool_child(**_: Any) -> None:
    _start("hookfleet-worker")


@beat_init.connect
def _in_beat(**_: Any) -> None:
    _start("hookfleet-beat")


@worker_process_shutdown.connect
def _flush(**_: Any) -> None:
    # A pool child leaves with os._exit: no atexit, so the SDK would drop what it holds.
    tracing.flush()


def start_cli() -> bool:
    """Tracing for a ``hookfleet`` command that publishes (replay, sweep); the SDK
    exports what is left when the command exits (its atexit hook)."""
    return _start("hookfleet-cli")

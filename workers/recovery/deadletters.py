"""Running recorded events again: the message that replays or redelivers a row, and
handing messages to the workers. Finding events is :mod:`workers.recovery.selection`;
replay runs are :mod:`workers.recovery.replay_runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Row

from models.contract import PROCESS_EVENT, EventMessage, Queue
from models.events import WebhookEvent

REPLAY_QUEUE = Queue.LOW
# Hands a batch of event messages to the workers (send_to_workers); None: a dry run.
Publish = Callable[[list[EventMessage]], None]


def event_message(row: WebhookEvent | Row[Any], *, queue: str, replay: bool) -> EventMessage:
    """The message that runs ``row`` (an event, or a plain row of its message columns)
    again on ``queue``, as the receiver wrote it.

    ``replay=True`` is a deliberate replay (the effect is applied again whatever the
    row's status); ``replay=False`` is a plain redelivery, which the worker finishes only
    if the row is still unfinished. ``row.payload`` must be loaded (it is deferred).
    """
    return EventMessage(
        provider=row.provider,
        event_id=row.event_id,
        event_type=row.event_type,
        queue=queue,
        correlation_id=row.correlation_id,
        received_at=row.received_at,
        headers=dict(row.headers or {}),
        payload=row.payload,
        replay=replay,
    )


def send_to_workers(batch: list[EventMessage]) -> None:
    """Publish each of ``batch`` as ``process_event`` on its own queue, over one
    broker connection (the Celery app's)."""
    from models.tracing import trace_headers
    from workers.celery_app import app
    from workers.pipeline.tracing import publish_span

    with app.producer_or_acquire() as producer:
        for event in batch:
            with publish_span(event):  # linked to the event's first trace (tracing on)
                app.send_task(
                    PROCESS_EVENT,
                    kwargs=event.to_kwargs(),
                    queue=event.queue,
                    producer=producer,
                    headers=trace_headers(),
                )

"""Builders for what several test modules make: the worker's view of a delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from models.contract import Queue
from workers.pipeline.record import IncomingEvent


def incoming_event(
    provider: str,
    event_id: str,
    body: dict[str, Any] | str,
    *,
    event_type: str | None = None,
    queue: str = Queue.DEFAULT,
    correlation_id: str = "corr",
    received_at: datetime | None = None,
    headers: dict[str, str] | None = None,
) -> IncomingEvent:
    """An :class:`IncomingEvent` as the worker builds it from a queued message. ``body`` is
    the provider's JSON (a dict, dumped here, or the raw text); ``event_type`` defaults to
    what the receiver reads from it: Retell's ``event``, Cal.com's ``triggerEvent``, or the
    Stripe/Standard Webhooks ``type``. ``received_at`` defaults to now."""
    payload = body if isinstance(body, str) else json.dumps(body)
    if event_type is None:
        fields = json.loads(payload)
        event_type = fields.get("event") or fields.get("triggerEvent") or fields.get("type") or ""
    return IncomingEvent(
        provider=provider,
        event_id=event_id,
        event_type=event_type,
        queue=queue,
        correlation_id=correlation_id,
        received_at=received_at or datetime.now(UTC),
        headers=headers or {},
        payload=payload,
    )

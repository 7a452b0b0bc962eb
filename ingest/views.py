"""The receiver's routes: ``POST /webhooks/<provider>`` and ``GET /healthz``."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request

from ingest.dedup import DedupGate, dedup_key
from ingest.errors import ApiError
from ingest.providers import find_provider
from ingest.providers.base import Delivery, ShapeError, VerificationError
from ingest.taskmessage import build_task_message
from models.logs import log_context
from models.settings import Settings

PROCESS_EVENT_TASK = "hookfleet.process_event"
MAX_EVENT_ID = 191  # the width of webhook_events.event_id

log = logging.getLogger("hookfleet.ingest")
bp = Blueprint("webhooks", __name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


@bp.before_app_request
def _correlate() -> None:
    offered = request.headers.get("X-Request-ID", "")
    # An offered id is kept only when it is a plain token: it goes into every log line.
    g.correlation_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
    g.started = time.perf_counter()
    log_context.set({"correlation_id": g.correlation_id})


@bp.after_app_request
def _echo_correlation(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("correlation_id", "")
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive. Touches neither Redis nor the database."""
    return jsonify(status="ok")


@bp.post("/webhooks/<provider_name>")
def receive(provider_name: str) -> tuple[Response, int]:
    """Accept one delivery: check it, claim its key and queue its job, answer.

    - 202 ``{"status": "accepted", "event_id", "correlation_id"}``: the job is on its
      queue and the key is claimed; it will take effect exactly once.
    - 200 ``{"status": "duplicate", ...}``: seen within the dedup window; nothing queued.
    - 4xx: the delivery is wrong and will stay wrong; nothing queued.
    - 503 with ``Retry-After``: we could not queue it; nothing is left half-claimed,
      so the provider's retry is accepted later.
    """
    settings: Settings = current_app.config["HOOKFLEET_SETTINGS"]
    provider = find_provider(provider_name)
    if provider is None:
        raise ApiError(404, "unknown_provider", f"No provider is called {provider_name!r}.")
    provider_settings = settings.provider(provider.name)

    delivery = _read_delivery(settings.max_body_bytes)
    if provider_settings.verify:
        if not provider_settings.secrets:
            raise ApiError(
                503,
                "provider_not_configured",
                f"No secret is configured for {provider.name}; set "
                f"HOOKFLEET_{provider.name.upper()}_SECRETS (or _VERIFY=off for trials).",
            )
        try:
            provider.verify(delivery, provider_settings)
        except VerificationError as error:
            log.warning(
                "rejected delivery", extra={"provider": provider.name, "reason": error.code}
            )
            raise ApiError(401, error.code, error.message) from None

    payload, text = _parse_object(delivery.body)
    try:
        identity = provider.identify(delivery, payload)
    except ShapeError as error:
        raise ApiError(422, "unknown_shape", str(error)) from None
    event_id = identity.event_id
    if len(event_id) > MAX_EVENT_ID:
        event_id = "blake2b:" + dedup_key("", event_id).rsplit(":", 1)[1]

    correlation_id: str = g.correlation_id
    received_at = datetime.fromtimestamp(delivery.received_at, UTC).isoformat()
    _, message = build_task_message(
        PROCESS_EVENT_TASK,
        {
            "provider": provider.name,
            "event_id": event_id,
            "event_type": identity.event_type,
            "queue": identity.queue,
            "correlation_id": correlation_id,
            "received_at": received_at,
            "headers": provider.headers_to_record(delivery),
            "payload": text,
        },
        identity.queue,
        kwargsrepr=f"{{'provider': {provider.name!r}, 'event_id': {event_id!r}}}",
        extra_headers={"hookfleet_correlation_id": correlation_id},
    )
    gate: DedupGate = current_app.extensions["hookfleet_gate"]
    context = {"provider": provider.name, "event_id": event_id, "queue": identity.queue}
    try:
        admission = gate.admit(
            dedup_key(provider.name, event_id),
            correlation_id,
            provider_settings.dedup_ttl_s,
            identity.queue,
            message,
        )
    except redis.RedisError as error:
        log.error("could not enqueue", extra={**context, "error": type(error).__name__})
        raise ApiError(
            503,
            "queue_unavailable",
            "The queue is unavailable; the delivery was not accepted. Retry later.",
            {"Retry-After": str(settings.retry_after_s)},
        ) from None

    outcome = "accepted" if admission.accepted else "duplicate"
    duration_ms = round((time.perf_counter() - g.started) * 1000, 2)
    log.info(outcome, extra={**context, "outcome": outcome, "duration_ms": duration_ms})
    body: dict[str, Any] = {
        "status": outcome,
        "event_id": event_id,
        "correlation_id": correlation_id,
    }
    if not admission.accepted:
        body["original_correlation_id"] = admission.prior_claim
    return jsonify(body), 202 if admission.accepted else 200


def _read_delivery(limit: int) -> Delivery:
    """The raw body, refused early when it is not JSON or too large."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"The body exceeds {limit} bytes.")
    body = _read_at_most(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "body_too_large", f"The body exceeds {limit} bytes.")
    if not body:
        raise ApiError(400, "empty_body", "The body is empty.")
    headers = {name.lower(): value for name, value in request.headers.items()}
    return Delivery(body=body, headers=headers, received_at=time.time())


def _read_at_most(size: int) -> bytes:
    """Up to ``size`` bytes of the body. A chunked body (no Content-Length) arrives in
    pieces, so read until the end or one byte past the limit, never further."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        part = request.stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_object(body: bytes) -> tuple[dict[str, Any], str]:
    """The body as a JSON object and as text; 400 for anything else."""
    try:
        text = body.decode("utf-8")
        payload = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The body is not valid UTF-8 JSON.") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "not_an_object", "The body must be a JSON object.")
    return payload, text

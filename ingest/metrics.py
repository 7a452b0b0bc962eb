"""What operators see of the receiver: ``/metrics``, ``/readyz``, ``/stats``.

They answer only on the ops listener (``HOOKFLEET_OPS_BIND``, loopback by default):
gunicorn binds it beside the public port, and a request that came in on any other
listener gets the same JSON 404 as an unknown path. The listener is told by
``SERVER_PORT``, which gunicorn takes from the accepting socket, not from the request.

Every webhook answer is counted in one place, :func:`_count`, from what the answer says
(its status and error code), so the views stay free of metric calls.

``/metrics`` is this host's exporter: it adds up the samples of every Hookfleet process
that shares ``PROMETHEUS_MULTIPROC_DIR`` (receiver and, where they run on the same host,
the workers) and reads the queues and dead letters at scrape time, waiting for them
0.3 s at most (ingest/ops_probe.py).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

from ingest.errors import OUTCOME_BY_CODE, ErrorCode, error_response
from ingest.listeners import not_served_here
from ingest.ops_probe import BacklogCollector, Probe, SpoolCollector
from ingest.providers import REGISTRY
from ingest.quarantine import DROP_CAUSES, LANES, REASONS, Kept
from models.metrics import (
    declare_shared_metrics,
    scrape_registry,
)
from models.settings import Settings

OUTCOMES = (
    "accepted",
    "duplicate",
    "answered",
    "invalid_signature",
    "expired",
    "too_large",
    "bad_request",
    "shed",
    "rate_limited",
    "not_replicated",
    "error",
)
# /stats is read again after this; a scrape reads afresh (a few cheap commands, one
# index count): Prometheus asks every 15 s or so, and a stale queue depth would mislead
# an autoscaler (one that cannot come in time is shown as last read, and says so).
STATS_CACHE_S = 5.0

RECEIVED = Counter(
    "hookfleet_webhooks_received",
    "Webhook deliveries answered, by provider and outcome.",
    ["provider", "outcome"],
)
# Also an outcome of the counter above; a counter of its own so a dashboard or an alert
# on a limit needs no outcome filter.
RATE_LIMITED = Counter(
    "hookfleet_rate_limited",
    "Deliveries answered 429 rate_limited (HOOKFLEET_<PROVIDER>_RATE_LIMIT), by provider.",
    ["provider"],
)
INGEST_DURATION = Histogram(
    "hookfleet_ingest_duration_seconds",
    "Time the receiver spent on a delivery, until the answer.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
REFUSED = Counter(
    "hookfleet_refused",
    "Deliveries refused for their signature or an unconfigured provider, by reason "
    "(the error code), kept or not.",
    ["provider", "reason"],
)
QUARANTINED = Counter(
    "hookfleet_quarantined",
    "Refused deliveries kept for `hookfleet quarantine release`, by reason.",
    ["provider", "reason"],
)
QUARANTINE_DROPPED = Counter(
    "hookfleet_quarantine_dropped",
    "Refused deliveries not kept, or no longer kept: over the rate, count or bytes cap "
    "(the oldest make room), or Redis not writable (unavailable); by lane (signed: a "
    "signature of the provider's scheme or no secret configured; unsigned: none).",
    ["provider", "lane", "cause"],
)
INBOUND_ANSWER_DURATION = Histogram(
    "hookfleet_inbound_answer_duration_seconds",
    "Time to answer Retell's inbound call webhook in line (the caller is waiting).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
)

# The labelled series, looked up by a dict per answer rather than by ``labels()``.
_RECEIVED: dict[tuple[str, str], Any] = {}
_DURATION: dict[str, Any] = {}

ops = Blueprint("ops", __name__)


def init_app(app: Flask, settings: Settings) -> None:
    """Count every webhook answer and serve the operator endpoints."""
    for provider in (*REGISTRY, "unknown"):
        _DURATION[provider] = INGEST_DURATION.labels(provider=provider)
        RATE_LIMITED.labels(provider=provider)  # 0 from the start, for rate()
        for outcome in OUTCOMES:
            _RECEIVED[provider, outcome] = RECEIVED.labels(provider=provider, outcome=outcome)
    for provider in REGISTRY:  # every series from 0, so increase() sees the first one
        for reason in REASONS:
            REFUSED.labels(provider=provider, reason=reason)
            QUARANTINED.labels(provider=provider, reason=reason)
        for lane in LANES:
            for cause in DROP_CAUSES:
                QUARANTINE_DROPPED.labels(provider=provider, lane=lane, cause=cause)
    declare_shared_metrics()
    app.extensions["hookfleet_probe"] = Probe(settings)
    app.after_request(_count)
    app.register_blueprint(ops)


def _count(response: Response) -> Response:
    parts = request.path.split("/")
    if len(parts) != 3 or parts[1] != "webhooks" or "started" not in g or "not_a_delivery" in g:
        return response
    provider = parts[2] if parts[2] in REGISTRY else "unknown"
    # g.started: set by views._correlate
    count_answer(provider, outcome_of(response), time.perf_counter() - g.started)
    return response


def count_answer(provider: str, outcome: str, elapsed_s: float) -> None:
    """Count one webhook answer: ``provider`` (a registered name or "unknown"), its
    ``outcome`` label (one of OUTCOMES), and the seconds it took until the answer."""
    _RECEIVED[provider, outcome].inc()
    _DURATION[provider].observe(elapsed_s)
    if outcome == "answered":
        INBOUND_ANSWER_DURATION.observe(elapsed_s)
    elif outcome == "rate_limited":
        RATE_LIMITED.labels(provider=provider).inc()


def count_refusal(provider: str, reason: str, kept: Kept | None) -> None:
    """Count a refusal for signature or configuration, and what the quarantine did with
    it (``None``: the quarantine is off)."""
    REFUSED.labels(provider=provider, reason=reason).inc()
    if kept is None:
        return
    if kept.entry_id is not None:
        QUARANTINED.labels(provider=provider, reason=reason).inc()
    for cause, n in kept.dropped.items():
        QUARANTINE_DROPPED.labels(provider=provider, lane=kept.lane, cause=cause).inc(n)


def outcome_of(response: Response) -> str:
    """The ``outcome`` label for a webhook answer: what the view decided (``g.outcome``)
    or the error code it answered with (``g.outcome_code``), else the status."""
    outcome = g.get("outcome")
    if outcome is not None and response.status_code < 300:
        return str(outcome)
    code = g.get("outcome_code", "")
    if code in OUTCOME_BY_CODE:
        return OUTCOME_BY_CODE[code]
    if response.status_code == 429:
        return "shed"
    if 400 <= response.status_code < 500:
        return "bad_request"
    return "error"


@ops.before_app_request
def _each_listener_its_own_routes() -> None:
    """404 for an operator endpoint asked on the public listener (queue depths, rates
    and breaker states are nothing for the internet to read), whatever the method (a
    405 would say it exists), and for anything but one asked on the ops listener (a
    webhook posted there included: no door for deliveries). Runs after the webhooks
    blueprint's ``_correlate`` (registered first), so the 404 carries X-Request-ID."""
    probe: Probe = current_app.extensions["hookfleet_probe"]
    if not_served_here(request.environ, probe.settings):
        g.not_a_delivery = True  # not counted as a webhook answer (_count)
        abort(404)


@ops.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition: this host's processes plus the live backlog."""
    probe: Probe = current_app.extensions["hookfleet_probe"]
    live = CollectorRegistry()
    live.register(BacklogCollector(probe))
    live.register(SpoolCollector(probe.settings.var_dir, probe.settings.database_url))
    body = generate_latest(scrape_registry()) + generate_latest(live)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when Redis and the database answer within :data:`READY_WAIT_S`; else 503
    naming the one that did not."""
    probe: Probe = current_app.extensions["hookfleet_probe"]
    checks = probe.checks()
    ready = all(check["ok"] for check in checks.values())
    body = jsonify(status="ready" if ready else "not_ready", checks=checks)
    return body, 200 if ready else 503


@ops.get("/stats")
def stats() -> Response | tuple[Response, int]:
    """Queue depths, recent rates and dead letters as JSON, at most a few seconds old.
    Needs ``Authorization: Bearer $HOOKFLEET_ADMIN_TOKEN`` when that is set."""
    probe: Probe = current_app.extensions["hookfleet_probe"]
    token = probe.settings.admin_token
    if token:
        # RFC 6750 / RFC 9110 section 11.1: the scheme is case-insensitive ("bearer"
        # too), and only a Bearer credential counts (a bare token is no scheme).
        credential = request.authorization
        offered = credential.token or "" if credential and credential.type == "bearer" else ""
        if not hmac.compare_digest(offered.encode(), token.encode()):
            code = ErrorCode.UNAUTHORIZED
            response = error_response(code.status, code.value, code.default_message)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, 401
    return jsonify(probe.stats(max_age_s=STATS_CACHE_S).as_dict())

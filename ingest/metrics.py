"""What operators see of the receiver: ``/metrics``, ``/readyz``, ``/stats``.

They answer only on the ops listener (``HOOKFLEET_OPS_BIND``, loopback by default):
gunicorn binds it beside the public port, and a request that came in on any other
listener gets the same JSON 404 as an unknown path. The listener is told by
``SERVER_PORT``, which gunicorn takes from the accepting socket, not from the request.

Every webhook answer is counted in one place, :func:`_count`, from what the answer says
(its status and error code), so the views stay free of metric calls.

``/metrics`` is this host's exporter: it adds up the samples of every Hookfleet process
that shares ``PROMETHEUS_MULTIPROC_DIR`` (receiver and, where they run on the same host,
the workers) and reads the queues and dead letters at scrape time.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine, text

from ingest.errors import OUTCOME_BY_CODE, error_response
from ingest.listeners import not_served_here
from ingest.providers import REGISTRY
from ingest.quarantine import DROP_CAUSES, LANES, REASONS, Kept, Quarantine
from models.broker.backlog import Backlog, read_backlog
from models.broker.redis_links import FailoverReply, redis_client
from models.contract import QUEUES
from models.engine import make_engine
from models.metrics import (
    BREAKER_NAMES,
    BREAKER_STATES,
    breaker_state_key,
    declare_shared_metrics,
    scrape_registry,
)
from models.perprocess import PerProcess
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
# The receiver's checks must answer while a probe still waits: each dependency gets
# this long, and they are checked at the same time.
CHECK_TIMEOUT_S = 1.0
STATS_CACHE_S = 5.0
# A scrape reads afresh (a few cheap commands, one index count): Prometheus asks
# every 15 s or so, and a stale queue depth would mislead an autoscaler.
METRICS_CACHE_S = 0.0

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


class Probe:
    """The receiver's short-timeout view of Redis and the database, for the operator
    endpoints. Its connections are its own, built after the fork, never the gate's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._resources = PerProcess(self._connect)
        self._cache: dict[str, tuple[float, Backlog]] = {}

    def _connect(self) -> tuple[redis.Redis, redis.Redis | None, Engine, ThreadPoolExecutor]:
        broker = _short_timeout_client(self.settings.broker_url)
        dedup = (
            None
            if self.settings.dedup_on_broker
            else _short_timeout_client(self.settings.redis_url)
        )
        engine = make_engine(self.settings, io_timeout_s=int(CHECK_TIMEOUT_S))
        return broker, dedup, engine, ThreadPoolExecutor(4, thread_name_prefix="hookfleet-probe")

    def _ready(self) -> tuple[redis.Redis, Engine, ThreadPoolExecutor]:
        broker, _, engine, pool = self._resources.get()
        return broker, engine, pool

    @property
    def _dedup(self) -> redis.Redis | None:
        return self._resources.get()[1]

    def checks(self) -> dict[str, dict[str, Any]]:
        """Ping Redis (dedup store and broker) and the database, in parallel, each
        within ``CHECK_TIMEOUT_S``."""
        client, engine, pool = self._ready()
        probes: dict[str, Callable[[], object]] = {
            "redis": lambda: _writable_primary(client),
            "database": lambda: _select_one(engine),
        }
        if self._dedup is not None:
            dedup = self._dedup
            probes["dedup_redis"] = lambda: _writable_primary(dedup)
        started = time.perf_counter()
        futures = {name: pool.submit(probe) for name, probe in probes.items()}
        results: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            left = max(0.0, CHECK_TIMEOUT_S + 0.5 - (time.perf_counter() - started))
            try:
                future.result(timeout=left)
                results[name] = {"ok": True}
            except FutureTimeout:
                results[name] = {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_S} s"}
            except Exception as error:  # noqa: BLE001 (every failure means "not ready")
                results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return results

    def breakers(self) -> dict[str, str]:
        """Each circuit breaker's state as every worker sees it (shared in Redis);
        empty when Redis cannot be read."""
        client, _, _ = self._ready()
        reader = self._dedup or client
        try:
            values = reader.mget([breaker_state_key(name) for name in BREAKER_NAMES])
        except redis.RedisError:
            return {}
        return {
            name: (value.decode() if isinstance(value, bytes) else value) or "closed"
            for name, value in zip(BREAKER_NAMES, values, strict=True)
        }

    def quarantine_sizes(self) -> dict[str, tuple[int, int]]:
        """``(deliveries, bytes)`` kept per provider in the quarantine (on the dedup
        Redis); empty when it cannot be read."""
        client, _, _ = self._ready()
        try:
            return Quarantine(self._dedup or client, self.settings).sizes(list(REGISTRY))
        except redis.RedisError:
            return {}

    def backlog(self, *, rates: bool, max_age_s: float) -> Backlog:
        """A cached reading, at most ``max_age_s`` old: a busy dashboard or several
        Prometheus servers cost Redis and the database one reading per interval."""
        key = "rates" if rates else "plain"
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        client, engine, pool = self._ready()
        future = pool.submit(read_backlog, client, engine, QUEUES, rates=rates)
        try:
            reading = future.result(timeout=CHECK_TIMEOUT_S * 3)
        except FutureTimeout:
            reading = Backlog(taken_at=time.time(), errors={"timeout": "no reading in time"})
        self._cache[key] = (time.monotonic(), reading)
        return reading


def _short_timeout_client(url: str) -> redis.Redis:
    # A failover reply drops the connection, so the probe and the queue-depth reading
    # follow the new primary (or what Sentinel names) at their next try.
    return redis_client(url, timeout_s=CHECK_TIMEOUT_S)


def _writable_primary(client: redis.Redis) -> None:
    """Raise unless ``client`` reaches a primary. A demoted node still answers PING, so
    a plain ping would call the receiver ready while every delivery would be refused:
    ask for the role, and drop the connections to a replica so the next check dials
    again (reaching the new primary where the address has moved)."""
    role = client.execute_command("ROLE")[0]
    if role not in (b"master", "master"):
        client.connection_pool.disconnect()
        raise FailoverReply("READONLY", f"the node is a {_text(role)}, not the primary")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


class BacklogCollector(Collector):
    """Queue depth, unacked, oldest age and dead letters, read when Prometheus asks."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe

    def collect(self) -> Any:
        reading = self._probe.backlog(rates=False, max_age_s=METRICS_CACHE_S)
        up = GaugeMetricFamily(
            "hookfleet_dependency_up",
            "1 when the last reading of this dependency succeeded.",
            labels=["dependency"],
        )
        up.add_metric(["redis"], 1.0 if reading.queues else 0.0)
        up.add_metric(["database"], 1.0 if reading.dead_letters is not None else 0.0)
        yield up
        depth = GaugeMetricFamily(
            "hookfleet_queue_depth", "Messages waiting on the queue.", labels=["queue"]
        )
        unacked = GaugeMetricFamily(
            "hookfleet_queue_unacked",
            "Messages reserved by a worker but not finished (not on the list).",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "hookfleet_queue_oldest_age_seconds",
            "Age of the next message out of the queue (since the receiver took it).",
            labels=["queue"],
        )
        for queue in reading.queues:
            depth.add_metric([queue.queue], queue.waiting)
            unacked.add_metric([queue.queue], queue.unacked)
            if queue.oldest_age_s is not None or queue.waiting == 0:
                # Empty: nothing is waiting, so nothing is late. Waiting but no message
                # tells its age (not one of ours): no sample rather than a wrong one.
                age.add_metric([queue.queue], queue.oldest_age_s or 0.0)
        yield depth
        yield unacked
        yield age
        breakers = GaugeMetricFamily(
            "hookfleet_breaker_state",
            "Circuit breaker state shared by all workers: 0 closed, 1 half-open, 2 open.",
            labels=["name"],
        )
        for name, state in self._probe.breakers().items():
            breakers.add_metric([name], BREAKER_STATES.get(state, 0))
        yield breakers
        if reading.dead_letters is not None:
            yield GaugeMetricFamily(
                "hookfleet_dead_letters",
                "webhook_events rows with status dead, waiting for a replay.",
                value=reading.dead_letters,
            )
        yield from _quarantine_gauges(self._probe.quarantine_sizes())


def _quarantine_gauges(sizes: dict[str, tuple[int, int]]) -> Any:
    kept = GaugeMetricFamily(
        "hookfleet_quarantine_kept",
        "Refused deliveries kept for `hookfleet quarantine release`.",
        labels=["provider"],
    )
    used = GaugeMetricFamily(
        "hookfleet_quarantine_bytes",
        "Redis bytes the kept refused deliveries count against HOOKFLEET_QUARANTINE_MAX_BYTES.",
        labels=["provider"],
    )
    for provider, (count, size) in sizes.items():
        kept.add_metric([provider], count)
        used.add_metric([provider], size)
    yield kept
    yield used


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
    body = generate_latest(scrape_registry()) + generate_latest(live)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when Redis and the database answer within about a second; else 503 naming
    the one that did not."""
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
            response = error_response(401, "unauthorized", "Send the admin token as a Bearer.")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, 401
    reading = probe.backlog(rates=True, max_age_s=STATS_CACHE_S)
    return jsonify(reading.as_dict())

"""The receiver's routes: ``POST /webhooks/<provider>`` and ``GET /healthz``.

A delivery's rules are written once, in parts both roads share: :func:`check_delivery`
(the CPU part: codings, body, signature, payload, job), the claim (``DedupGate.admit``
here, ``PipelinedClaims.admit`` awaited on the event loop: ingest/loop_delivery.py),
then :func:`admission_answer` or :func:`admission_refusal`. :func:`take_delivery`
chains them for the WSGI path (ingest/fastpath.py, and this Flask route)."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import NotFound
from werkzeug.http import parse_options_header

from ingest import call_deadline
from ingest.call_deadline import CallDeadline, arrived_at
from ingest.dedup import Admission, DedupGate, NotReplicated, RateLimit, dedup_key, rate_key
from ingest.errors import ApiError, ErrorCode
from ingest.inbound import InboundDirectory
from ingest.inbound_record import InboundRecorder, answer_bound_s
from ingest.metrics import count_refusal
from ingest.providers import find_provider
from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    ShapeError,
    VerificationError,
)
from ingest.quarantine import Quarantine
from ingest.request import read_delivery, refuse_codings
from ingest.routing import Router
from models import tracing
from models.broker.envelope import build_event_message
from models.contract import EventMessage
from models.ids import uuid4_hex
from models.logs import info_line, log_context
from models.payloads import PayloadError, parse_payload
from models.settings import ProviderSettings, Settings

MAX_EVENT_ID = 191  # the width of webhook_events.event_id
MAX_EVENT_TYPE = 128  # the width of webhook_events.event_type

log = logging.getLogger("hookfleet.ingest")
bp = Blueprint("webhooks", __name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def correlation_id_for(offered: str) -> str:
    """The request's correlation id: the ``X-Request-ID`` it offered when that is a
    plain token (it goes into every log line), else a new one."""
    return offered if _REQUEST_ID.match(offered) else uuid4_hex()


@bp.before_app_request
def _correlate() -> None:
    g.correlation_id = correlation_id_for(request.headers.get("X-Request-ID", ""))
    g.started = time.perf_counter()
    log_context.set({"correlation_id": g.correlation_id})
    # werkzeug matches a path with its leading slashes made one (MapAdapter.match), so
    # //webhooks/stripe would be a delivery; a path is matched as written (a doubled
    # slash is no route, as with merge_slashes off below the first one).
    if request.environ.get("PATH_INFO", "").startswith("//"):
        raise NotFound()


@bp.after_app_request
def _echo_correlation(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("correlation_id", "")
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive. Touches neither Redis nor the database."""
    return jsonify(status="ok")


@dataclass(frozen=True)
class Job:
    """A delivery ready for the dedup gate: its key, queue and Celery message."""

    provider: str
    event_id: str
    queue: str
    dedup_key: str
    ttl_s: int
    message: str


@dataclass(frozen=True)
class Answer:
    """What a delivery is answered: ``status``, the JSON ``body`` (bytes), the
    ``outcome`` label it is counted and logged under, and what to do once the answer
    has gone (``after``; no delivery needs it now: an inline answer's record is made
    before its answer, ingest/inbound_record.py)."""

    status: int
    body: bytes
    outcome: str
    after: Callable[[], None] | None = None


@bp.post("/webhooks/<provider_name>")
def receive(provider_name: str) -> tuple[Response, int]:
    """Flask's route for a delivery: an unknown provider is a JSON 404; a known one is
    answered by :func:`take_delivery` (ingest/fastpath.py serves those before Flask)."""
    provider = find_provider(provider_name)
    if provider is None:
        raise ApiError(ErrorCode.UNKNOWN_PROVIDER, f"No provider is called {provider_name!r}.")
    answer = take_delivery(
        current_app._get_current_object(),  # type: ignore[attr-defined]
        request.environ,
        provider,
        g.correlation_id,
        g.started,
    )
    g.outcome = answer.outcome
    response = Response(answer.body, mimetype="application/json")
    if answer.after is not None:
        response.call_on_close(answer.after)
    return response, answer.status


def take_delivery(
    app: Flask, environ: dict[str, Any], provider: Provider, correlation_id: str, started: float
) -> Answer:
    """Accept one delivery: check it, claim its key and queue its job, answer.

    - 202 ``{"status": "accepted", "event_id", "correlation_id"}``: the job is on its
      queue and the key is claimed; it will take effect exactly once.
    - 200 ``{"status": "duplicate", ...}``: seen within the dedup window; nothing queued.
    - 200 with the provider's answer, for a sender that waits for one (Retell's inbound
      call): always, within the inbound budget plus the record's bounds; the event is
      queued (or kept in the database) before the answer: ingest/inbound_record.py.
    - 4xx: the delivery is wrong and will stay wrong; nothing queued.
    - 429 ``rate_limited`` with ``Retry-After`` (whole seconds until the provider's
      token bucket holds a token, at least 1): over ``HOOKFLEET_<PROVIDER>_RATE_LIMIT``;
      nothing claimed or queued, so the retry is accepted later. A duplicate is still
      answered 200, the inline answer is never limited.
    - 503 with ``Retry-After``: we could not queue it; nothing is left half-claimed,
      so the provider's retry is accepted later. Code ``not_replicated``: fewer Redis
      replicas than HOOKFLEET_REDIS_MIN_REPLICAS confirmed it; the retry is answered
      as a duplicate or accepted anew, and takes effect once either way.

    A refusal for the signature or an unconfigured provider also keeps the delivery
    (:mod:`ingest.quarantine`, best effort: the answer is the same whatever Redis does).
    Every refusal is raised as :class:`~ingest.errors.ApiError`. Reads only
    ``environ`` and ``app.config`` / ``app.extensions``: no Flask request context.
    """
    settings: Settings = app.config["HOOKFLEET_SETTINGS"]
    try:
        checked = check_delivery(app, environ, provider, correlation_id)
    except RefusedDelivery as refused:
        keep_refused(app, provider, refused.delivery, refused.refusal, correlation_id)
        raise refused.refusal from None
    if checked.identity.inline:
        deadline = CallDeadline(arrived_at(environ) + answer_bound_s(settings))
        return answer_inline(
            app,
            provider,
            checked.payload,
            checked.identity,
            checked.job,
            correlation_id,
            started,
            deadline,
        )
    admission = _admit(app, checked.job, correlation_id, started, settings)
    return admission_answer(checked.job, admission, correlation_id, started, settings)


@dataclass(frozen=True)
class Checked:
    """A delivery that passed :func:`check_delivery`: its payload, identity and job."""

    payload: Any
    identity: EventIdentity
    job: Job


class RefusedDelivery(Exception):
    """A delivery refused for its signature or configuration: ``refusal`` is its
    answer, once ``delivery`` has been kept in the quarantine (:func:`keep_refused`,
    a blocking Redis call the caller runs where it may block)."""

    def __init__(self, refusal: ApiError, delivery: Delivery) -> None:
        super().__init__(refusal.code.value)
        self.refusal = refusal
        self.delivery = delivery


def check_delivery(
    app: Flask, environ: dict[str, Any], provider: Provider, correlation_id: str
) -> Checked:
    """take_delivery's CPU part: codings, body, signature, payload, identity and job;
    no I/O but reading ``environ["wsgi.input"]``. Raises ApiError for a refusal, and
    :class:`RefusedDelivery` for one to keep in the quarantine. Sets the log context's
    provider, event id and queue. Shared by the WSGI path (take_delivery) and the
    receiver's event loop (ingest/aio_worker.py), which then claims the job itself."""
    settings: Settings = app.config["HOOKFLEET_SETTINGS"]
    # What werkzeug's ``request.mimetype`` is: the media type, lower case.
    mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
    declared_json = _is_json(mimetype)
    if not declared_json and provider.requires_json_content_type:
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    refuse_codings(environ)
    delivery = read_delivery(environ, settings.body_limit(provider.name))
    try:
        _verify(provider, delivery, settings.provider(provider.name))
    except ApiError as refusal:
        raise RefusedDelivery(refusal, delivery) from None
    router: Router = app.extensions["hookfleet_router"]
    payload, identity, job = prepare_job(
        provider, delivery, mimetype, correlation_id, settings, router.queue_for
    )
    log_context.set(
        {
            **(log_context.get() or {}),
            "provider": job.provider,
            "event_id": job.event_id,
            "queue": job.queue,
        }
    )
    return Checked(payload, identity, job)


def admission_answer(
    job: Job, admission: Admission, correlation_id: str, started: float, settings: Settings
) -> Answer:
    """The answer to a claimed delivery (202 accepted, 200 duplicate), or the ApiError
    for one shed (503 queue_full) or over its rate limit (429); logs the outcome line."""
    if admission.shed:
        log.warning("shed", extra={"outcome": "shed", "duration_ms": _elapsed_ms(started)})
        raise ApiError(
            ErrorCode.QUEUE_FULL,
            f"{job.queue} is at its limit of {settings.shed_queue_depth} waiting jobs; "
            "the delivery was not accepted. Retry later.",
            retry_after_s=settings.retry_after_s,
        )
    if admission.limited_ms:
        raise _rate_limited(job.provider, admission.limited_ms, settings)
    outcome = "accepted" if admission.accepted else "duplicate"
    info_line(log, outcome, {"outcome": outcome, "duration_ms": _elapsed_ms(started)})
    body = claimed_body(job.event_id, correlation_id, admission)
    return Answer(202 if admission.accepted else 200, body, outcome)


def claimed_body(event_id: str, correlation_id: str, admission: Admission) -> bytes:
    """The answer to a claimed delivery: ``json_body({"status": "accepted" or
    "duplicate", "event_id", "correlation_id"[, "original_correlation_id": the prior
    claim]})``'s bytes, joined directly: one per delivery, and the general encoder's
    set-up cost more than the encoding (tests/unit/test_answer_body.py compares them)."""
    text = _json_string
    outcome = "accepted" if admission.accepted else "duplicate"
    original = ""
    if not admission.accepted:
        prior = admission.prior_claim
        original = f',"original_correlation_id":{"null" if prior is None else text(prior)}'
    return (
        f'{{"status":{text(outcome)},"event_id":{text(event_id)},'
        f'"correlation_id":{text(correlation_id)}{original}}}\n'
    ).encode()


def prepare_job(
    provider: Provider,
    delivery: Delivery,
    mimetype: str,
    correlation_id: str,
    settings: Settings,
    route: Callable[[str, str], str],
) -> tuple[Any, EventIdentity, Job]:
    """A verified delivery's payload, identity and job (its queue: ``route(provider,
    event_type)``). Raises ApiError: 400 for a body that is not JSON, 422 for a shape
    the provider does not send. ``mimetype``: the media type, lower case."""
    try:
        payload, text = _parse(delivery.body, provider.accepts_any_json)
    except ApiError as error:
        # A sender that really sends other bodies (Cal.com's custom templates) wraps them.
        reframed = provider.reframe(delivery, mimetype)
        if reframed is None:
            if _is_json(mimetype):
                raise
            raise ApiError(
                ErrorCode.UNKNOWN_SHAPE,
                f"{error.message} The body was sent as "
                f"{mimetype or 'no content type'}; {provider.name} deliveries must "
                "be a JSON object.",
            ) from None
        payload, text = reframed
    try:
        identity = provider.identify(delivery, payload)
    except ShapeError as error:
        raise ApiError(ErrorCode.UNKNOWN_SHAPE, str(error)) from None
    job = _job(route, provider, delivery, identity, text, correlation_id, settings)
    return payload, identity, job


def keep_refused(
    app: Flask, provider: Provider, delivery: Delivery, refusal: ApiError, correlation_id: str
) -> None:
    """Count a refusal for signature or configuration and keep the delivery in the
    quarantine (ingest.quarantine: bounded, best effort, never raises for Redis)."""
    quarantine: Quarantine | None = app.extensions.get("hookfleet_quarantine")
    kept = (
        None
        if quarantine is None
        else quarantine.keep(provider.name, delivery, refusal.code, correlation_id)
    )
    count_refusal(provider.name, refusal.code, kept)


def _verify(provider: Provider, delivery: Delivery, settings: ProviderSettings) -> None:
    """401 unless the delivery is authentic; 503 when we cannot tell (no secret)."""
    if not settings.verify:
        return
    if not settings.secrets:
        raise ApiError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f"No secret is configured for {provider.name}; set "
            f"HOOKFLEET_{provider.name.upper()}_SECRETS (or _VERIFY=off for trials).",
        )
    try:
        with tracing.span("hookfleet.verify", attributes={"hookfleet.provider": provider.name}):
            provider.verify(delivery, settings)
    except VerificationError as error:
        log.warning("rejected delivery", extra={"provider": provider.name, "reason": error.code})
        raise ApiError(error.code, error.message) from None


def _job(
    route: Callable[[str, str], str],
    provider: Provider,
    delivery: Delivery,
    identity: EventIdentity,
    text: str,
    correlation_id: str,
    settings: Settings,
) -> Job:
    queue = route(provider.name, identity.event_type)
    # A name longer than the column is kept whole in the payload; the column gets a prefix.
    event_type = identity.event_type[:MAX_EVENT_TYPE]
    event_id = identity.event_id
    if len(event_id) > MAX_EVENT_ID:
        event_id = "blake2b:" + dedup_key("", event_id).rsplit(":", 1)[1]
    event = EventMessage(
        provider=provider.name,
        event_id=event_id,
        event_type=event_type,
        queue=queue,
        correlation_id=correlation_id,
        received_at=datetime.fromtimestamp(delivery.received_at, UTC),
        headers=provider.headers_to_record(delivery),
        payload=text,
    )
    _, message = build_event_message(event)
    return Job(
        provider=provider.name,
        event_id=event_id,
        queue=queue,
        dedup_key=dedup_key(provider.name, event_id),
        ttl_s=settings.provider(provider.name).dedup_ttl_s,
        message=message,
    )


def _admit(
    app: Flask, job: Job, correlation_id: str, started: float, settings: Settings
) -> Admission:
    """Claim and enqueue; 503 with Retry-After when Redis cannot do it (down, or out of
    memory under ``noeviction``)."""
    gate: DedupGate = app.extensions["hookfleet_gate"]
    try:
        with tracing.span("hookfleet.claim_and_enqueue", attributes=_claim_attributes(job)):
            return gate.admit(**claim_arguments(job, correlation_id, settings))
    except (redis.RedisError, NotReplicated) as error:
        raise admission_refusal(error, started, settings) from None


class ClaimArguments(TypedDict):
    """A job's claim as :meth:`DedupGate.admit` and :meth:`PipelinedClaims.admit` take it
    (keyword arguments; ``claim`` is the correlation id)."""

    key: str
    claim: str
    ttl_s: int
    queue: str
    message: str
    shed_depth: int
    rate_limit: RateLimit | None


def claim_arguments(job: Job, correlation_id: str, settings: Settings) -> ClaimArguments:
    """``job``'s :class:`ClaimArguments`: its key, TTL and queue, the shed depth and the
    provider's rate limit from ``settings``."""
    return ClaimArguments(
        key=job.dedup_key,
        claim=correlation_id,
        ttl_s=job.ttl_s,
        queue=job.queue,
        message=job.message,
        shed_depth=settings.shed_queue_depth,
        rate_limit=rate_limit_for(job.provider, settings),
    )


def admission_refusal(
    error: redis.RedisError | NotReplicated, started: float, settings: Settings
) -> ApiError:
    """The 503 for a claim that failed (logged here): ``queue_unavailable`` when Redis
    could not do it (down, or out of memory under ``noeviction``), ``not_replicated``
    when too few replicas confirmed it. Both carry Retry-After."""
    retry_after_s = settings.retry_after_s
    if isinstance(error, redis.RedisError):
        # Unreachable, restarting or failing over: expected to pass, and answered with
        # Retry-After, so a warning. Anything else (out of memory, a refused write) is
        # an error an operator has to act on.
        transient = isinstance(error, redis.ConnectionError | redis.TimeoutError)
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "could not enqueue",
            extra={"error": type(error).__name__},
        )
        return ApiError(ErrorCode.QUEUE_UNAVAILABLE, retry_after_s=retry_after_s)
    # 503 is safe although the claim and the message may stand on the primary. If
    # the primary survives, the provider's retry finds the claim and is answered 200
    # (duplicate) while the queued message is processed; if a failover lost the
    # write, the claim went with it and the retry is accepted anew. Either way the
    # event takes effect exactly once. (With a separate broker the gate has given
    # the claim back; a second message then meets the database's unique constraint.)
    log.warning(
        "not replicated",
        extra={
            "outcome": "not_replicated",
            "replicas": error.confirmed,
            "wanted": error.wanted,
            "duration_ms": _elapsed_ms(started),
        },
    )
    return ApiError(
        ErrorCode.NOT_REPLICATED,
        f"Only {error.confirmed} of {error.wanted} Redis replicas confirmed the delivery "
        f"within {error.wait_ms} ms, so it was not accepted. Retry later: it will be "
        "accepted or answered as a duplicate, and take effect once.",
        retry_after_s=retry_after_s,
    )


def rate_limit_for(provider: str, settings: Settings) -> RateLimit | None:
    bucket = settings.provider(provider).rate_bucket
    return None if bucket is None else RateLimit(rate_key(provider), *bucket)


def _rate_limited(provider: str, wait_ms: int, settings: Settings) -> ApiError:
    per_second, burst = settings.provider(provider).rate_bucket or (0.0, 0)
    retry_after_s = max(1, math.ceil(wait_ms / 1000))
    # Logged once, as every 4xx, by the error handler ("refused", outcome rate_limited):
    # a flood of refusals must not double the log.
    return ApiError(
        ErrorCode.RATE_LIMITED,
        f"{provider} deliveries are limited to {per_second:g} per second (bursts of "
        f"{burst}); the delivery was not accepted. Retry in {retry_after_s} s.",
        retry_after_s=retry_after_s,
    )


def _claim_attributes(job: Job) -> dict[str, str] | None:
    """The claim/enqueue span's attributes (OpenTelemetry messaging conventions); None
    while tracing is off: no span takes them, so no delivery pays for building them."""
    if not tracing.on():
        return None
    return {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.destination.name": job.queue,
        "hookfleet.event_id": tracing.private_event_id(job.provider, job.event_id),
    }


def answer_inline(
    app: Flask,
    provider: Provider,
    payload: dict[str, Any],
    identity: EventIdentity,
    job: Job,
    correlation_id: str,
    started: float,
    deadline: CallDeadline,
) -> Answer:
    """The waiting sender's answer, once the event's record is durable.

    The answer never fails (an empty answer is always valid), and goes within the
    lookup's budget plus the record's bounds (ingest/inbound_record.py): the record is
    queued in Redis, or else kept as a ``received`` row in the database, before the
    answer leaves, so a receiver killed once a call is answered loses no record. Only
    when neither takes it in time does the answer go anyway, its record held in the
    background (ingest/late_records.py: WARNING, and an ERROR naming the event).

    Every step takes at most what is left of ``deadline`` (ingest/call_deadline.py:
    counted from the request's arrival, so a call that waited for a thread skips what
    no longer fits) and the answer leaves by it.

    The record does not wait for Redis replicas (HOOKFLEET_REDIS_MIN_REPLICAS): no retry
    follows an answer, so a refusal could not be retried, and the wait would hold the
    ringing phone. The record is as durable as the primary's own persistence; a
    failover may lose it like a Redis outage would. For the same reason it is never
    rate limited and spends no token of the provider's bucket
    (HOOKFLEET_<PROVIDER>_RATE_LIMIT): a limit never holds up a ringing phone.
    """
    directory: InboundDirectory = app.extensions["hookfleet_inbound"]
    try:
        with call_deadline.applied(deadline):
            answer = provider.answer(payload, identity, directory)
    except Exception as error:  # noqa: BLE001 (a waiting phone must get an answer)
        log.error("inline answer failed", extra={"error": type(error).__name__})
        answer = provider.empty_answer(identity)
    # ``jsonify(answer)``'s bytes: the app's JSON provider, compact.
    body = (app.json.dumps(answer, separators=(",", ":")) + "\n").encode()
    recorder: InboundRecorder = app.extensions["hookfleet_inbound_record"]
    kept = recorder.record(job, correlation_id, _claim_attributes(job), deadline)
    log.info(
        "answered inline",
        extra={"outcome": "answered", "kept": kept.value, "duration_ms": _elapsed_ms(started)},
    )
    return Answer(200, body, "answered")


# ``json.dumps(..., separators=(",", ":"))`` makes this encoder anew for every call
# (any argument but the value does): one made once writes the same text.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
# What that encoder writes for a str (ASCII, escaped, quoted).
_json_string = json.encoder.encode_basestring_ascii


def json_body(body: dict[str, Any]) -> bytes:
    """``jsonify(body)``'s bytes (compact, ASCII, a final newline), minus its generality."""
    return (_compact_json(body) + "\n").encode()


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _parse(body: bytes, any_json: bool) -> tuple[Any, str]:
    """The body's JSON value and the text to queue (``models.payloads``: the rule the
    worker decodes by); 400 for anything else, or for a non-object unless ``any_json``."""
    try:
        payload, text = parse_payload(body)
    except PayloadError as error:
        raise ApiError(ErrorCode.INVALID_JSON, error.reason) from None
    if not any_json and not isinstance(payload, dict):
        raise ApiError(ErrorCode.NOT_AN_OBJECT)
    return payload, text

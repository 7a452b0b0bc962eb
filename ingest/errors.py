"""Every error the receiver answers with: JSON ``{"error": {"code", "message"}}``.

:class:`ErrorCode` is the one list of them, each with its status, whether it carries
``Retry-After``, the ``outcome`` label ``hookfleet_webhooks_received`` counts it under,
and a default message. The README's *Answers* table is checked against it
(``tests/unit/test_errors.py``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("hookfleet.ingest")


class ErrorCode(enum.StrEnum):
    """An error answer: ``ErrorCode.X`` is the code string the sender reads.

    ``retry_after``: the answer carries ``Retry-After`` (``HOOKFLEET_RETRY_AFTER_S``)
    because the cause passes by itself (Redis away or full, replicas late), and a
    sender that honours the header should come back soon. Not for
    ``provider_not_configured``: that waits for an operator, and a sender that
    follows a 5-second ``Retry-After`` (Standard Webhooks senders take it "into
    consideration when scheduling the next attempt", spec "Delivery success and
    failure") would spend its few attempts in seconds instead of over its schedule of
    days (Stripe 3 days, Standard Webhooks' example ~3 days).

    The header's value is ``HOOKFLEET_RETRY_AFTER_S``, except for ``rate_limited``:
    there it is the seconds until the sender's token bucket holds a token again.
    """

    status: int
    retry_after: bool
    outcome: str
    default_message: str

    def __new__(
        cls, code: str, status: int, message: str, options: Mapping[str, Any] | None = None
    ) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.default_message = message
        member.retry_after = bool((options or {}).get("retry_after", False))
        # The metrics label: a named outcome, else any 4xx is the sender's bad request
        # and any 5xx our error.
        named = (options or {}).get("outcome")
        member.outcome = str(named) if named else ("bad_request" if status < 500 else "error")
        return member

    # 400: the body or its framing
    EMPTY_BODY = "empty_body", 400, "The body is empty."
    INVALID_JSON = "invalid_json", 400, "The body is not JSON."
    NOT_AN_OBJECT = "not_an_object", 400, "The body must be a JSON object."
    MALFORMED_BODY = "malformed_body", 400, "The chunked body is malformed."
    INCOMPLETE_BODY = "incomplete_body", 400, "The body ended early."
    MALFORMED_REQUEST = "malformed_request", 400, "The request is malformed."
    # A header the receiver reads once (an id, a timestamp, a signature) on two lines:
    # RFC 9110 section 5.3 joins them with a comma, which makes neither value.
    REPEATED_HEADER = "repeated_header", 400, "A header that is sent once came twice."
    # RFC 9112 section 3.2: an HTTP/1.1 request without Host, or a Host that is not
    # uri-host[:port] (two Host lines included): 400 (ingest/host_header.py).
    MISSING_HOST = "missing_host", 400, "An HTTP/1.1 request needs a Host header."
    BAD_HOST = "bad_host", 400, "The Host header (or the request target's authority) is invalid."
    # 401: not provably from the provider
    MISSING_SIGNATURE = (
        "missing_signature",
        401,
        "The signature is missing.",
        {"outcome": "invalid_signature"},
    )
    MALFORMED_SIGNATURE = (
        "malformed_signature",
        401,
        "The signature is malformed.",
        {"outcome": "invalid_signature"},
    )
    INVALID_SIGNATURE = (
        "invalid_signature",
        401,
        "No signature matches a configured secret.",
        {"outcome": "invalid_signature"},
    )
    TIMESTAMP_OUT_OF_TOLERANCE = (
        "timestamp_out_of_tolerance",
        401,
        "The signature's timestamp is too far from our clock.",
        {"outcome": "expired"},
    )
    UNAUTHORIZED = "unauthorized", 401, "Send the admin token as a Bearer."
    # 404 / 405: no such route
    UNKNOWN_PROVIDER = "unknown_provider", 404, "No such provider."
    NOT_FOUND = "not_found", 404, "No such route."
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "Webhooks are POSTed."
    # 413-431: too large, wrong media, refused framing
    BODY_TOO_LARGE = (
        "body_too_large",
        413,
        "The body exceeds the provider's limit.",
        {"outcome": "too_large"},
    )
    REQUEST_LINE_TOO_LONG = "request_line_too_long", 414, "The request line is too long."
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        "Send the body as application/json.",
    )
    UNSUPPORTED_CONTENT_ENCODING = (
        "unsupported_content_encoding",
        415,
        "Send the body uncompressed.",
    )
    UNSUPPORTED_TRANSFER_ENCODING = (
        "unsupported_transfer_encoding",
        415,
        "Send the body with Content-Length or Transfer-Encoding: chunked alone.",
    )
    # 408: not whole within the arrival deadline (ingest/gunicorn_worker.py
    # ARRIVAL_TIMEOUT_S), answered by the server's workers before any app code runs.
    REQUEST_TIMEOUT = "request_timeout", 408, "The request did not arrive in time."
    EXPECTATION_FAILED = "expectation_failed", 417, "Only Expect: 100-continue is supported."
    UNKNOWN_SHAPE = "unknown_shape", 422, "Not a shape this provider sends."
    HEADERS_TOO_LARGE = "headers_too_large", 431, "The request's headers are too large."
    # HTTP/2.0, HTTP/3.0, HTTP/0.9 on an HTTP/1.1 port (RFC 9110 section 15.6.6): the
    # client's choice, counted as a bad request though the status is a 5xx.
    HTTP_VERSION_NOT_SUPPORTED = (
        "http_version_not_supported",
        505,
        "Only HTTP/1.0 and HTTP/1.1 are served.",
        {"outcome": "bad_request"},
    )
    # 429: the sender's rate limit (HOOKFLEET_<PROVIDER>_RATE_LIMIT). Standard Webhooks:
    # "429 Too Many Requests: This indicates a rate-limit has been met, and it's
    # recommended to throttle additional requests" (spec, "Delivery success and
    # failure"); Stripe retries any non-2xx with exponential backoff, for up to three
    # days in live mode (docs.stripe.com/webhooks, "Automatic retries").
    RATE_LIMITED = (
        "rate_limited",
        429,
        "Too many deliveries from this provider; the delivery was not accepted. Retry later.",
        {"retry_after": True, "outcome": "rate_limited"},
    )
    # 5xx: we could not take it; nothing was left half-claimed
    INTERNAL_ERROR = "internal_error", 500, "Internal error; the delivery was not accepted."
    QUEUE_UNAVAILABLE = (
        "queue_unavailable",
        503,
        "The queue is unavailable; the delivery was not accepted. Retry later.",
        {"retry_after": True},
    )
    QUEUE_FULL = (
        "queue_full",
        503,
        "The queue is at its limit; the delivery was not accepted. Retry later.",
        {"retry_after": True, "outcome": "shed"},
    )
    NOT_REPLICATED = (
        "not_replicated",
        503,
        "Too few Redis replicas confirmed the delivery in time. Retry later.",
        {"retry_after": True, "outcome": "not_replicated"},
    )
    # The receiver worker is stopping (SIGTERM) and no longer serves what it has not
    # begun: the gthread fallback's answer to a request its threads take after the drain
    # (ingest/gunicorn_worker.py ``EXIT_SERVE_S``); the connection closes. A sender
    # retries it (Retell up to 3 times), on a receiver that is not stopping.
    SHUTTING_DOWN = (
        "shutting_down",
        503,
        "The receiver is shutting down; the delivery was not accepted. Retry.",
    )
    PROVIDER_NOT_CONFIGURED = (
        "provider_not_configured",
        503,
        "No secret is configured for this provider.",
    )


# ``hookfleet_webhooks_received``'s outcome label by error code (``ingest.metrics``).
OUTCOME_BY_CODE: Final = {code.value: code.outcome for code in ErrorCode}


class ApiError(Exception):
    """An answer to the sender that is not a success. Raise it anywhere in a view.

    ``message`` defaults to the code's own; ``retry_after_s`` is required exactly for
    the codes that carry ``Retry-After`` (``ValueError`` otherwise: a code and its
    header cannot drift apart).
    """

    def __init__(
        self, code: ErrorCode, message: str | None = None, *, retry_after_s: int | None = None
    ) -> None:
        if code.retry_after != (retry_after_s is not None):
            raise ValueError(f"{code} {'needs' if code.retry_after else 'has no'} Retry-After")
        message = message or code.default_message
        super().__init__(message)
        self.code = code
        self.status = code.status
        self.message = message
        self.headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}


def error_response(status: int, code: str, message: str) -> Response:
    g.outcome_code = code  # for the metrics hook: it need not read the body back
    if status < 500:  # 5xx are logged where they happen, with their cause
        log.info("refused", extra={"outcome": code, "status": status})
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        response = error_response(error.status, error.code.value, error.message)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        # Routing's own refusals (404 not_found, 405 method_not_allowed): werkzeug's
        # name as the code.
        code = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, code, error.description or code)
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # The traceback goes to our log, never to the sender; a 500 means a Hookfleet
        # bug, and the provider will retry.
        log.exception("unhandled error", extra={"correlation_id": g.get("correlation_id", "")})
        code = ErrorCode.INTERNAL_ERROR
        return error_response(code.status, code.value, code.default_message)

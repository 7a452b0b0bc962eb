"""``POST /webhooks/<provider>`` served before Flask, with Flask's answers.

Every delivery used to cross Flask's request machinery (a request and an app context
pushed, URL matching, before/after hooks, werkzeug's response object) before and after
:func:`ingest.views.take_delivery` did the work: about a quarter of the receiver's
Python time per delivery (``python -m tests.bench.per_request --profile``). Here the
app's ``wsgi_app`` recognises a delivery to a known provider from ``REQUEST_METHOD`` and
``PATH_INFO`` and calls ``take_delivery`` itself; everything else (``/healthz``, the
operator endpoints, unknown providers, other methods, odd paths) goes to Flask as
before.

It answers exactly as the Flask route does: the same status line, JSON bodies
(``{"error": {"code", "message"}}`` for a refusal, ``Retry-After`` where the code
carries it), ``X-Request-ID``, the "refused" and "unhandled error" log lines, and the
same ``hookfleet_webhooks_received`` / duration samples. ``tests/integration`` runs
through it (the Flask test client calls ``wsgi_app``); under the shipped gunicorn worker
(ingest/aio_worker.py) deliveries are served on the event loop by
ingest/loop_delivery.py, with this module's :func:`refused_answer` and
:func:`finish_answer`, and come here when they go through a thread (tracing on, a gate
that cannot pipeline, the former worker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from ingest.errors import OUTCOME_BY_CODE, ApiError, ErrorCode
from ingest.host_header import host_refusal
from ingest.listeners import on_ops_listener
from ingest.metrics import count_answer
from ingest.providers import REGISTRY
from ingest.tracing import describe_answer, refusal_code, refusal_span, request_span
from ingest.views import Answer, correlation_id_for, json_body, take_delivery
from models import tracing
from models.logs import log_context

log = logging.getLogger("hookfleet.ingest")

_PREFIX = "/webhooks/"
# "202 ACCEPTED" and the like: the status line werkzeug's response writes, made once.
_STATUS_LINES = {code: f"{code} {name.upper()}" for code, name in HTTP_STATUS_CODES.items()}
StartResponse = Callable[..., Any]


class ClosingBody:
    """A one-chunk WSGI body that runs ``after`` when the server closes it (once the
    answer has been sent), as werkzeug's ``call_on_close`` does."""

    def __init__(self, body: bytes, after: Callable[[], None]) -> None:
        self._body = body
        self._after = after

    def __iter__(self) -> Iterator[bytes]:
        yield self._body

    def close(self) -> None:
        self._after()


class ReceiverApp(Flask):
    """The receiver's Flask app: deliveries to known providers are served by
    :meth:`wsgi_app` itself, the rest by Flask (``super().wsgi_app``).
    ``fast_path = False`` sends deliveries through Flask's route too (the benchmark's
    ``flask-route`` diagnostic: what the fast path saves, in the same run)."""

    fast_path = True

    def wsgi_app(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "")
        provider = (
            REGISTRY.get(path[len(_PREFIX) :])
            if self.fast_path
            and environ.get("REQUEST_METHOD") == "POST"
            and path.startswith(_PREFIX)
            # not on the ops listener: Flask answers a webhook there 404 (ingest/metrics.py)
            and not on_ops_listener(environ, self.config["HOOKFLEET_SETTINGS"])
            else None
        )
        if provider is not None and host_refusal(environ) is not None:
            provider = None  # Flask answers its 400 (ingest/host_header.py)
        if provider is None:
            if tracing.on() and self.fast_path and path.startswith(_PREFIX):
                return self._traced_refusal(environ, start_response)
            return super().wsgi_app(environ, start_response)
        if tracing.on():
            return self._traced(environ, start_response, provider)
        return self._deliver(environ, start_response, provider)

    def _traced(self, environ: dict[str, Any], start_response: StartResponse, provider: Any) -> Any:
        """:meth:`_deliver` inside the delivery's request span (ingest/tracing.py)."""
        with request_span(environ, provider.name) as span:
            return self._deliver(environ, start_response, provider, span)

    def _traced_refusal(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        """Flask's answer to a webhook path it refuses (404 unknown provider, 405 not a
        POST), inside a request span of its own (ingest/tracing.py)."""
        with refusal_span(environ) as span:
            status: list[int] = []

            def recording_start_response(line: str, *args: Any) -> Any:
                status.append(int(line.split(" ", 1)[0]))
                return start_response(line, *args)

            body = super().wsgi_app(environ, recording_start_response)
            if span is not None and status:
                code = refusal_code(status[0], environ.get("PATH_INFO", ""))
                describe_answer(
                    span, status[0], OUTCOME_BY_CODE.get(code or "", "bad_request"), None, code
                )
            return body

    def _deliver(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        provider: Any,
        span: Any = None,
    ) -> Any:
        started = time.perf_counter()
        correlation_id = correlation_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        log_context.set({"correlation_id": correlation_id})
        try:
            answer = take_delivery(self, environ, provider, correlation_id, started)
            headers: list[tuple[str, str]] = []
            refused: str | None = None
        except Exception as error:  # noqa: BLE001 (answered as the Flask route would)
            answer, headers, refused = refused_answer(error, correlation_id)
        status, header_list = finish_answer(
            provider.name, answer, headers, correlation_id, started, span, refused
        )
        start_response(status, header_list)
        if answer.after is not None:
            return ClosingBody(answer.body, answer.after)
        return [answer.body]


def refused_answer(
    error: Exception, correlation_id: str
) -> tuple[Answer, list[tuple[str, str]], str]:
    """A refusal's answer, extra headers (``Retry-After``) and code: an ApiError as
    it says, anything else a logged 500 ``internal_error``."""
    if isinstance(error, ApiError):
        return _refusal(error.code, error.message), list(error.headers.items()), error.code.value
    log.exception("unhandled error", extra={"correlation_id": correlation_id}, exc_info=error)
    code = ErrorCode.INTERNAL_ERROR
    return _refusal(code, code.default_message), [], code.value


def finish_answer(
    provider: str,
    answer: Answer,
    headers: list[tuple[str, str]],
    correlation_id: str,
    started: float,
    span: Any = None,
    refused: str | None = None,
) -> tuple[str, list[tuple[str, str]]]:
    """Count the delivery's answer (``hookfleet_webhooks_received`` and its duration)
    and give its status line and headers, as the Flask route's would be."""
    count_answer(provider, answer.outcome, time.perf_counter() - started)
    if span is not None:
        describe_answer(span, answer.status, answer.outcome, log_context.get(), refused)
    return (
        _STATUS_LINES[answer.status],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(answer.body))),
            *headers,
            ("X-Request-ID", correlation_id),
        ],
    )


def _refusal(code: ErrorCode, message: str) -> Answer:
    """``ingest.errors.error_response``'s answer and log line, without a Flask context."""
    if code.status < 500:  # 5xx are logged where they happen, with their cause
        log.info("refused", extra={"outcome": code.value, "status": code.status})
    body = json_body({"error": {"code": code.value, "message": message}})
    return Answer(code.status, body, OUTCOME_BY_CODE[code.value])

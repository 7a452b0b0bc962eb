"""Every error the receiver answers with: JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("hookfleet.ingest")


class ApiError(Exception):
    """An answer to the sender that is not a success. Raise it anywhere in a view."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


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
        response = error_response(error.status, error.code, error.message)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
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
        return error_response(
            500, "internal_error", "Internal error; the delivery was not accepted."
        )

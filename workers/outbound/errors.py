"""What can go wrong when calling out, as types: the caller decides by type alone.

- :class:`ApiRejected` — the service answered 4xx. Retrying sends the same request and
  gets the same answer: never retried, never counted against the service's breaker.
- :class:`ApiUnavailable` — 5xx, a timeout, a refused or dropped connection, and the
  4xx that mean "not now" (:class:`ApiRateLimited`: 429, 408, a 413 with Retry-After;
  workers.outbound.policy). May work a moment later: retried with backoff (no sooner
  than ``retry_after_s`` when the service said when), and counted by the breaker.
- :class:`CircuitOpen` — we did not call at all: the service failed too often lately.
"""

from __future__ import annotations

from typing import Any


class OutboundError(Exception):
    """Calling ``service`` failed."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class ApiRejected(OutboundError):
    """The service answered with a 4xx status (or a redirect, which is not followed)."""

    def __init__(self, service: str, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(service, f"{method} {path} answered {status}: {_short(body)}")
        self.status = status
        self.body = body


class ApiUnavailable(OutboundError):
    """5xx, timeout or connection failure: transient.

    ``status``: the HTTP status when there was an answer, else None. ``retry_after_s``:
    the wait the service asked for (its ``Retry-After``), else None.
    """

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(service, message)
        self.status = status
        self.retry_after_s = retry_after_s


class ApiRateLimited(ApiUnavailable):
    """A 4xx that means "not now" (429 Too Many Requests, 408, 413 with Retry-After):
    the same request may be sent again later, after ``retry_after_s`` when given."""


class CircuitOpen(OutboundError):
    """The service's breaker is open; nothing was sent."""


def _short(body: Any, limit: int = 200) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text if len(text) <= limit else text[:limit] + "…"

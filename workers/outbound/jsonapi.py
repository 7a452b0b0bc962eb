"""One small JSON-over-HTTP client: a timeout on every call, retries, a shared breaker.

Order of the layers, and why: **tenacity outside, the breaker inside.** Every HTTP
attempt goes through the breaker on its own, so each 5xx/timeout counts once towards
``fail_max`` and a breaker opened by another process stops the very next attempt. When
the breaker is open the retry loop ends at once (:class:`CircuitOpen` is not retried):
sleeping and asking again would only wait for a refusal. 4xx answers are neither retried
nor counted (the service is up; our request is wrong).

Only requests that are safe to repeat are retried (``retry=True``, the default for
reads and full-state PATCHes). Creating calls pass ``retry=False`` and let the caller
decide, because a create that timed out may well have happened (workers.provisioning
looks before it creates again).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pybreaker
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from models.settings import Settings
from workers.outbound.breaker import get_breaker
from workers.outbound.errors import ApiRejected, ApiUnavailable, CircuitOpen

log = logging.getLogger("hookfleet.outbound")


@dataclass(frozen=True)
class JsonApi:
    """``service`` names the breaker (``retell``/``calcom``) and appears in every error."""

    service: str
    base_url: str
    settings: Settings
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError(f"{self.service} API URL must be http(s), got {self.base_url!r}")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | int] | None = None,
        retry: bool = True,
    ) -> Any:
        """The decoded JSON answer of a 2xx; raises ApiRejected, ApiUnavailable or
        CircuitOpen (workers.outbound.errors)."""
        outbound = self.settings.outbound
        breaker = get_breaker(self.service, self.settings)

        def attempt() -> Any:
            try:
                return breaker.call(self._send, method, path, body, query)
            except pybreaker.CircuitBreakerError as error:
                raise CircuitOpen(
                    self.service, f"circuit open, {method} {path} not sent ({error})"
                ) from None

        retrying = Retrying(
            stop=stop_after_attempt(outbound.retries if retry else 1),
            # Exponential from backoff_s, capped, plus jitter so that workers which failed
            # together do not come back together.
            wait=wait_exponential(multiplier=outbound.backoff_s, max=outbound.backoff_s * 8)
            + wait_random(0, outbound.backoff_s),
            retry=retry_if_exception_type(ApiUnavailable),
            reraise=True,
        )
        return retrying(attempt)

    def _send(
        self, method: str, path: str, body: Any, query: Mapping[str, str | int] | None
    ) -> Any:
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # The scheme is http(s): checked in __post_init__.
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        timeout = self.settings.outbound.timeout_s
        try:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                    status, raw = response.status, response.read()
            except urllib.error.HTTPError as error:
                with error:
                    status, raw = error.code, error.read()
        except (OSError, http.client.HTTPException) as error:
            # URLError (refused, DNS), TimeoutError, a connection dropped mid-answer.
            reason = getattr(error, "reason", None) or error
            where = {"service": self.service, "method": method, "path": path}
            log.warning("outbound call failed", extra={**where, "error": str(reason)})
            raise ApiUnavailable(self.service, f"{method} {path}: {reason}") from error
        answer = _decode(raw)
        if status >= 500:
            log.warning(
                "outbound call failed",
                extra={"service": self.service, "method": method, "path": path, "status": status},
            )
            raise ApiUnavailable(self.service, f"{method} {path} answered {status}")
        if status >= 400:
            raise ApiRejected(self.service, method, path, status, answer)
        return answer


def path_part(value: str | int) -> str:
    """``value`` escaped for a URL path; the + of an E.164 number stays as Retell shows it."""
    return quote(str(value), safe="+")


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")

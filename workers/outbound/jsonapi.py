"""One small JSON-over-HTTP client on httpx: pooled connections, a timeout on every call,
retries by policy, a shared breaker.

**One pooled ``httpx.Client`` per service per process** (:func:`pooled_client`): calls
reuse kept-alive connections instead of a new TCP (and TLS) handshake each. It is built
on first use in the process that uses it — a Celery prefork child builds its own after
the fork, never sharing the parent's sockets.

Order of the layers, and why: **tenacity outside, the breaker inside.** Every HTTP
attempt goes through the breaker on its own, so each transient failure (5xx, timeout,
429…) counts once towards ``fail_max`` and a breaker opened by another process stops the
very next attempt. When the breaker is open the retry loop ends at once
(:class:`CircuitOpen` is not retried): sleeping and asking again would only wait for a
refusal. Other 4xx answers are neither retried nor counted (the service is up; our
request is wrong).

Which calls are retried, and how long to wait (``Retry-After``), is the service's
:class:`~workers.outbound.policy.RetryPolicy`, not a flag at each call site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pybreaker

from models.perprocess import PerProcessMap
from models.settings import Settings
from workers.outbound.breaker import get_breaker
from workers.outbound.errors import ApiRateLimited, ApiRejected, ApiUnavailable, CircuitOpen
from workers.outbound.policy import RetryPolicy, is_transient_status, parse_retry_after

if TYPE_CHECKING:
    # httpx is imported where a call is made (pooled_client, _send), once per process
    # that calls out: with its command-line extras installed it costs 0.1-0.3 CPU-s,
    # which every worker, beat and `hookfleet` command paid at start for the one
    # provisioning worker that calls out.
    import httpx

log = logging.getLogger("hookfleet.outbound")

# (service, base URL, headers, timeout, transport) -> this process's client: a forked
# child builds its own, off its parent's pooled sockets (models.perprocess).
_clients: PerProcessMap[tuple[object, ...], httpx.Client] = PerProcessMap()


def pooled_client(
    service: str,
    base_url: str,
    headers: Mapping[str, str],
    timeout_s: float,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """This process's client for ``service`` at ``base_url`` (built on first use).

    ``timeout_s`` bounds each of connecting, sending, each read and waiting for a pooled
    connection. ``transport``: tests pass an ``httpx.MockTransport``.
    """
    import httpx

    key = (service, base_url, tuple(sorted(headers.items())), timeout_s, transport)
    return _clients.get(
        key,
        lambda: httpx.Client(
            base_url=base_url,
            headers={"Accept": "application/json", **headers},
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        ),
    )


@dataclass(frozen=True)
class JsonApi:
    """``service`` names the breaker (``retell``/``calcom``) and appears in every error;
    ``policy`` says which calls may be repeated (default: the idempotent methods)."""

    service: str
    base_url: str
    settings: Settings
    headers: Mapping[str, str] = field(default_factory=dict)
    policy: RetryPolicy | None = None
    transport: httpx.BaseTransport | None = None

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
    ) -> Any:
        """The decoded JSON answer of a 2xx; raises ApiRejected, ApiUnavailable (or its
        ApiRateLimited) or CircuitOpen (workers.outbound.errors)."""
        policy = self.policy or RetryPolicy.for_outbound(self.settings.outbound)
        breaker = get_breaker(self.service, self.settings)

        def attempt() -> Any:
            try:
                return breaker.call(self._send, method, path, body, query)
            except pybreaker.CircuitBreakerError as error:
                raise CircuitOpen(
                    self.service, f"circuit open, {method} {path} not sent ({error})"
                ) from None

        return policy.retrying(repeatable=policy.allows(method, path))(attempt)

    def _client(self) -> httpx.Client:
        return pooled_client(
            self.service,
            self.base_url,
            self.headers,
            self.settings.outbound.timeout_s,
            self.transport,
        )

    def _send(
        self, method: str, path: str, body: Any, query: Mapping[str, str | int] | None
    ) -> Any:
        import httpx  # imported by _client() already; a dictionary lookup here

        where = {"service": self.service, "method": method, "path": path}
        try:
            response = self._client().request(
                method, path, json=body, params=dict(query) if query else None
            )
        except httpx.HTTPError as error:
            # Refused, DNS, a timeout, a connection dropped mid-answer, a garbled answer.
            log.warning("outbound call failed", extra={**where, "error": repr(error)})
            raise ApiUnavailable(self.service, f"{method} {path}: {error!r}") from error
        status, answer = response.status_code, _decode(response.content)
        retry_after = response.headers.get("Retry-After")
        if is_transient_status(status, retry_after is not None):
            waits = parse_retry_after(retry_after)
            log.warning(
                "outbound call failed", extra={**where, "status": status, "retry_after_s": waits}
            )
            kind = ApiUnavailable if status >= 500 else ApiRateLimited
            after = "" if waits is None else f", retry after {waits:g} s"
            raise kind(
                self.service,
                f"{method} {path} answered {status}{after}",
                status=status,
                retry_after_s=waits,
            )
        if status >= 300:
            # 4xx; or a redirect, which httpx (unlike urllib) does not follow: a moved
            # API is a configuration to fix, and following would turn a POST into a GET.
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

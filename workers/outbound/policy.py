"""When an outbound call is tried again, and how long to wait: one policy, one ``Retrying``.

The model is urllib3's ``Retry`` (``src/urllib3/util/retry.py``):

- **Only calls that are safe to repeat are retried here**, decided by the policy, not by
  each call site: the methods RFC 9110 §9.2.2 calls idempotent (urllib3's
  ``DEFAULT_ALLOWED_METHODS``) plus what a service declares safe on top (Retell's
  ``PATCH /update-*`` set the full state; ``POST /v2/list-agents`` only reads). A create
  that failed is handed back to its caller, which looks before it creates again.
- **Which answers are transient** (:func:`is_transient_status`): 5xx, 408 Request
  Timeout, 429 Too Many Requests, and 413 only when it carries ``Retry-After`` (RFC 9110
  §15.5.14: the server says the condition is temporary). These raise
  :class:`~workers.outbound.errors.ApiUnavailable` and count towards the breaker.
- **Retry-After is honoured** (:func:`parse_retry_after`, both forms of RFC 9110
  §10.2.3): the next try waits at least that long. A wait longer than
  ``inline_wait_max_s`` is not spent holding a worker: the loop stops and the error
  (carrying ``retry_after_s``) goes to the caller — the provisioning task retries
  with that countdown, capped at :data:`RETRY_AFTER_MAX_S`.
- Between tries: exponential from ``backoff_s``, capped at 8x, plus up to ``backoff_s``
  of jitter so workers that failed together do not come back together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import Retrying

from models.settings import OutboundSettings
from workers.outbound.errors import ApiUnavailable
from workers.retries import retrying

# RFC 9110 §9.2.2 idempotent methods (urllib3's DEFAULT_ALLOWED_METHODS).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Longest Retry-After waited out inside one call (a worker slot is held meanwhile).
INLINE_WAIT_MAX_S = 10.0
# Longest Retry-After a task retry honours: a server asking for an hour gets asked again
# after this, and answers again.
RETRY_AFTER_MAX_S = 600.0
_DELAY_SECONDS = re.compile(r"\s*(\d+)\s*")


def is_transient_status(status: int, has_retry_after: bool) -> bool:
    """Whether an answer with ``status`` may succeed a moment later, unchanged."""
    if status >= 500 or status in (408, 429):
        return True
    return status == 413 and has_retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3): either
    ``delay-seconds`` (``"120"``) or an HTTP-date in any of the three forms of §5.6.7
    (``Sun, 06 Nov 1994 08:49:37 GMT``, the obsolete RFC 850 and asctime forms; always
    GMT). A date in the past means 0. None when absent or unreadable (then the normal
    backoff applies)."""
    if value is None:
        return None
    if match := _DELAY_SECONDS.fullmatch(value):
        return float(match.group(1))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def task_countdown(error: ApiUnavailable, fallback_s: float) -> float:
    """The delay before a task tries again after ``error``: the server's Retry-After
    (capped at RETRY_AFTER_MAX_S) when it sent one, else ``fallback_s``."""
    if error.retry_after_s is None:
        return fallback_s
    return min(max(error.retry_after_s, 1.0), RETRY_AFTER_MAX_S)


@dataclass(frozen=True)
class RetryPolicy:
    """How one service's calls are retried inside a call (see the module docstring).

    ``also_safe``: ``(method, path)`` pairs beyond the idempotent methods that a
    service documents as safe to repeat (a path prefix matches; ``path`` as sent).
    """

    attempts: int = 3
    backoff_s: float = 0.5
    allowed_methods: frozenset[str] = IDEMPOTENT_METHODS
    also_safe: frozenset[tuple[str, str]] = frozenset()
    inline_wait_max_s: float = INLINE_WAIT_MAX_S

    @classmethod
    def for_outbound(
        cls,
        outbound: OutboundSettings,
        *,
        allowed_methods: frozenset[str] = IDEMPOTENT_METHODS,
        also_safe: frozenset[tuple[str, str]] = frozenset(),
    ) -> RetryPolicy:
        """The policy from HOOKFLEET_OUTBOUND_RETRIES / _BACKOFF_S, plus what a service
        declares safe to repeat."""
        return cls(
            attempts=outbound.retries,
            backoff_s=outbound.backoff_s,
            allowed_methods=allowed_methods,
            also_safe=also_safe,
        )

    def allows(self, method: str, path: str) -> bool:
        """Whether ``method path`` may be sent again after a transient failure."""
        method = method.upper()
        if method in self.allowed_methods:
            return True
        return any(method == m and path.startswith(p) for m, p in self.also_safe)

    def retrying(self, *, repeatable: bool = True) -> Retrying:
        """The one tenacity ``Retrying`` of the outbound side: retries ApiUnavailable
        (never ApiRejected or CircuitOpen) whose Retry-After fits ``inline_wait_max_s``;
        one attempt only when the call is not ``repeatable``. Re-raises the last error."""
        return retrying(
            attempts=self.attempts if repeatable else 1,
            initial_s=self.backoff_s,
            max_wait_s=self.backoff_s * 8,
            jitter_s=self.backoff_s,
            retry_when=self._retry_worthwhile,
            wait_at_least=_retry_after,
        )

    def _retry_worthwhile(self, error: BaseException) -> bool:
        if not isinstance(error, ApiUnavailable):
            return False
        asked = error.retry_after_s
        # Longer than we may hold a worker: hand the wait to the caller (a task countdown).
        return asked is None or asked <= self.inline_wait_max_s


def _retry_after(error: BaseException) -> float | None:
    return error.retry_after_s if isinstance(error, ApiUnavailable) else None

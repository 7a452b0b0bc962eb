"""Whether this receiver process has just found Redis too slow for a ringing phone.

A Retell ``call_inbound`` must be answered within Retell's 10 s (else the call rings
into the number's default agent), and the answer's branch lookup within
``HOOKFLEET_INBOUND_BUDGET_MS`` (ingest/inbound.py). A Redis that is frozen (SIGSTOP,
a stalled disk, a saturated host) accepts connections and answers nothing: each
command waits for the socket timeout, so every lookup's cache read missed its budget
and every record after an answer held a receiver thread for it. One failure or timeout
on that path, :data:`FAILURES_TO_OPEN` in a row, opens this breaker (logged once, at
WARNING, with the last failure): for :data:`PROBE_AFTER_S` the lookups skip the Redis
cache (straight to the database, as with a Redis that is down) and the records go to the
database at once (ingest/inbound_record.py); then one call tries Redis again (pybreaker's
half-open state) and closes it when Redis answers in time. One failure was not enough:
an outsider's 50 ms SIGSTOP under load became one 75 ms timeout that moved 5 s of
records off a healthy Redis, into memory behind a busy database; and a thaw is noticed
within :data:`PROBE_AFTER_S`, not 5 s later.

A Redis that answers, but slowly (a Redis 60 ms away answered every command under the
75 ms give-up, and still held each call long enough to queue others into their
lookups' budgets), is skipped by the lookups alone: :data:`SLOW_IN_A_ROW` lookup replies
in a row slower than half the cache's bound skip the cache for :data:`SKIP_S`. One slow
reply is not enough (on a busy host a healthy Redis's reply took 96 ms once at a
worker's start, and an outsider saw most records sent to the database for it), and a
slow reply never moves the records off Redis: a claim 40-60 ms away still lands within
its own bound, and records kept only in memory meanwhile were what a kill could take.

Per app and process (a forked worker has its own), in memory: the breaker says what this
process has seen, and costs nothing to ask. Source: pybreaker ``CircuitBreaker``
(``fail_max``, ``reset_timeout``, ``exclude``; pybreaker 1.x).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import TypeVar

import pybreaker
import redis

from models.perprocess import PerProcess

T = TypeVar("T")

log = logging.getLogger("hookfleet.ingest.inbound")

#: Seconds the lookups skip a Redis cache that replied slowly (see SLOW_IN_A_ROW).
SKIP_S = 5.0
#: Failures or timeouts in a row on the inbound path that open the breaker.
FAILURES_TO_OPEN = 3
#: Seconds the breaker stays open before one call probes Redis again: a frozen Redis
#: costs one call's Redis bound this often; a thawed one is used again this soon.
PROBE_AFTER_S = 0.75
#: Lookup cache replies in a row slower than ``slow_s`` that make the lookups skip it.
SLOW_IN_A_ROW = 3


def _not_redis(error: BaseException) -> bool:
    # Only Redis's failures (timeouts included) say Redis is unwell.
    return not isinstance(error, redis.RedisError)


class _SayWhyOpened(pybreaker.CircuitBreakerListener):
    """One WARNING when the breaker opens from closed (not at each failed probe), with
    the failure that opened it."""

    def __init__(self) -> None:
        self._last_failure = ""

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self._last_failure = type(exc).__name__

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if new_state.name == pybreaker.STATE_OPEN and (
            old_state is None or old_state.name == pybreaker.STATE_CLOSED
        ):
            log.warning(
                "redis skipped on the inbound path: it failed",
                extra={
                    "error": self._last_failure,
                    "failures_in_a_row": cb.fail_max,
                    "probe_after_s": PROBE_AFTER_S,
                },
            )


def _breaker() -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(
        fail_max=FAILURES_TO_OPEN,
        reset_timeout=PROBE_AFTER_S,
        exclude=[_not_redis],
        listeners=[_SayWhyOpened()],
        name="inbound-redis",
    )


class _Slowness:
    """This process's run of slow lookup replies, and until when the lookups skip."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.until = 0.0


class RedisWatch:
    """One app's breaker over Redis on the inbound call path, per process."""

    def __init__(self, slow_s: float) -> None:
        """``slow_s``: seconds past which a lookup reply that came counts as slow."""
        self._breaker = PerProcess(_breaker)
        self._slowness = PerProcess(_Slowness)
        self._slow_s = slow_s

    def call(self, command: Callable[[], T], *, lookup: bool = False) -> T:
        """``command()``; raises ``pybreaker.CircuitBreakerError`` without calling it
        while Redis is being skipped, and ``redis.RedisError`` when it fails (the
        :data:`FAILURES_TO_OPEN`-th in a row starts the skipping; pybreaker raises
        ``CircuitBreakerError`` for that one). ``lookup``: a lookup's cache command,
        also skipped after :data:`SLOW_IN_A_ROW` slow replies (see the module's docstring)."""
        breaker = self._breaker.get()
        slowness = self._slowness.get()
        started = monotonic()
        if lookup and started < slowness.until:
            raise pybreaker.CircuitBreakerError("Redis slow moments ago: not tried")
        result = breaker.call(command)
        if not lookup:
            return result
        took_s = monotonic() - started
        if took_s <= self._slow_s:
            slowness.in_a_row = 0
            return result
        # Slow but under the client's give-up: each lookup still paid it, queued calls
        # behind it, and misrouted some (an outsider's Redis 60 ms away).
        slowness.in_a_row += 1
        if slowness.in_a_row >= SLOW_IN_A_ROW:
            slowness.in_a_row, slowness.until = 0, monotonic() + SKIP_S
            log.warning("redis slow on the inbound path", extra={"ms": round(took_s * 1000)})
        return result

    def known_unwell(self) -> bool:
        """True while the breaker is open: Redis failed on the inbound path, and no
        call since (one is let through :data:`PROBE_AFTER_S` after) has found it answering.
        Asking makes no call."""
        return self._breaker.get().current_state == pybreaker.STATE_OPEN

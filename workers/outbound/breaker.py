"""Circuit breakers for the services we call, with their state in Redis.

One breaker per external service (``retell``, ``calcom``). The state lives in Redis
(pybreaker's ``CircuitRedisStorage``), so every worker process and every ``hookfleet``
command sees the same breaker: when one process has watched Retell fail ``fail_max``
times in a row, the others stop calling it too, until ``reset_timeout`` has passed (then
one trial call is let through) or an operator runs ``hookfleet breaker reset retell``.

If Redis itself cannot be reached, pybreaker falls back to *closed*: the breaker then
protects nothing, but it never blocks provisioning because of a Redis outage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import pybreaker
import redis

from models.broker.redis_links import redis_client
from models.metrics import BREAKER_NAMES, BREAKER_NAMESPACE
from models.perprocess import PerProcessMap
from models.settings import Settings
from workers.outbound.errors import ApiRejected

# (name, Redis URL, fail_max, reset_s) -> this process's breaker: its Redis connection
# pool is not shared with a forked child (models.perprocess).
_breakers: PerProcessMap[tuple[object, ...], pybreaker.CircuitBreaker] = PerProcessMap()


class UnknownBreaker(KeyError):
    """A breaker name that is not one of BREAKER_NAMES."""


def _redis(settings: Settings) -> redis.Redis:
    # The one client factory every Hookfleet process uses: it speaks the Sentinel URL
    # (redis.Redis.from_url refuses redis+sentinel://) and drops a connection to a
    # demoted primary. pybreaker decodes the bytes it reads itself: decode_responses off.
    return redis_client(
        settings.redis_url, timeout_s=settings.redis_timeout_s, decode_responses=False
    )


def get_breaker(name: str, settings: Settings) -> pybreaker.CircuitBreaker:
    """This process's breaker for ``name`` (built once per process, state in Redis).

    A rejection (ApiRejected: a 4xx other than the "not now" ones, see
    workers.outbound.policy) means the service is up and said no: it never counts as a
    failure. A 429 does count: a service rate-limiting us is a service to call less.
    """
    if name not in BREAKER_NAMES:
        raise UnknownBreaker(name)
    outbound = settings.outbound
    key = (name, settings.redis_url, outbound.breaker_fail_max, outbound.breaker_reset_s)

    def build() -> pybreaker.CircuitBreaker:
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, _redis(settings), namespace=f"{BREAKER_NAMESPACE}:{name}"
        )
        return pybreaker.CircuitBreaker(
            fail_max=outbound.breaker_fail_max,
            reset_timeout=outbound.breaker_reset_s,
            exclude=[ApiRejected],
            state_storage=storage,
            name=name,
        )

    return _breakers.get(key, build)


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: str  # closed | open | half-open
    failures: int
    opened_at: datetime | None
    reset_after_s: int


def breaker_status(name: str, settings: Settings) -> BreakerStatus:
    """What ``name``'s breaker looks like in Redis right now."""
    breaker = get_breaker(name, settings)
    storage = breaker._state_storage  # pybreaker exposes no public reader for these
    return BreakerStatus(
        name=name,
        state=breaker.current_state,
        failures=breaker.fail_counter,
        opened_at=storage.opened_at if breaker.current_state != pybreaker.STATE_CLOSED else None,
        reset_after_s=int(breaker.reset_timeout),
    )


def breaker_states(settings: Settings | None = None) -> dict[str, str]:
    """``{"retell": "closed", "calcom": "open", ...}`` — for metrics exporters."""
    settings = settings or Settings.from_env(os.environ)
    return {name: get_breaker(name, settings).current_state for name in BREAKER_NAMES}


def reset_breaker(name: str, settings: Settings) -> None:
    """Close ``name``'s breaker for every process (an operator's decision)."""
    get_breaker(name, settings).close()

"""The inbound path's Redis breaker (ingest/redis_watch.py): one stall does not move the
records off Redis, a frozen Redis is skipped after a few calls, a thaw is noticed within
a second, and the opening is said once, with why."""

from __future__ import annotations

import logging
import time

import pybreaker
import pytest
import redis

from ingest.redis_watch import FAILURES_TO_OPEN, PROBE_AFTER_S, RedisWatch


def _timed_out() -> None:
    raise redis.TimeoutError("Timeout reading from socket")


def _answered() -> str:
    return "PONG"


def _time_out_in_a_row(watch: RedisWatch) -> None:
    for _ in range(FAILURES_TO_OPEN):
        with pytest.raises((redis.TimeoutError, pybreaker.CircuitBreakerError)):
            watch.call(_timed_out)


@pytest.fixture
def opened_watch(caplog: pytest.LogCaptureFixture) -> RedisWatch:
    """A watch whose Redis timed out :data:`FAILURES_TO_OPEN` times in a row (the
    opening's log captured)."""
    watch = RedisWatch(slow_s=0.05)
    caplog.set_level(logging.WARNING, logger="hookfleet.ingest.inbound")
    _time_out_in_a_row(watch)
    return watch


def _openings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    records = [*caplog.get_records("setup"), *caplog.records]  # opened in the fixture
    return [r for r in records if "redis skipped on the inbound path" in r.getMessage()]


def test_one_redis_timeout_does_not_skip_redis() -> None:
    watch = RedisWatch(slow_s=0.05)
    with pytest.raises(redis.TimeoutError):
        watch.call(_timed_out)
    assert not watch.known_unwell()
    assert watch.call(_answered) == "PONG"


def test_failures_in_a_row_skip_redis_then_a_probe_within_a_second_takes_it_back(
    opened_watch: RedisWatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = opened_watch
    assert watch.known_unwell()
    with pytest.raises(pybreaker.CircuitBreakerError):
        watch.call(_answered)  # skipped: not tried
    time.sleep(PROBE_AFTER_S + 0.1)
    assert PROBE_AFTER_S <= 1.0
    assert watch.call(_answered) == "PONG"  # the probe: Redis thawed
    assert not watch.known_unwell()
    opened = _openings(caplog)
    assert len(opened) == 1
    assert opened[0].__dict__["error"] == "TimeoutError"


def test_a_failed_probe_keeps_redis_skipped_without_saying_so_again(
    opened_watch: RedisWatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = opened_watch
    time.sleep(PROBE_AFTER_S + 0.1)
    with pytest.raises((redis.TimeoutError, pybreaker.CircuitBreakerError)):
        watch.call(_timed_out)  # still frozen
    assert watch.known_unwell()
    opened = _openings(caplog)
    assert len(opened) == 1

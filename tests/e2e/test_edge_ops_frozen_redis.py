"""The operator endpoints answer fast while Redis is frozen (a real redis-server
SIGSTOPped: connections accepted, nothing answered), and say so: ``/metrics`` shows
Redis down and the queue gauges as last read, with their age; ``/readyz`` is 503 naming
Redis; ``/stats`` names the stale part. Before, a scrape took ~3 s (three Redis reads one
after another, each waiting out the probe client's 1 s timeout)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Processes, request, running_fleet
from tests.servers import RedisServer

pytestmark = pytest.mark.e2e

#: The goal is 0.5 s (the receiver waits 0.3 s for its readings); generous for a
#: loaded test machine, far below the ~3 s of before.
ANSWER_WITHIN_S = 0.8


@pytest.fixture
def web(tmp_path: Path, own_redis: RedisServer, database_url: str) -> Iterator[Processes]:
    # One worker: the last good reading is each worker process's own.
    with running_fleet(
        tmp_path, own_redis.url, database_url, names=("web",), WEB_CONCURRENCY="1"
    ) as web:
        yield web


def timed(web: Processes, path: str) -> tuple[float, int, object]:
    started = time.monotonic()
    status, _, body = request(web.ops_url, "GET", path)
    return time.monotonic() - started, status, body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_operator_endpoints_answer_fast_and_say_redis_is_unreachable_while_it_is_frozen(
    web: Processes, own_redis: RedisServer
) -> None:
    # Good readings while Redis answers (a scrape, a readiness probe): a process's first
    # reading of each may take longer (its connections are dialled). /stats is not asked
    # now: it would answer the next 5 s from this reading.
    _, status, healthy = timed(web, "/metrics")
    assert status == 200
    assert timed(web, "/readyz")[1] == 200
    before = samples(str(healthy))
    assert before[("hookfleet_dependency_up", (("dependency", "redis"),))] == 1.0
    depth = ("hookfleet_queue_depth", (("queue", "hookfleet.high"),))
    assert depth in before

    own_redis.freeze()
    try:
        scrapes = [timed(web, "/metrics") for _ in range(5)]  # none piles up on another
        ready = timed(web, "/readyz")
        stats = timed(web, "/stats")
    finally:
        own_redis.thaw()

    for seconds, status, _ in scrapes:
        assert status == 200
        assert seconds < ANSWER_WITHIN_S, [round(s, 3) for s, _, _ in scrapes]
    frozen = samples(str(scrapes[-1][2]))
    assert frozen[("hookfleet_dependency_up", (("dependency", "redis"),))] == 0.0
    assert frozen[("hookfleet_dependency_up", (("dependency", "database"),))] == 1.0
    assert frozen[depth] == before[depth]  # the last reading, shown
    assert frozen[("hookfleet_reading_age_seconds", (("reading", "queues"),))] > 0
    assert frozen[("hookfleet_reading_age_seconds", (("reading", "dead_letters"),))] == 0
    seconds, status, body = ready
    assert (status, seconds < ANSWER_WITHIN_S) == (503, True), (status, seconds)
    assert body["checks"]["redis"]["ok"] is False  # type: ignore[index]
    assert body["checks"]["database"]["ok"] is True  # type: ignore[index]
    seconds, status, body = stats
    assert (status, seconds < ANSWER_WITHIN_S) == (200, True), (status, seconds)
    assert "redis" in body["errors"]  # type: ignore[index]
    assert "hookfleet.high" in body["queues"]  # type: ignore[index]
    # Redis back: the next scrape reads it again.
    again = samples(str(timed(web, "/metrics")[2]))
    assert again[("hookfleet_dependency_up", (("dependency", "redis"),))] == 1.0

"""Two `hookfleet quarantine release` runs at once: each kept delivery is claimed by
exactly one of them, so what they print adds up to what was kept. A real Redis, the
two releases in threads of one process (each with its own Redis connections)."""

from __future__ import annotations

import threading
import time

import redis

from ingest.providers.base import Delivery
from ingest.quarantine import Quarantine
from ingest.quarantine_release import ReleaseReport
from models.contract import Queue
from models.settings import Settings
from tests.integration.test_quarantine import RIGHT, release, standard_delivery

KEPT = 400


def test_two_releases_at_once_each_take_an_entry_once_and_their_counts_add_up(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_url, quarantine_rate=100_000)
    store = Quarantine(redis.Redis.from_url(redis_url), settings)
    now = int(time.time())
    for n in range(KEPT):
        body, headers = standard_delivery(RIGHT, f"msg_{n}", now)
        store.keep("standard", Delivery(body, headers, now), "invalid_signature", "corr")
    reports: list[ReleaseReport] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        reports.append(release(redis_url))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    released = [sum(r.released.values()) for r in reports]
    duplicate = [sum(r.duplicate.values()) for r in reports]
    assert sum(released) == KEPT, (released, duplicate)
    assert sum(duplicate) == 0, (released, duplicate)
    assert all(sum(r.stayed.values()) == 0 for r in reports)
    assert redis_client.llen(Queue.LOW) == KEPT
    assert list(store.entries("standard")) == []

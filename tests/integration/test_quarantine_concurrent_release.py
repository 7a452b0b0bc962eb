"""Two `hookfleet quarantine release` runs at once: each kept delivery is claimed by
exactly one of them, so what they print adds up to what was kept. A real Redis, the
two releases in threads of one process (each with its own Redis connections)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from ingest import quarantine, quarantine_release
from ingest.providers.base import Delivery
from ingest.quarantine import Entry, Quarantine
from ingest.quarantine_release import ReleaseReport
from models.contract import Queue
from models.settings import Settings
from tests.integration.test_quarantine import RIGHT, WRONG, release, standard_delivery

KEPT = 400


def keep_signed(redis_url: str, signers: list[str], prefix: str = "msg") -> Quarantine:
    """Keep one refused Standard Webhooks delivery per signer (``RIGHT`` is let in by a
    release, ``WRONG`` stays); the quarantine they are kept in."""
    settings = Settings(redis_url=redis_url, quarantine_rate=100_000)
    store = Quarantine(redis.Redis.from_url(redis_url), settings)
    now = int(time.time())
    for n, signed_by in enumerate(signers):
        body, headers = standard_delivery(signed_by, f"{prefix}_{n}", now)
        store.keep("standard", Delivery(body, headers, now), "invalid_signature", "corr")
    return store


def releases_at_once(redis_url: str, count: int) -> list[ReleaseReport]:
    """``count`` releases started together (a barrier), each in a thread of its own."""
    reports: list[ReleaseReport] = []
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        reports.append(release(redis_url))

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return reports


def test_two_releases_at_once_each_take_an_entry_once_and_their_counts_add_up(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = keep_signed(redis_url, [RIGHT] * KEPT)
    reports = releases_at_once(redis_url, 2)

    released = [sum(r.released.values()) for r in reports]
    duplicate = [sum(r.duplicate.values()) for r in reports]
    assert sum(released) == KEPT, (released, duplicate)
    assert sum(duplicate) == 0, (released, duplicate)
    assert all(sum(r.stayed.values()) == 0 for r in reports)
    assert redis_client.llen(Queue.LOW) == KEPT
    assert list(store.entries("standard")) == []


def test_an_entry_that_stays_is_counted_by_one_of_the_releases_running_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed with a secret nobody has: it stays, whoever judges it. A second release
    that starts while the first runs (here: between the first's batches) and one that
    reaches an entry the other judged both leave it to the one that judged it, so
    "still refused" adds up over the runs; a release started afterwards counts all."""
    store = keep_signed(redis_url, [WRONG, WRONG], prefix="msg_stays")
    monkeypatch.setattr(quarantine_release, "BATCH", 1)
    entries = list(store.entries("standard"))
    second: list[ReleaseReport] = []

    def first_run_entries() -> Iterator[Entry]:
        yield entries[0]
        # The first release judged entries[0] and is still running: another starts,
        # finds entries[0] held and judges entries[1] before the first reaches it.
        second.append(release(redis_url))
        yield entries[1]

    first = release(redis_url, entries=first_run_entries())

    assert [sum(r.stayed.values()) for r in (first, *second)] == [1, 1]
    assert [first.elsewhere, second[0].elsewhere] == [1, 1]
    assert len(list(store.entries("standard"))) == 2  # still kept, for a later release
    assert sum(release(redis_url).stayed.values()) == 2  # run again afterwards: counted


def test_three_releases_at_once_count_each_entry_that_stays_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    keep_signed(redis_url, [RIGHT if n % 2 else WRONG for n in range(KEPT)])  # half stay
    reports = releases_at_once(redis_url, 3)

    assert sum(sum(r.released.values()) for r in reports) == KEPT // 2
    assert sum(sum(r.stayed.values()) for r in reports) == KEPT // 2
    assert redis_client.llen(Queue.LOW) == KEPT // 2


def test_a_release_that_runs_longer_than_a_claim_lasts_still_counts_its_entries_alone(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large quarantine released at a low ``--rate`` runs for longer than a claim
    lasts (``CLAIM_S``, here 2 s): it renews what it holds, so a release started late
    in it leaves the entries it judged alone, and one that was running when it ended
    and reaches them long after leaves them too (``JUDGED_S``)."""
    monkeypatch.setattr(quarantine, "CLAIM_S", 2)
    monkeypatch.setattr(quarantine_release, "BATCH", 1)
    store = keep_signed(redis_url, [WRONG] * 4, prefix="msg_long")
    entries = list(store.entries("standard"))
    late: list[ReleaseReport] = []

    def slow_entries() -> Iterator[Entry]:
        for entry in entries[:3]:
            yield entry
            time.sleep(1.2)  # paced: 3.6 s in all, past the first claims' 2 s
        late.append(release(redis_url, entries=iter(entries[:3])))
        yield entries[3]

    long_release = release(redis_url, entries=slow_entries())

    assert sum(long_release.stayed.values()) == 4
    assert (sum(late[0].stayed.values()), late[0].elsewhere) == (0, 3)

    # A release that started before the long one ended reaches its entries 2.5 s after.
    started_before: list[ReleaseReport] = []

    def entries_reached_late() -> Iterator[Entry]:
        started_before.append(release(redis_url))  # runs whole, counting all four
        time.sleep(2.5)
        yield from entries

    waiting = release(redis_url, entries=entries_reached_late())
    assert sum(started_before[0].stayed.values()) == 4
    assert (sum(waiting.stayed.values()), waiting.elsewhere) == (0, 4)

"""Readings of Redis and the database for the operator endpoints, waited for a short
bound: the last good value, marked stale, when a fresh one does not come in time.

``/metrics`` read the queues, the breakers and the quarantine from Redis one after
another, each under the probe client's 1 s timeout: with Redis frozen (SIGSTOP, a
stalled disk: connections accepted, nothing answered) a scrape took ~3 s, during exactly
the outage a dashboard and its alerts are for. Now each reading runs in the probe's
threads, all at once, and the scrape waits :data:`SCRAPE_WAIT_S` for them together; a
reading not back by then (or failed) gives its last good value and its age, and the
dependency is reported down. A reading still running from an earlier scrape is waited
for again rather than started twice, so a frozen server holds at most one thread per
reading. A reading that never succeeded in the process yet (nothing to show, and its
connections to dial) is waited for :data:`FIRST_WAIT_S`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

#: Seconds a scrape (or ``/stats``) waits for all its readings together.
SCRAPE_WAIT_S = 0.3
#: ... and for a reading that never succeeded yet in this process: there is no last one
#: to show, and its first run dials its connections (several round trips; on a loaded
#: machine a first reading took longer than SCRAPE_WAIT_S with every server answering).
FIRST_WAIT_S = 1.5

T = TypeVar("T")


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A value and how old it is: ``fresh`` when read for this request; otherwise the
    last good one, ``age_s`` seconds old (None: there was none, ``value`` is the
    reading's empty default)."""

    value: T
    fresh: bool
    age_s: float | None


class BoundedReading(Generic[T]):
    """``read()`` (which raises when its server fails) run in ``threads``, remembered
    while it succeeds. ``empty``: the value before any reading succeeded."""

    def __init__(self, read: Callable[[], T], threads: ThreadPoolExecutor, empty: T) -> None:
        self._read = read
        self._threads = threads
        self._empty = empty
        self._lock = threading.Lock()
        self._running: Future[T] | None = None
        self._last: tuple[float, T] | None = None  # (time.monotonic(), value)

    def start(self) -> Future[T]:
        """The reading in flight: started now unless one still runs."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._threads.submit(self._read)
            return self._running

    def finish(self, started: Future[T], deadline: float) -> Reading[T]:
        """The reading ``started`` if it is back by ``deadline`` (``time.monotonic()``)
        and succeeded, else the last good one, stale."""
        try:
            value = started.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return self._stale()
        except Exception:  # noqa: BLE001 (a failed reading: the last good one stands)
            return self._stale()
        with self._lock:
            self._last = (time.monotonic(), value)
        return Reading(value, True, 0.0)

    @property
    def ever_read(self) -> bool:
        """Whether a reading succeeded in this process (there is a last one to show)."""
        return self._last is not None

    def _stale(self) -> Reading[T]:
        with self._lock:
            last = self._last
        if last is None:
            return Reading(self._empty, False, None)
        return Reading(last[1], False, time.monotonic() - last[0])


def read_all(
    readings: Sequence[BoundedReading[Any]], wait_s: float = SCRAPE_WAIT_S
) -> list[Reading[Any]]:
    """Every reading of ``readings`` (in their order), started at once and waited for
    ``wait_s`` in all (:data:`FIRST_WAIT_S` for one never read yet)."""
    now = time.monotonic()
    started = [reading.start() for reading in readings]
    return [
        reading.finish(one, now + (wait_s if reading.ever_read else FIRST_WAIT_S))
        for reading, one in zip(readings, started, strict=True)
    ]

"""Records of answered inbound calls that Redis could not take when they were answered.

A Retell ``call_inbound`` is answered first and recorded after (ingest/views.py
``answer_inline``): no retry follows an answer, so a record that fails then because
Redis is down, restarting or failing over would be lost for good. It is kept here, in
the receiver process's memory, and tried again by one background thread per process
until Redis takes it or :data:`RETRY_FOR_S` has passed since the answer; a record is
idempotent (its dedup key), so a try that reached Redis unseen is a duplicate the next
time. At a worker's orderly exit what is left gets one more try (at most
:data:`EXIT_TRY_S` in all); what still fails is logged at ERROR ``inline event not
recorded`` with its event id, as is a record past :data:`MAX_WAITING` waiting ones.
A worker killed outright (SIGKILL, OOM) loses what it held.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from models.perprocess import PerProcess

log = logging.getLogger("hookfleet.ingest")

#: How long after its answer a record is still tried (seconds): a Redis restart or a
#: Sentinel failover takes seconds to a minute.
RETRY_FOR_S = 300.0
#: Records waiting per receiver process; past it a new one is not kept (logged).
MAX_WAITING = 10_000
#: Pause between tries while Redis refuses (seconds, doubling up to the second).
BACKOFF_S = (0.5, 5.0)
#: At a worker's orderly exit, the time left records are tried for (seconds, in all).
EXIT_TRY_S = 5.0


@dataclass(frozen=True)
class LateRecord:
    """One record: ``attempt()`` queues it (raises ``redis.RedisError`` when it cannot);
    ``answered_at`` is ``time.monotonic()`` at the answer."""

    attempt: Callable[[], None]
    event_id: str
    answered_at: float


class LateRecords:
    """The records of this process waiting for Redis, and the thread that tries them
    (started with the first one), oldest first."""

    def __init__(self) -> None:
        self._waiting: queue.Queue[LateRecord] = queue.Queue(MAX_WAITING)
        self._thread = threading.Thread(target=self._run, name="late-records", daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def keep(self, record: LateRecord) -> None:
        try:
            self._waiting.put_nowait(record)
        except queue.Full:
            _lost(record, "too many waiting")
            return
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()
                atexit.register(self.flush, EXIT_TRY_S)

    def waiting(self) -> int:
        return self._waiting.qsize()

    def _run(self) -> None:
        while True:
            record = self._waiting.get()
            pause = BACKOFF_S[0]
            while not _recorded(record):
                if time.monotonic() - record.answered_at > RETRY_FOR_S:
                    _lost(record, f"Redis refused it for {RETRY_FOR_S:.0f} s")
                    break
                time.sleep(pause)
                pause = min(pause * 2, BACKOFF_S[1])

    def flush(self, within_s: float) -> None:
        """One more try for each waiting record, for ``within_s`` seconds in all (at
        exit); those left are logged as not recorded."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                record = self._waiting.get_nowait()
            except queue.Empty:
                return
            if time.monotonic() > deadline or not _recorded(record):
                _lost(record, "the receiver process ended")


def _recorded(record: LateRecord) -> bool:
    try:
        record.attempt()
    except redis.RedisError:
        return False
    log.info(
        "recorded inline event late",
        extra={
            "event_id": record.event_id,
            "late_s": round(time.monotonic() - record.answered_at, 1),
        },
    )
    return True


def _lost(record: LateRecord, why: str) -> None:
    log.error("inline event not recorded", extra={"event_id": record.event_id, "reason": why})


_LATE = PerProcess(LateRecords)


def late_records() -> LateRecords:
    """This process's :class:`LateRecords` (a forked worker has its own)."""
    return _LATE.get()

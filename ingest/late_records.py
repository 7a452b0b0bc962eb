"""Records of answered inbound calls that Redis could not take when they were answered.

A Retell ``call_inbound`` is answered once its record is durable (ingest/inbound_record.py):
queued in Redis or, when Redis is down, restarting, failing over or frozen, kept in the
database. No retry follows an answer, so such a record must not depend on the provider:
it is handed to this process's :class:`LateRecords` (marked kept when the database took
it before the answer), whose one background thread

1. tries Redis again, first at once, then backing off up to ``BACKOFF_S[1]``, until
   Redis takes it (logged ``recorded inline event late``) or :data:`RETRY_FOR_S` has
   passed since the answer (Redis first: a Redis that came back takes the records in
   milliseconds, where a database 400 ms away took seconds a batch);
2. keeps what Redis did not take in the database at once if it is not there yet
   (ingest/shelved_events.py: a ``received`` ``webhook_events`` row, what a worker
   writes on taking the message), so that from then on neither an exit nor a kill of
   the receiver can lose it: the stuck-work sweep queues such a row from the database
   (after ``HOOKFLEET_STUCK_AFTER_S``); the record is idempotent (its dedup key; the
   row's UNIQUE key), so a try that reached Redis unseen, or a row the sweep also
   queues, is applied once.

A record neither took in time before the answer is a file in this host's spool
(ingest/spool.py, ``LateRecord.spooled``), deleted once Redis or the database took it;
such a record is held (and tried) past :data:`RETRY_FOR_S`, as the spool is no place
the sweep looks.

At an orderly exit (SIGTERM, ``max_requests``) :meth:`LateRecords.finish` goes on trying
Redis with backoff until the deadline the worker gives it (what is left of gunicorn's
``graceful_timeout``), then writes what is left in one batch, waited for until just
before that deadline, and logs each record. A record neither queued nor kept in the
database nor spooled is never dropped without an ERROR ``inline event not recorded``
naming its event id, and the exit then ends with status 1; one kept in the database but
not queued gets a WARNING ``inline event left to the stuck-work sweep``, one in the
spool only a WARNING ``inline event left in the spool`` (the next receiver started on
this host queues it). A record past :data:`MAX_WAITING` waiting ones is kept in the
database at once, in the caller's thread. A receiver killed outright (SIGKILL, OOM)
loses only records that Redis, the database and the disk all refused before the answer
(each named at ERROR then), until this thread writes them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy.exc import SQLAlchemyError

from ingest import shelved_events, spool
from models.perprocess import PerProcess

log = logging.getLogger("hookfleet.ingest")

#: How long after its answer a record is still tried (seconds): a Redis restart or a
#: Sentinel failover takes seconds to a minute. Past it a record kept in the database
#: is left to the stuck-work sweep.
RETRY_FOR_S = 300.0
#: Records held per receiver process; past it a new one goes to the database at once.
MAX_WAITING = 10_000
#: Pause between tries while Redis refuses (seconds, doubling up to the second).
BACKOFF_S = (0.5, 5.0)
#: At an exit, the pause between tries is at most this (seconds): the window is short.
EXIT_BACKOFF_S = 1.0
#: Of an exit's deadline, the part kept for writing what is left to the database and
#: leaving (seconds).
EXIT_RESERVE_S = 3.0
#: Of an exit's deadline, the part kept for logging what is left and leaving (seconds).
EXIT_LOG_S = 0.5
#: When no deadline is given (an exit gunicorn's worker did not announce: SIGQUIT, an
#: interpreter exit), the time left records are tried for (seconds).
EXIT_TRY_S = 1.0
#: Of an exit's window, the part the watchdog keeps for naming what is left and leaving
#: (seconds): whatever blocks the exit (a database connect at 1 s a round trip, a
#: frozen Redis, a stuck thread), the records not durable are named before the master's
#: SIGKILL at the window's end.
WATCHDOG_MARGIN_S = 1.5


@dataclass(frozen=True)
class LateRecord:
    """One record: ``attempt()`` queues it (raises ``redis.RedisError`` when it
    cannot); ``message`` is the Celery message it queues and ``database_url`` where it
    is kept meanwhile; ``answered_at`` is ``time.monotonic()`` at the answer."""

    attempt: Callable[[], None]
    event_id: str
    answered_at: float
    message: str
    database_url: str
    #: Its file in this host's spool (ingest/spool.py), deleted once Redis or the
    #: database took it; None when it is in neither the spool nor the database.
    spooled: Path | None = None


@dataclass
class _Held:
    record: LateRecord
    shelved: bool = False
    settled: bool = False  # queued, or its fate logged: never named again
    # A database write of it was sent and has not answered: if the process ends now
    # the row may be there or not (an outsider's exit batch committed as the watchdog
    # fired, and 134 calls on record were named "not recorded").
    writing: bool = False

    @property
    def durable(self) -> bool:
        """Kept somewhere a kill cannot take it: the database, or this host's spool."""
        return self.shelved or self.record.spooled is not None

    def taken(self) -> None:
        """Redis or the database has it: its spooled file is not needed any more."""
        if self.record.spooled is not None:
            spool.discard(self.record.spooled)


class LateRecords:
    """The records of this process waiting for Redis, oldest first, and the thread that
    keeps and tries them (started with the first one). Thread-safe."""

    def __init__(self) -> None:
        self._held: deque[_Held] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Taken out of ``_held`` by finish(), not yet settled: the watchdog names them.
        self._leaving: list[_Held] = []
        self._watchdog: threading.Timer | None = None
        # When gunicorn's master kills this worker (set at SIGTERM): the exit at
        # interpreter end (the gthread worker's) tries until then, not a fixed few
        # seconds from there (an outsider's gthread workers gave up 6-10 s early).
        self._exit_deadline: float | None = None

    def keep(self, record: LateRecord, *, shelved: bool = False) -> None:
        """Hold ``record`` until Redis takes it (see the module's docstring);
        ``shelved``: its row is in the database already (not written again)."""
        held = _Held(record, shelved)
        with self._lock:
            inline = self._closed or len(self._held) >= MAX_WAITING
            if not inline:
                self._held.append(held)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="late-records", daemon=True
                    )
                    self._thread.start()
                    atexit.register(self._at_exit)
        if inline:
            _leave(held, "the receiver is exiting" if self._closed else "too many waiting")
            return
        self._wake.set()

    def waiting(self) -> int:
        """Records held, not yet queued."""
        with self._lock:
            return len(self._held)

    def _run(self) -> None:
        # Redis is tried first when its backoff allows (a Redis that came back takes
        # the records in milliseconds, where a slow database took seconds a batch and
        # held them in memory meanwhile); what it does not take is written to the
        # database at once (woken by keep()).
        pause = BACKOFF_S[0]
        next_try = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            if time.monotonic() >= next_try:
                if self._try_redis():
                    pause, next_try = BACKOFF_S[0], 0.0
                    self._wake.wait()
                    continue
                self._give_up_overdue()
                next_try = time.monotonic() + pause
                pause = min(pause * 2, BACKOFF_S[1])
            self._shelve_new()
            self._wake.wait(max(0.0, next_try - time.monotonic()))

    def finish(self, deadline: float) -> int:
        """At an orderly exit: stop the thread and try the held records with backoff
        until ``deadline`` (``time.monotonic()``) less :data:`EXIT_RESERVE_S`; then leave
        what is left (kept in the database or the spool: WARNING; neither: ERROR).
        Records handed over afterwards go to the database at once. Returns how many
        records were lost or unconfirmed (each named at ERROR), for the exit status:
        by ``deadline`` unless a database write outlasts it (bounded by
        ``shelved_events.IO_TIMEOUT_S``)."""
        self._stopping.set()
        self._wake.set()
        trying_until = deadline - EXIT_RESERVE_S
        thread = self._thread
        if thread is not None:
            thread.join(timeout=max(0.0, trying_until - time.monotonic()))
        pause = BACKOFF_S[0]
        while self.waiting() and time.monotonic() < trying_until:
            # The database first: a frozen Redis costs each try its timeout (2 s), and
            # an outsider's exit batch, sent after one, was in flight at the window's end.
            self._shelve_new()
            if self._try_redis():
                break
            time.sleep(max(0.0, min(pause, trying_until - time.monotonic())))
            pause = min(pause * 2, EXIT_BACKOFF_S)
        with self._lock:
            self._closed = True
            left, self._held = list(self._held), deque()
            self._leaving = left
        self._last_write(left, deadline)
        lost = sum(_let_go(held, "the receiver process ended") for held in left)
        if self._watchdog is not None:
            self._watchdog.cancel()
        return lost

    def arm_watchdog(self, deadline: float) -> None:
        """At an orderly exit's start (SIGTERM, ``max_requests``): at ``deadline``
        (``time.monotonic()``, when gunicorn's master kills the worker) less
        :data:`WATCHDOG_MARGIN_S`, if the exit has not ended by then, name every record
        not settled (not in the database: ERROR ``inline event not recorded``; kept
        there: WARNING), flush the log handlers and end the process (``os._exit``:
        status 1 and an ERROR line when a record is not in the database or its write
        was in flight, else status 0 and a WARNING line).
        An outsider's worker blocked past the window on database connects through a
        1 s round trip and was killed with hundreds of answered calls unnamed. A daemon
        timer thread: nothing the exit path blocks on can hold it. Idempotent."""
        with self._lock:
            if self._watchdog is not None:
                return
            self._exit_deadline = deadline
            delay = max(0.0, deadline - WATCHDOG_MARGIN_S - time.monotonic())
            self._watchdog = threading.Timer(delay, self._bark)
            self._watchdog.name = "late-records-watchdog"
            self._watchdog.daemon = True
            self._watchdog.start()

    def _bark(self) -> None:
        with self._lock:
            self._closed = True
            unsettled = [held for held in (*self._leaving, *self._held) if not held.settled]
            self._held = deque()
        # Lost (or maybe lost: a write in flight) only if in neither the database nor
        # the spool.
        lost = sum(not held.durable for held in unsettled)
        for held in unsettled:
            _let_go(held, "the exit window ran out")
        # ERROR and a failed exit only when a record is lost or unconfirmed (each named
        # above): an outsider's exits with every record in the database said ERROR and
        # exited 1, which pages someone for nothing.
        log.log(
            logging.ERROR if lost else logging.WARNING,
            "receiver exit overran its window: ending the process",
            extra={"unsettled": len(unsettled), "not_in_database": lost},
        )
        _flush_logs()
        os._exit(1 if lost else 0)

    @staticmethod
    def _last_write(left: list[_Held], deadline: float) -> None:
        """Write the records not yet in the database in one batch, waiting for it until
        just before ``deadline``: an exit must log what it leaves before gunicorn's
        master kills it (a slow database's writes outlasted the window, and the records
        went with the process, unlogged)."""
        if all(held.shelved for held in left):
            return
        writer = threading.Thread(
            target=_shelve_all, args=(left, False), name="late-records-exit", daemon=True
        )
        writer.start()
        # Done before the watchdog (WATCHDOG_MARGIN_S) would name them instead.
        writer.join(max(0.0, deadline - time.monotonic() - WATCHDOG_MARGIN_S - EXIT_LOG_S))

    def _at_exit(self) -> None:
        """The gthread worker's exit and gunicorn's quick one (SIGINT, SIGQUIT): what
        is held is finished at interpreter exit; a record lost there ends the process
        with status 1 (after the log is flushed), as the watchdog's would."""
        if not self._closed:
            armed = self._exit_deadline
            soonest = time.monotonic() + EXIT_RESERVE_S + EXIT_TRY_S
            if self.finish(soonest if armed is None else max(armed, soonest)):
                _flush_logs()
                os._exit(1)

    def _shelve_new(self) -> None:
        """Write the records not yet in the database there (:func:`_shelve_all`)."""
        _shelve_all(self._snapshot(), True)

    def _try_redis(self) -> bool:
        """Queue the held records in order, stopping at the first Redis refuses; True
        when none is left."""
        for held in self._snapshot():
            if not _recorded(held.record):
                return False
            held.settled = True
            held.taken()
            self._drop(held)
        return not self.waiting()

    def _give_up_overdue(self) -> None:
        now = time.monotonic()
        for held in self._snapshot():
            if not held.shelved and held.record.spooled is not None:
                continue  # on disk only: held until Redis or the database takes it
            if now - held.record.answered_at > RETRY_FOR_S:
                self._drop(held)
                _leave(held, f"Redis refused it for {RETRY_FOR_S:.0f} s")

    def _snapshot(self) -> list[_Held]:
        with self._lock:
            return list(self._held)

    def _drop(self, held: _Held) -> None:
        with self._lock:
            try:
                self._held.remove(held)
            except ValueError:
                pass  # taken by finish() meanwhile


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


def _shelve_all(helds: list[_Held], singly_after_failure: bool) -> None:
    """Write those of ``helds`` not yet in the database there, one transaction per
    database (the fewer round trips, the smaller what a kill could still take); after
    a failure, one by one if ``singly_after_failure``, stopping at the first that fails
    too (the database is down: the next round tries again)."""
    by_database: dict[str, list[_Held]] = {}
    for held in helds:
        if not held.shelved:
            by_database.setdefault(held.record.database_url, []).append(held)
    for database_url, batch in by_database.items():
        for held in batch:
            held.writing = True
        try:
            shelve(database_url, [held.record.message for held in batch])
        except (SQLAlchemyError, ValueError):
            failed = True
        else:
            failed = False
            for held in batch:
                held.shelved = True
        finally:
            for held in batch:
                held.writing = False
        if not failed:
            for held in batch:
                held.taken()
        if failed:
            if singly_after_failure and not all(_shelved(held, quiet=True) for held in batch):
                return


def _shelved(held: _Held, *, quiet: bool = False) -> bool:
    """Keep ``held`` in the database; False (logged unless ``quiet``) when it cannot."""
    held.writing = True
    try:
        shelve(held.record.database_url, [held.record.message])
    except (SQLAlchemyError, ValueError) as error:
        if not quiet:
            log.warning(
                "could not keep inline event in the database",
                extra={"event_id": held.record.event_id, "error": type(error).__name__},
            )
        return False
    else:
        held.shelved = True
    finally:
        held.writing = False
    held.taken()
    return True


def _let_go(held: _Held, why: str) -> bool:
    """At an exit: name a record Redis has not taken (:func:`_unconfirmed` if its
    database write is in flight and it is not spooled, else :func:`_leave`); True when
    it is lost or unconfirmed (named at ERROR)."""
    if held.writing and held.record.spooled is None:
        return _unconfirmed(held)
    return _leave(held, why, write=False)


def _leave(held: _Held, why: str, *, write: bool = True) -> bool:
    """Let go of a record Redis has not taken: the stuck-work sweep queues it from the
    database, the next receiver started on this host queues it from the spool
    (ingest/spool.py), or it is lost, said at ERROR with its event id (then True).
    ``write``: try the database once more first. Once per record (the exit watchdog
    may race an exit)."""
    with _SETTLING:
        if held.settled:
            return False
        held.settled = True
    if held.shelved or (write and _shelved(held)):
        log.warning(
            "inline event left to the stuck-work sweep",
            extra={"event_id": held.record.event_id, "reason": why},
        )
        return False
    if held.record.spooled is not None:
        log.warning(
            "inline event left in the spool",
            extra={
                "event_id": held.record.event_id,
                "reason": why,
                "path": str(held.record.spooled),
            },
        )
        return False
    log.error("inline event not recorded", extra={"event_id": held.record.event_id, "reason": why})
    return True


def _unconfirmed(held: _Held) -> bool:
    """Name a record whose database write was in flight when the exit window ran out:
    the row may have landed (then the stuck-work sweep queues it) or not. ERROR, for
    the operator to check the event id, but not the "not recorded" of a certain loss.
    True unless named already."""
    with _SETTLING:
        if held.settled:
            return False
        held.settled = True
    log.error(
        "inline event record unconfirmed",
        extra={
            "event_id": held.record.event_id,
            "reason": "its database write was in flight when the exit window ran out",
        },
    )
    return True


_SETTLING = threading.Lock()


def shelve(database_url: str, messages: list[str]) -> int:
    """Keep ``messages`` in the database on the late records' own connections
    (ingest/shelved_events.py ``LATE``, opened at boot), never the calls' writers'."""
    return shelved_events.shelve(database_url, messages, shelved_events.LATE)


def _flush_logs() -> None:
    """Flush every handler of every logger: ``os._exit`` skips logging's own flush."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            try:
                handler.flush()
            except Exception:  # noqa: BLE001, S112 (a broken handler must not stop the exit)
                continue


_LATE = PerProcess(LateRecords)


def late_records() -> LateRecords:
    """This process's :class:`LateRecords` (a forked worker has its own)."""
    return _LATE.get()

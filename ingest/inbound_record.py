"""An answered inbound call's record, made durable before its answer leaves.

A Retell ``call_inbound`` waits for our answer, and no retry follows one: a call whose
record was still only in the receiver's memory when the answer left was lost with no
trace if the receiver was killed then (SIGKILL, the OOM killer). An outsider lost 3 of
20 answered calls so, killing a worker 1 s into a Redis freeze: each record waited the
2 s Redis timeout after its answer. So :meth:`InboundRecorder.record` runs between the
lookup and the answer, and says where the record went:

1. Redis (claim + enqueue, ingest/dedup.py ``DedupGate.admit``) on a client of its own
   whose connects and commands give up after :func:`record_timeout_s` (the lookup
   cache's bound: a quarter of ``HOOKFLEET_INBOUND_BUDGET_MS``), skipped at once while
   ``RedisWatch`` knows Redis unwell (ingest/redis_watch.py); a failure there starts the
   skipping for the lookups too;
2. else the database: the ``received`` ``webhook_events`` row of ingest/shelved_events.py,
   waited for :data:`DATABASE_BOUND_S` at most; the record is then also handed to
   ``LateRecords`` (ingest/late_records.py), which queues it once Redis takes it, and the
   stuck-work sweep queues the row if the receiver is gone by then;
3. else this host's disk (ingest/spool.py: one file, ``fsync``-ed, a few milliseconds),
   handed to ``LateRecords`` as before, which deletes the file once Redis or the
   database took the record; what an exit or a kill leaves there is queued by the next
   receiver started on this host (:meth:`InboundRecorder.warm` adopts it);
4. else (the disk refused it too) nowhere: the answer goes anyway (a ringing phone must
   be answered), the record is handed to ``LateRecords`` as before, and an ERROR names
   the event: a kill before ``LateRecords`` writes it loses it.

The database write takes at most what is left of the call's deadline, counted from its
arrival (ingest/call_deadline.py), and is skipped when that no longer fits; the Redis
try is made whatever is left (at most :func:`record_timeout_s`, 75 ms: a record queued
before the answer is worth that much of a call that already waited); the database writes
are skipped for a while after one was slow (half its bound) or failed
(:class:`DatabaseWatch`),
as Redis is after a failure or a slow reply (ingest/redis_watch.py): a slow database or
Redis costs the records their durability before the answer, not the callers their
answer.

Never waits for Redis replicas and spends no rate-limit token (``confirm=False``, no
``rate_limit``): the answer must not depend on either. Idempotent: the dedup key and
the row's UNIQUE ``(provider, event_id)`` make a try that reached Redis unseen, a row
the late record or the sweep also queues, or a write that finished after its bound
apply once.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import copy_context
from pathlib import Path
from typing import TYPE_CHECKING

import pybreaker
import redis
from sqlalchemy.exc import SQLAlchemyError

from ingest.call_deadline import TOO_LITTLE_S, CallDeadline
from ingest.dedup import DedupGate
from ingest.inbound import bounded_client, cache_timeout_s
from ingest.late_records import RETRY_FOR_S, LateRecord, late_records
from ingest.redis_watch import RedisWatch
from ingest.shelved_events import CALLS, LATE, shelve, warm
from ingest.spool import Spool, SpooledRecord
from models import tracing
from models.perprocess import PerProcess
from models.settings import Settings

if TYPE_CHECKING:
    from ingest.views import Job

log = logging.getLogger("hookfleet.ingest")

#: Seconds an answer waits for its record's database write (after Redis refused it):
#: a healthy database takes milliseconds; a frozen one must not hold the phone.
DATABASE_BOUND_S = 1.0
#: Seconds a worker waits, before accepting calls, for its records' Redis connection.
WARM_REDIS_S = 0.5
#: Pause between tries of the records' database warm-up (seconds, doubling up to the
#: second) until the connection opens.
WARM_RETRY_S = (1.0, 30.0)
#: Seconds between looks for spool directories of receivers gone from this host
#: (ingest/spool.py): a reload (SIGHUP) starts the new workers before the old ones
#: leave, so what those leave is taken by a later look, not a boot.
ADOPT_EVERY_S = 30.0
#: Threads per process writing records to the database before their answers.
WRITERS = 4
#: Seconds the database writes are skipped after a slow (:data:`SLOW_WRITE_S`) or failed
#: one: a slow database must not hold every call's thread for the write's bound.
DATABASE_SKIP_S = 5.0
#: A record write slower than this (seconds, from its hand-over to the writers) is slow:
#: each call it held cost its thread that long, besides the lookup.
SLOW_WRITE_S = DATABASE_BOUND_S / 2


class Kept(enum.Enum):
    """Where an answered call's record was when its answer left."""

    REDIS = "redis"  # claimed and queued
    DATABASE = "database"  # a ``received`` row; queued later by LateRecords or the sweep
    SPOOL = "spool"  # a file on this host's disk (ingest/spool.py); queued by LateRecords
    NOWHERE = "nowhere"  # only in this process's LateRecords: a kill loses it


def answer_bound_s(settings: Settings) -> float:
    """Seconds from a call's arrival to its answer (ingest/call_deadline.py): the
    lookup's budget + the record's Redis bound + :data:`DATABASE_BOUND_S`."""
    return settings.inbound_budget_ms / 1000 + record_timeout_s(settings) + DATABASE_BOUND_S


def record_timeout_s(settings: Settings) -> float:
    """Seconds the record's Redis connect and each command may take: the lookup cache's
    bound (ingest/inbound.py ``cache_timeout_s``), never the 2 s Redis timeout that a
    frozen Redis held every record for."""
    return cache_timeout_s(settings)


class DatabaseWatch:
    """Whether this process's record writes were slow (:data:`SLOW_WRITE_S`, a call
    gave up on one after waiting that long, or one failed) moments ago: then the writes
    are skipped for :data:`DATABASE_SKIP_S`, after which one call tries again while the
    others keep skipping for that try's bound. An outsider's
    database 400 ms away took over a second per write: every call held its thread
    for the whole bound, 8 threads carried 6 calls/s, and at 15 calls/s the answers
    queued to 12 s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._unwell = False

    def may_write(self) -> bool:
        """False while writes are skipped; True lets this call write (the trial)."""
        with self._lock:
            now = time.monotonic()
            if now < self._skip_until:
                return False
            if self._unwell:
                self._skip_until = now + DATABASE_BOUND_S  # the others wait for the trial
            return True

    def finished(self, took_s: float, failed: bool) -> None:
        """A write ended ``took_s`` seconds after it was handed to the writers."""
        with self._lock:
            if failed or took_s > SLOW_WRITE_S:
                if not self._unwell:
                    log.warning(
                        "inbound record writes skipped: the database was slow",
                        extra={"ms": round(took_s * 1000), "skip_s": DATABASE_SKIP_S},
                    )
                self._unwell = True
                self._skip_until = time.monotonic() + DATABASE_SKIP_S
            elif self._unwell:
                self._unwell = False
                self._skip_until = 0.0


class InboundRecorder:
    """Makes inline answers' records durable (see the module docstring); per app."""

    def __init__(self, settings: Settings, watch: RedisWatch, gate: DedupGate) -> None:
        """``gate``: the receiver's own (its Redis timeout), for the background tries of
        a record Redis did not take before the answer (ingest/late_records.py)."""
        self._late_gate = gate
        timeout_s = record_timeout_s(settings)
        dedup = bounded_client(settings.redis_url, timeout_s)
        broker = (
            dedup if settings.dedup_on_broker else bounded_client(settings.broker_url, timeout_s)
        )
        self._gate = DedupGate(dedup, broker, same_server=settings.dedup_on_broker)
        self._dedup = dedup
        self._watch = watch
        self._database_url = settings.database_url
        self._try_bound_s = timeout_s  # the warm-up's ping: each try bounded by it
        self._writers = PerProcess(
            lambda: ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="inbound-record")
        )
        self._database = PerProcess(DatabaseWatch)
        self._spool = PerProcess(lambda: Spool(settings.var_dir, settings.database_url))

    def warm(self, wait_s: float = WARM_REDIS_S) -> None:
        """Before the worker accepts calls: open this process's Redis connection for the
        records, waited for ``wait_s`` at most (tries each bounded by
        :func:`record_timeout_s`); and start opening its database connection for the
        rows in a thread of its own, tried again until it opens (its first-connect cost
        would exceed :data:`DATABASE_BOUND_S` on a loaded machine; a slow database holds
        no call: an outsider's first calls after a restart waited 4 s behind a warm-up).
        An outsider's first 37 records after a worker respawn, Redis and database healthy,
        were held in memory only: their connect to Redis, on the just-forked worker of a
        loaded box, overran the record's bound. Never raises; a failure is a warning
        (a record meanwhile dials, as before)."""
        writers = self._writers.get()
        self.adopt_spool()
        self.warn_of_strays()
        threading.Thread(
            target=copy_context().run, args=(self._adopt_every,), name="spool-adopt", daemon=True
        ).start()
        # Threads of their own: their retries must not hold a writer of the calls' records.
        for lane in (CALLS, LATE):
            threading.Thread(
                target=copy_context().run,
                args=(self._warm_database, lane),
                name=f"inbound-record-warm-{lane}",
                daemon=True,
            ).start()
        pinged = writers.submit(copy_context().run, self._ping_until, time.monotonic() + wait_s)
        try:
            pinged.result(timeout=wait_s + self._try_bound_s)
        except FutureTimeout:
            pass  # logged by the ping when it gives up
        except Exception as error:  # noqa: BLE001 (best effort: the calls still work)
            log.warning("inbound record warm-up failed", extra={"error": type(error).__name__})

    def adopt_spool(self) -> int:
        """Hand the records that receivers gone from this host left in the spool
        (ingest/spool.py) to this process's late records, which queue them (or keep
        them in the database) as any other; returns how many. Never raises: a spool
        that cannot be read is logged at ERROR (its records stay on disk)."""
        try:
            taken = self._spool.get().adopt()
        except OSError as error:
            log.error("could not read the spool", extra={"error": str(error)})
            return 0
        for path, spooled in taken:
            late_records().keep(
                LateRecord(
                    self._late_attempt(spooled),
                    spooled.event_id,
                    time.monotonic(),
                    spooled.message,
                    self._database_url,
                    spooled=path,
                )
            )
        if taken:
            log.warning(
                "queueing answered calls' records a former receiver left in the spool",
                extra={"records": len(taken), "spool": str(self._spool.get().root)},
            )
        return len(taken)

    def warn_of_strays(self) -> None:
        """A WARNING for each other database URL whose spool on this host holds records
        of gone receivers (``Spool.strays``): a receiver adopts only its own URL's, as
        spelled, so a changed spelling (``localhost`` for ``127.0.0.1``, a query
        option) leaves them there. Never raises."""
        try:
            strays = self._spool.get().strays()
        except OSError as error:
            log.error("could not read the spool", extra={"error": str(error)})
            return
        for url, records in strays:
            log.warning(
                "answered calls' records wait in the spool of another database URL: start "
                "a receiver with that URL, or run `hookfleet spool --to-database` with it",
                extra={"records": records, "database_url": url},
            )

    def _adopt_every(self) -> None:
        while True:
            time.sleep(ADOPT_EVERY_S)
            self.adopt_spool()

    def _late_attempt(self, spooled: SpooledRecord) -> Callable[[], None]:
        def attempt() -> None:
            self._late_gate.admit(
                spooled.dedup_key,
                spooled.correlation_id,
                spooled.ttl_s,
                spooled.queue,
                spooled.message,
                confirm=False,
            )

        return attempt

    def _ping_until(self, until: float) -> None:
        # Not through the watch: a slow first connect of a just-forked worker is not a
        # failure of Redis (it would count towards skipping Redis for every call).
        while True:
            try:
                self._dedup.ping()
                return
            except redis.RedisError as failed:
                error = failed
            if time.monotonic() >= until:
                break
            time.sleep(0.02)  # a refused connect fails at once: no busy loop
        log.warning(
            "inbound record warm-up failed",
            extra={"error": type(error).__name__, "of": "redis"},
        )

    def _warm_database(self, lane: str) -> None:
        """Open ``lane``'s connection for the rows (ingest/shelved_events.py: the calls'
        writers', the late records'), tried again with backoff (:data:`WARM_RETRY_S`)
        until it opens: an outsider's warm-up failed once at boot (a database 1 s away
        on a loaded box) and was not retried, so the records of an exit's last calls
        dialled afresh (15-17 s a write there, 5 s on an open connection) and missed
        the window."""
        started = time.monotonic()
        pause = WARM_RETRY_S[0]
        while True:
            try:
                warm(self._database_url, lane)
            except SQLAlchemyError as error:
                log.warning(
                    "inbound record warm-up failed",
                    extra={"error": type(error).__name__, "of": lane, "retry_in_s": pause},
                )
            else:
                log.info(
                    "inbound record database connection open",
                    extra={"of": lane, "took_s": round(time.monotonic() - started, 1)},
                )
                return
            time.sleep(pause)
            pause = min(pause * 2, WARM_RETRY_S[1])

    def record(
        self,
        job: Job,
        correlation_id: str,
        span_attributes: dict[str, str] | None,
        deadline: CallDeadline,
    ) -> Kept:
        """Queue ``job`` (claim its dedup key, push its message) or keep it in the
        database, within about :func:`record_timeout_s` + :data:`DATABASE_BOUND_S` and
        never past ``deadline`` (a step that no longer fits is skipped); never raises.
        ``span_attributes``: the claim span's (None: tracing off)."""
        event_id = job.event_id

        spooled = SpooledRecord(
            event_id, job.dedup_key, correlation_id, job.ttl_s, job.queue, job.message
        )

        def attempt() -> None:
            self._gate.admit(
                job.dedup_key, correlation_id, job.ttl_s, job.queue, job.message, confirm=False
            )

        started = time.monotonic()
        with tracing.span("hookfleet.claim_and_enqueue", attributes=span_attributes) as span:
            refusal = self._queue(attempt)
            if refusal is None:
                return Kept.REDIS
            tracing.record_error(span, refusal)
            in_database = self._keep_in_database(job.message, deadline)
            log.warning(
                "could not record inline event",
                extra={
                    "error": type(refusal).__name__,
                    "event_id": event_id,
                    "kept_in_database": in_database,
                    "retry_for_s": RETRY_FOR_S,
                },
            )
        path = None if in_database else self._keep_on_disk(spooled)
        late_records().keep(
            LateRecord(
                self._late_attempt(spooled),
                event_id,
                started,
                job.message,
                self._database_url,
                spooled=path,
            ),
            shelved=in_database,
        )
        if in_database:
            return Kept.DATABASE
        return Kept.SPOOL if path is not None else Kept.NOWHERE

    def _keep_on_disk(self, spooled: SpooledRecord) -> Path | None:
        """The record's spool file (ingest/spool.py), or None (logged at ERROR: the
        call is answered with its record in this process's memory only)."""
        try:
            return self._spool.get().put(spooled)
        except OSError as error:
            log.error(
                "inline event answered before it was recorded",
                extra={"event_id": spooled.event_id, "error": str(error)},
            )
            return None

    def _queue(self, attempt: Callable[[], None]) -> Exception | None:
        """None once Redis took the record; else what refused it. Tried even when the
        call's deadline has passed (it waited for a thread, or to be accepted:
        ingest/accept_queue.py): the try is bounded (:func:`record_timeout_s`, 75 ms),
        the answer leaves that much later at most, far inside Retell's 10 s, and the
        record is durable before it instead of held in memory only."""
        try:
            if self._watch.known_unwell():
                # Redis failed on the inbound path moments ago: not tried, the database
                # takes the record at once.
                raise pybreaker.CircuitBreakerError("Redis failed moments ago: not tried")
            self._watch.call(attempt)
        except (redis.RedisError, pybreaker.CircuitBreakerError) as error:
            return error
        except Exception as error:  # noqa: BLE001 (a ringing phone must get its answer)
            log.error("inline event try failed", extra={"error": type(error).__name__})
            return error
        return None

    def _keep_in_database(self, message: str, deadline: CallDeadline) -> bool:
        """The ``received`` row written within :data:`DATABASE_BOUND_S` and the call's
        deadline; False if not, or if writes are being skipped (:class:`DatabaseWatch`);
        a write still running then may finish later: the row is UNIQUE."""
        bound_s = deadline.within(DATABASE_BOUND_S)
        watch = self._database.get()
        if bound_s < TOO_LITTLE_S or not watch.may_write():
            return False
        submitted = time.monotonic()
        future = self._writers.get().submit(
            copy_context().run, shelve, self._database_url, [message]
        )
        future.add_done_callback(lambda done: _tell(watch, done, time.monotonic() - submitted))
        try:
            future.result(timeout=bound_s)
        except FutureTimeout:
            future.cancel()  # not started yet: LateRecords writes it instead
            if bound_s >= SLOW_WRITE_S:
                # Slow now, not once it ends: the writes queued behind it would each
                # hold a call for its whole bound until then (seconds).
                watch.finished(bound_s, failed=True)
            return False
        except (SQLAlchemyError, ValueError):
            return False
        except Exception as error:  # noqa: BLE001 (a ringing phone must get its answer)
            log.error("inline event write failed", extra={"error": type(error).__name__})
            return False
        return True


def _tell(watch: DatabaseWatch, done: Future[int], took_s: float) -> None:
    """Tell ``watch`` how a record's write went (cancelled: it never ran)."""
    if not done.cancelled():
        watch.finished(took_s, failed=isinstance(done.exception(), SQLAlchemyError))

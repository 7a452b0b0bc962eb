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
3. else nowhere in time: the answer goes anyway (a ringing phone must be answered), the
   record is handed to ``LateRecords`` as before, and an ERROR names the event: a kill
   before ``LateRecords`` writes it loses it.

Never waits for Redis replicas and spends no rate-limit token (``confirm=False``, no
``rate_limit``): the answer must not depend on either. Idempotent: the dedup key and
the row's UNIQUE ``(provider, event_id)`` make a try that reached Redis unseen, a row
the late record or the sweep also queues, or a write that finished after its bound
apply once.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import copy_context
from typing import TYPE_CHECKING

import pybreaker
import redis
from sqlalchemy.exc import SQLAlchemyError

from ingest.dedup import DedupGate
from ingest.inbound import bounded_client, cache_timeout_s
from ingest.late_records import RETRY_FOR_S, LateRecord, late_records
from ingest.redis_watch import RedisWatch
from ingest.shelved_events import shelve, warm
from models import tracing
from models.perprocess import PerProcess
from models.settings import Settings

if TYPE_CHECKING:
    from ingest.views import Job

log = logging.getLogger("hookfleet.ingest")

#: Seconds an answer waits for its record's database write (after Redis refused it):
#: a healthy database takes milliseconds; a frozen one must not hold the phone.
DATABASE_BOUND_S = 1.0
#: Threads per process writing records to the database before their answers.
WRITERS = 4


class Kept(enum.Enum):
    """Where an answered call's record was when its answer left."""

    REDIS = "redis"  # claimed and queued
    DATABASE = "database"  # a ``received`` row; queued later by LateRecords or the sweep
    NOWHERE = "nowhere"  # only in this process's LateRecords: a kill loses it


def record_timeout_s(settings: Settings) -> float:
    """Seconds the record's Redis connect and each command may take: the lookup cache's
    bound (ingest/inbound.py ``cache_timeout_s``), never the 2 s Redis timeout that a
    frozen Redis held every record for."""
    return cache_timeout_s(settings)


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
        self._watch = watch
        self._database_url = settings.database_url
        self._writers = PerProcess(
            lambda: ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="inbound-record")
        )

    def warm(self, wait_s: float = 5.0) -> None:
        """Open this process's database connection for the rows before the first call
        needs it (its first-connect cost would exceed :data:`DATABASE_BOUND_S` on a
        loaded machine), waiting at most ``wait_s`` seconds. Never raises; a failure is
        one warning (the first record kept there then dials, as before)."""
        future = self._writers.get().submit(copy_context().run, warm, self._database_url)
        try:
            future.result(timeout=wait_s)
        except FutureTimeout:
            log.warning("inbound record warm-up still running", extra={"wait_s": wait_s})
        except SQLAlchemyError as error:
            log.warning("inbound record warm-up failed", extra={"error": type(error).__name__})

    def record(self, job: Job, correlation_id: str, span_attributes: dict[str, str] | None) -> Kept:
        """Queue ``job`` (claim its dedup key, push its message) or keep it in the
        database, within about :func:`record_timeout_s` + :data:`DATABASE_BOUND_S`;
        never raises. ``span_attributes``: the claim span's (None: tracing off)."""
        event_id = job.event_id

        def attempt(gate: DedupGate = self._gate) -> None:
            gate.admit(
                job.dedup_key, correlation_id, job.ttl_s, job.queue, job.message, confirm=False
            )

        def attempt_late() -> None:
            attempt(self._late_gate)

        started = time.monotonic()
        with tracing.span("hookfleet.claim_and_enqueue", attributes=span_attributes) as span:
            refusal = self._queue(attempt)
            if refusal is None:
                return Kept.REDIS
            tracing.record_error(span, refusal)
            in_database = self._keep_in_database(job.message)
            log.warning(
                "could not record inline event",
                extra={
                    "error": type(refusal).__name__,
                    "event_id": event_id,
                    "kept_in_database": in_database,
                    "retry_for_s": RETRY_FOR_S,
                },
            )
        if not in_database:
            log.error("inline event answered before it was recorded", extra={"event_id": event_id})
        late_records().keep(
            LateRecord(attempt_late, event_id, started, job.message, self._database_url),
            shelved=in_database,
        )
        return Kept.DATABASE if in_database else Kept.NOWHERE

    def _queue(self, attempt: Callable[[], None]) -> Exception | None:
        """None once Redis took the record; else what refused it."""
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

    def _keep_in_database(self, message: str) -> bool:
        """The ``received`` row written within :data:`DATABASE_BOUND_S`; False if not
        (a write still running then may finish later: the row is UNIQUE)."""
        future = self._writers.get().submit(
            copy_context().run, shelve, self._database_url, [message]
        )
        try:
            future.result(timeout=DATABASE_BOUND_S)
        except FutureTimeout:
            future.cancel()  # not started yet: LateRecords writes it instead
            return False
        except (SQLAlchemyError, ValueError):
            return False
        except Exception as error:  # noqa: BLE001 (a ringing phone must get its answer)
            log.error("inline event write failed", extra={"error": type(error).__name__})
            return False
        return True

"""Who answers a dialled number: the receiver's one synchronous database lookup.

A caller's phone rings while Retell waits for our answer, so :meth:`InboundDirectory.find`
never fails and never waits past its budget: on a timeout, an unknown number or any
error it returns None, and the provider answers without an override (Retell then uses
the number's default agent). Answers are cached in the process and in Redis.

The Redis cache never costs a lookup its budget: its reads and writes give up after
:func:`cache_timeout_s` (a quarter of the budget), and after a failure or timeout the
process skips it for a while (ingest/redis_watch.py) and asks the database alone, as
with a Redis that is down. A frozen Redis (SIGSTOP: connections accepted, nothing
answered) used to hold each of the four lookup threads for the client's 2 s socket
timeout, past every call's budget, so calls got the fallback answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for
from contextvars import copy_context
from dataclasses import asdict, dataclass
from time import monotonic
from typing import Any

import pybreaker
import redis
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import DBAPIError

from ingest import call_deadline
from ingest.redis_watch import RedisWatch
from models.broker.redis_links import redis_client
from models.business import Branch, Company
from models.engine import make_engine
from models.perprocess import PerProcess
from models.phones import normalize_phone
from models.settings import Settings

log = logging.getLogger("hookfleet.ingest.inbound")

REDIS_PREFIX = "hookfleet:inbound:"
LOCAL_ENTRIES = 4096
# An unknown number is remembered briefly, so a branch added a moment ago is found soon.
UNKNOWN_TTL_S = 10
_MISS = object()


# Lookups running at once per process; each has a pooled connection of its own.
LOOKUP_THREADS = 4
# The lookup: the active branch that owns a number, with its company, in one statement.
_LOOKUP = (
    select(
        Company.id,
        Company.name,
        Branch.id,
        Branch.name,
        Branch.retell_agent_id,
        Branch.timezone,
    )
    .join(Company, Branch.company_id == Company.id)
    .where(Branch.phone == bindparam("phone"), Branch.is_active.is_(True))
    .order_by(Branch.id)
    .limit(1)
)


def cache_timeout_s(settings: Settings) -> float:
    """Seconds a cache read or write may take: a quarter of the lookup's budget (the
    database query needs the rest), never more than the Redis timeout."""
    return max(0.01, min(settings.inbound_budget_ms / 4000, settings.redis_timeout_s))


def cache_client(settings: Settings) -> redis.Redis:
    """A client for the lookup's Redis cache (``settings.redis_url``) whose commands
    and connects give up after :func:`cache_timeout_s`, whatever timeout the URL's
    query sets for the claims."""
    return bounded_client(settings.redis_url, cache_timeout_s(settings))


def bounded_client(url: str, timeout_s: float) -> redis.Redis:
    """A client for ``url`` whose commands and connects give up after ``timeout_s``
    seconds, whatever timeout the URL's query sets."""
    client = redis_client(url, timeout_s=timeout_s)
    client.connection_pool.connection_kwargs.update(
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    return client


@dataclass(frozen=True)
class BranchContact:
    """What an inbound answer needs about the branch that owns a number."""

    company_id: int
    company_name: str
    branch_id: int
    branch_name: str
    agent_id: str | None
    timezone: str


class InboundDirectory:
    """Dialled number → active branch, cached, within ``settings.inbound_budget_ms``."""

    def __init__(self, settings: Settings, cache: redis.Redis) -> None:
        self._settings = settings
        self._cache = cache
        self._budget_s = settings.inbound_budget_ms / 1000
        self._local: OrderedDict[str, tuple[float, BranchContact | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._resources = PerProcess(self._connect)
        self._cache_wait_s = cache_timeout_s(settings)
        self._cache_threads = PerProcess(
            lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="inbound-cache")
        )
        # Whether Redis failed this path just now (also asked by the call's record).
        self.redis = RedisWatch(slow_s=cache_timeout_s(settings) / 2)

    def find(self, number: str) -> BranchContact | None:
        """The branch for ``number`` (any spelling); None when unknown or not in time."""
        phone = normalize_phone(number, self._settings.phone_regions)
        if not phone.valid:
            return None
        cached = self._local_get(phone.value)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        deadline = call_deadline.current()
        budget_s = self._budget_s if deadline is None else deadline.within(self._budget_s)
        if budget_s < call_deadline.TOO_LITTLE_S:
            # The call waited for a thread past its answer's deadline: answered unrouted
            # now rather than later (ingest/call_deadline.py).
            log.warning("inbound lookup skipped: the call's deadline passed")
            return None
        started = monotonic()
        # The lookup thread runs in this request's context (contextvars): its statement
        # spans are children of the request span, its log lines carry the delivery's ids.
        future = self._executor().submit(copy_context().run, self._lookup, phone.value)
        try:
            contact = future.result(timeout=budget_s)
        except FutureTimeout:
            # Not started yet (the lookup threads busy with a slow database): dropped,
            # so lookups nobody waits for any more do not pile up ahead of new ones.
            future.cancel()
            log.warning("inbound lookup over budget", extra={"budget_ms": budget_s * 1000})
            return None
        except Exception as error:  # noqa: BLE001 (the phone must never ring into an error)
            log.error("inbound lookup failed", extra={"error": type(error).__name__})
            return None
        log.debug("inbound lookup", extra={"ms": round((monotonic() - started) * 1000, 2)})
        self._local_put(phone.value, contact)
        return contact

    def warm(self, wait_s: float = 5.0) -> bool:
        """Open every lookup connection of this process (one per lookup thread, at once)
        and the Redis cache's, and run the lookup on each, waiting at most ``wait_s``
        seconds: a call after a (re)start would otherwise pay for a connection's
        handshake (several round trips: with the database 50 ms away, the first calls
        missed their 300 ms budget) and the statement's compilation. What is not done
        within ``wait_s`` goes on in the background. Never raises; a failure is one
        warning (a call then dials, as before). True when all were opened in time."""
        threads = self._executor()
        # Held together until all are open, so each lookup thread warms a connection
        # of its own (the pool would hand one back and forth otherwise).
        together = threading.Barrier(LOOKUP_THREADS)
        # In the caller's context: a warm-up run untraced (models.tracing.untraced) makes
        # no statement span in the lookup threads either.
        warming = [
            threads.submit(copy_context().run, self._warm_one, together, wait_s)
            for _ in range(LOOKUP_THREADS)
        ]
        # The cache's connection too: its handshake is several round trips, which a
        # slow Redis made a first lookup's cache read pay (and a reply that slow starts
        # the skipping now, not on a call).
        self._cache_threads.get().submit(copy_context().run, self._cached, self._cache.ping)
        done, running = wait_for(warming, timeout=wait_s)
        # The connections opened by now go back to the pool for the calls; one still
        # dialling finishes in the background (a thread each, not all four).
        together.abort()
        failures = [type(f.exception()).__name__ for f in done if f.exception() is not None]
        if failures:
            log.warning("inbound lookup warm-up failed", extra={"error": failures[0]})
        if running:
            log.warning("inbound lookup warm-up still running", extra={"wait_s": wait_s})
        return not failures and not running

    def _warm_one(self, together: threading.Barrier, wait_s: float) -> None:
        with self._db().connect() as connection:
            # A number no branch has: the connection and the plan only.
            connection.execute(_LOOKUP, {"phone": "+0"}).first()
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(timeout=wait_s)

    def _lookup(self, e164: str) -> BranchContact | None:
        key = REDIS_PREFIX + e164
        raw = self._cache_read(key)
        if raw is not None:
            data = json.loads(raw)
            return None if data is None else BranchContact(**data)
        contact = self._query(e164)
        # The cache is an optimisation; the answer stands without it, and does not
        # wait for its write.
        ttl = self._settings.inbound_cache_ttl_s if contact else UNKNOWN_TTL_S
        value = json.dumps(contact and asdict(contact))
        self._cache_threads.get().submit(
            copy_context().run, self._cached, lambda: self._cache.set(key, value, ex=ttl)
        )
        return contact

    def _cache_read(self, key: str) -> Any:
        """The cached entry for ``key``, waited for :func:`cache_timeout_s` in all: a
        Redis slow to reply, each command under the client's give-up, still took a
        fresh connection's handshake and the read together past a call's budget
        (misrouted calls: the database was asked too late). A read still running goes
        on alone; its slow reply starts the skipping (ingest/redis_watch.py)."""
        future = self._cache_threads.get().submit(
            copy_context().run, self._cached, lambda: self._cache.get(key)
        )
        try:
            return future.result(timeout=self._cache_wait_s)
        except FutureTimeout:
            future.cancel()
            return None

    def _cached(self, command: Callable[[], Any]) -> Any:
        """``command()`` on the Redis cache, None when it fails, times out or Redis is
        being skipped (ingest/redis_watch.py)."""
        try:
            return self.redis.call(command, lookup=True)
        except (redis.RedisError, pybreaker.CircuitBreakerError):
            return None

    def _query(self, e164: str) -> BranchContact | None:
        """The active branch owning ``e164`` and its company: one statement (a join) on
        a pooled connection, one round trip to the database (no ping before it, no
        rollback after it: ``autocommit_reads``, :meth:`_connect`). A connection the
        database dropped since (a restart, its ``wait_timeout``) fails the statement
        at once; SQLAlchemy then drops the pool's older connections and the statement
        is sent once more on a new one, if the call's deadline leaves time."""
        try:
            return self._query_once(e164)
        except DBAPIError as error:
            deadline = call_deadline.current()
            if not error.connection_invalidated or (
                deadline is not None and deadline.left_s() < call_deadline.TOO_LITTLE_S
            ):
                raise
            return self._query_once(e164)

    def _query_once(self, e164: str) -> BranchContact | None:
        with self._db().connect() as connection:
            row = connection.execute(_LOOKUP, {"phone": e164}).first()
        if row is None:
            return None
        return BranchContact(*row)

    def _local_get(self, e164: str) -> BranchContact | object | None:
        with self._lock:
            entry = self._local.get(e164)
            if entry is None:
                return _MISS
            expires, contact = entry
            if expires < monotonic():
                del self._local[e164]
                return _MISS
            self._local.move_to_end(e164)
            return contact

    def _local_put(self, e164: str, contact: BranchContact | None) -> None:
        # The in-process entry lives briefly: the Redis entry is the one that is shared.
        ttl = min(5, self._settings.inbound_cache_ttl_s) if contact else UNKNOWN_TTL_S / 2
        with self._lock:
            self._local[e164] = (monotonic() + ttl, contact)
            self._local.move_to_end(e164)
            while len(self._local) > LOCAL_ENTRIES:
                self._local.popitem(last=False)

    def _executor(self) -> ThreadPoolExecutor:
        return self._resources.get()[1]

    def _db(self) -> Engine:
        return self._resources.get()[0]

    def _connect(self) -> tuple[Engine, ThreadPoolExecutor]:
        """The lookup threads and a pool of one connection each, kept (the overflow a
        pool of two had was closed after each use, so a burst of calls dialled anew),
        with short timeouts and no ping: per process."""
        small = Settings(
            database_url=self._settings.database_url,
            db_pool_size=LOOKUP_THREADS,
            db_max_overflow=0,
            db_pool_timeout_s=self._budget_s,
            db_pool_recycle_s=self._settings.db_pool_recycle_s,
            db_pool_pre_ping=False,  # a round trip per lookup; see _query for the rest
        )
        engine = make_engine(small, io_timeout_s=1, autocommit_reads=True)
        threads = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="inbound")
        return engine, threads

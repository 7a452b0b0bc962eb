"""Which failures are worth another try, and how the tries are spaced.

One explicit list: a failure is *transient* when the same work may succeed a moment
later unchanged (the database went away, was busy, or another worker won a race);
everything else is *permanent* and is never retried — the event is marked failed with
the reason and its payload kept for a replay once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

# billiard's (Celery's process pool) own class, which celery.exceptions re-exports: the
# record's retry rules name the time-limit error without importing Celery.
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Select, select
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, undefer
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

T = TypeVar("T")
S = TypeVar("S", bound=Select[Any])

# MariaDB/MySQL error numbers that mean "try again": 1205 lock wait timeout, 1213
# deadlock, 1040 too many connections, 1053 server shutting down, 1927 connection
# killed, 2002/2003 cannot connect, 2006 server has gone away, 2013 lost connection
# during query, 2014/2055 connection out of sync or lost.
TRANSIENT_MYSQL_ERRORS = frozenset(
    {1205, 1213, 1040, 1053, 1927, 2002, 2003, 2006, 2013, 2014, 2055}
)
# SQLite's only transient failure: another writer holds the lock past the busy timeout.
TRANSIENT_SQLITE_MESSAGES = ("database is locked", "database table is locked")


class PermanentError(Exception):
    """The event cannot be applied as it is (e.g. a payload that cannot be mapped).
    Retrying would fail the same way: mark it failed, keep the payload."""


class RaceLost(Exception):
    """Another worker inserted the same natural key first; rerun and find its row."""


def is_transient(error: BaseException) -> bool:
    """True for failures that may succeed if the same work is tried again."""
    if isinstance(error, RaceLost | PoolTimeout | DisconnectionError | SoftTimeLimitExceeded):
        # A task past its soft time limit (e.g. stuck behind a lock) was rolled back;
        # it is tried again later, on a fresh message, not within the same task.
        return True
    if isinstance(error, ObjectDeletedError | StaleDataError):
        # A row this transaction locked is missing from its own snapshot (MariaDB's
        # REPEATABLE READ: a row committed after the transaction's first plain read is
        # seen by a locking read but not by a later plain one), or changed under it.
        # The same event in a new transaction reads the row as it is: a race, not a
        # fault of the event (see ``locked``).
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        args = getattr(error.orig, "args", ())
        if args and isinstance(args[0], int):
            return args[0] in TRANSIENT_MYSQL_ERRORS
        message = str(error.orig).lower()
        return any(text in message for text in TRANSIENT_SQLITE_MESSAGES)
    return False


def is_lock_wait_timeout(error: BaseException) -> bool:
    """MariaDB's 1205: a row lock was held elsewhere past ``innodb_lock_wait_timeout``."""
    args: tuple[Any, ...] = tuple(getattr(getattr(error, "orig", None), "args", ()))
    return isinstance(error, DBAPIError) and bool(args) and args[0] == 1205


def _retry_in_task(error: BaseException) -> bool:
    # Past the soft time limit there is no time left in this task: hand over to Celery.
    # A row lock held past the lock wait is held by a slow or frozen transaction (a
    # worker stopped inside it): waiting again here would hold the pool process and the
    # rest of the batch; the event is retried later, on a fresh message, instead.
    return (
        is_transient(error)
        and not isinstance(error, SoftTimeLimitExceeded)
        and not is_lock_wait_timeout(error)
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Quick retries inside the task: exponential backoff with jitter, bounded.

    What survives these goes back to Celery, which retries with longer countdowns
    (``workers.pipeline.tasks``), so a database down for minutes holds no worker process.
    """

    attempts: int = 4
    initial_s: float = 0.2
    max_wait_s: float = 3.0
    # No new try starts after this long: leave the rest of the task's time to Celery.
    within_s: float = 60.0

    def call(self, work: Callable[[], T]) -> T:
        # Up to initial_s of jitter, so workers that failed together do not retry together.
        tries = retrying(
            attempts=self.attempts,
            initial_s=self.initial_s,
            max_wait_s=self.max_wait_s,
            within_s=self.within_s,
            jitter_s=self.initial_s,
            retry_when=_retry_in_task,
        )
        return tries(work)


def retrying(
    *,
    attempts: int,
    initial_s: float,
    max_wait_s: float,
    retry_when: Callable[[BaseException], bool],
    within_s: float | None = None,
    jitter_s: float = 0.0,
    wait_at_least: Callable[[BaseException], float | None] | None = None,
) -> Retrying:
    """The worker side's one way to build a tenacity ``Retrying``: at most ``attempts``
    tries (and none started after ``within_s``), waiting ``initial_s``, doubling, capped
    at ``max_wait_s``, plus up to ``jitter_s`` at random; only errors for which
    ``retry_when`` is true are retried, and the last one is re-raised as itself. A wait
    is never shorter than ``wait_at_least(error)`` when that gives a number (the
    outbound side's ``Retry-After``, in seconds).
    Call it with the work, or iterate it (``for attempt in retrying(...)``)."""
    stop: stop_base = stop_after_attempt(attempts)
    if within_s is not None:
        stop = stop | stop_after_delay(within_s)
    wait: wait_base = wait_exponential(multiplier=initial_s, max=max_wait_s)
    if jitter_s:
        wait = wait + wait_random(0, jitter_s)
    waits: wait_base | Callable[[RetryCallState], float] = wait
    if wait_at_least is not None:
        waits = _at_least(wait, wait_at_least)
    return Retrying(stop=stop, wait=waits, retry=retry_if_exception(retry_when), reraise=True)


def _at_least(
    wait: wait_base, floor: Callable[[BaseException], float | None]
) -> Callable[[RetryCallState], float]:
    def waited(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        asked = floor(error) if error is not None else None
        return max(wait(state), asked or 0.0)

    return waited


def locked(query: S) -> S:
    """``query`` as a locking read that loads every column of its rows, now.

    ``SELECT … FOR UPDATE`` reads the latest committed row, while a plain read in the
    same MariaDB transaction reads the snapshot taken at its first plain read. A row a
    concurrent worker committed in between is thus seen by the locking read, but a
    *deferred* column of it loaded later (a plain ``SELECT`` by primary key) finds no
    row: ``ObjectDeletedError``. Loading everything up front, and overwriting what the
    session holds (``populate_existing``), leaves nothing to fetch from the snapshot.
    (SQLite: one writer at a time, no snapshot; FOR UPDATE is not rendered.)
    """
    return cast(
        S,
        query.options(undefer("*")).with_for_update().execution_options(populate_existing=True),
    )


def found_locked(session: Session, query: Select[Any]) -> Any | None:
    """The first row ``query`` finds, then locked by its primary key and loaded as
    committed now (:func:`locked`); None when there is none — and then no lock is taken.

    For find-or-insert by a natural key (a call by ``call_id``, a booking by its uid).
    A locking read that finds nothing locks the *gap* where the key would go (MariaDB's
    REPEATABLE READ), and keys that grow (``call_…`` ids of one sender) share the last
    gap: two workers inserting new calls then waited on, or deadlocked with, each
    other, and a frozen worker stalled them all (issue 17). A plain read locks nothing;
    a row it misses that another worker committed meanwhile meets the unique key on
    insert (IntegrityError, the callers' RaceLost: retried, and then found). The
    query's entity needs an ``id`` primary key."""
    hit = session.scalars(query.limit(1)).first()
    if hit is None:
        return None
    entity = type(hit)
    return session.scalars(locked(select(entity).where(entity.id == hit.id))).one_or_none()

"""Transient database failures are retried and succeed; permanent ones are not retried.

The failures are real: a MariaDB server of the test's own is stopped and started again,
or a row lock is held from another connection until the worker's wait times out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from models import Call, WebhookEvent
from models.contract import Queue
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus
from models.migrate import upgrade
from models.settings import Settings
from tests.factories import incoming_event
from tests.servers import MariaDBServer
from workers.pipeline.record import IncomingEvent, Outcome, record_event
from workers.retries import PermanentError, RaceLost, RetryPolicy, is_transient, retrying


def call_ended(call_id: str) -> IncomingEvent:
    body = {"event": "call_ended", "call": {"call_id": call_id, "call_status": "ended"}}
    return incoming_event("retell", f"{call_id}:call_ended", body, queue=Queue.HIGH)


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[tuple[MariaDBServer, str]]:
    """A MariaDB this test may stop, start and reconfigure."""
    server = MariaDBServer(tmp_path / "db").start()
    url = server.create_database()
    upgrade(Settings(database_url=url))
    yield server, url
    server.stop()


@pytest.fixture
def sessions(own_mariadb: tuple[MariaDBServer, str]) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(Settings(database_url=own_mariadb[1], db_pool_timeout_s=2))
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.slow
def test_the_database_stopped_briefly_is_retried_and_the_event_lands_once(
    own_mariadb: tuple[MariaDBServer, str], sessions: sessionmaker[Session]
) -> None:
    server, _ = own_mariadb
    assert record_event(sessions, call_ended("call_warm")) is Outcome.PROCESSED  # pool warm
    server.stop()
    restart = threading.Timer(1.5, server.start)
    restart.start()
    tries: list[float] = []

    def attempt() -> Outcome:
        tries.append(time.monotonic())
        return record_event(sessions, call_ended("call_1"))

    try:
        outcome = RetryPolicy(attempts=8, initial_s=0.2, max_wait_s=1.0).call(attempt)
    finally:
        restart.join()

    assert outcome is Outcome.PROCESSED
    assert len(tries) > 1  # it failed at least once while the server was down
    with sessions() as session:
        rows = session.scalars(select(WebhookEvent).where(WebhookEvent.event_id.like("call_1%")))
        assert [(r.status, r.attempts) for r in rows] == [(EventStatus.PROCESSED, 1)]
        assert session.scalar(select(Call.status).where(Call.call_id == "call_1")) == "ended"


@pytest.mark.slow
def test_a_lock_wait_timeout_goes_back_to_celery_and_a_later_try_succeeds(
    own_mariadb: tuple[MariaDBServer, str], sessions: sessionmaker[Session]
) -> None:
    # A row lock held past the lock wait belongs to a slow or frozen transaction: the
    # task does not wait again (that would hold the rest of its batch); the error is
    # transient, so Celery retries the event later, when the lock is gone.
    server, url = own_mariadb
    server.sql("SET GLOBAL innodb_lock_wait_timeout = 1")
    record_event(sessions, call_ended("call_locked"))  # the row exists
    blocker = create_engine(url).connect()
    blocker.begin()
    blocker.execute(text("SELECT id FROM calls WHERE call_id = 'call_locked' FOR UPDATE"))
    tries: list[int] = []

    def attempt() -> Outcome:
        tries.append(1)
        later = call_ended("call_locked")
        analyzed = IncomingEvent(**{**later.__dict__, "event_id": "call_locked:call_analyzed"})
        return record_event(sessions, analyzed)

    policy = RetryPolicy(attempts=6, initial_s=0.2, max_wait_s=1.0)
    try:
        with pytest.raises(DBAPIError) as raised:
            policy.call(attempt)
    finally:
        blocker.commit()
        blocker.close()
    assert tries == [1]
    assert is_transient(raised.value) and "Lock wait timeout" in str(raised.value)
    assert policy.call(attempt) is Outcome.PROCESSED


def test_a_permanent_failure_is_not_retried() -> None:
    tries: list[int] = []

    def attempt() -> None:
        tries.append(1)
        raise PermanentError("payload.startTime 'soon' is not an ISO-8601 timestamp")

    with pytest.raises(PermanentError):
        RetryPolicy(attempts=5, initial_s=0.01).call(attempt)
    assert len(tries) == 1


def _mysql_error(code: int, message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, message))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_mysql_error(1213, "Deadlock found when trying to get lock"), True),
        (_mysql_error(1205, "Lock wait timeout exceeded"), True),
        (_mysql_error(2006, "MySQL server has gone away"), True),
        (_mysql_error(2013, "Lost connection to MySQL server during query"), True),
        (_mysql_error(2003, "Can't connect to MySQL server"), True),
        (_mysql_error(1040, "Too many connections"), True),
        (PoolTimeout("QueuePool limit reached"), True),
        (RaceLost("call_1 was created concurrently"), True),
        (OperationalError("INSERT", {}, Exception("database is locked")), True),
        (_mysql_error(1054, "Unknown column 'x'"), False),
        (ProgrammingError("SELECT", {}, pymysql.err.ProgrammingError(1146, "no table")), False),
        (IntegrityError("INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate")), False),
        (PermanentError("cannot map"), False),
        (KeyError("payload"), False),
        (ValueError("bad json"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_retry_builder_tries_what_it_is_told_up_to_the_attempts_then_reraises() -> None:
    calls: list[str] = []

    def flaky() -> str:
        calls.append("try")
        raise RaceLost("again")

    def refused() -> str:
        calls.append("refused")
        raise PermanentError("no")

    tries = retrying(attempts=3, initial_s=0, max_wait_s=0, retry_when=is_transient)
    with pytest.raises(RaceLost):
        tries(flaky)
    with pytest.raises(PermanentError):
        tries(refused)

    assert calls == ["try", "try", "try", "refused"]

"""What a worker process builds once: its settings, its database engine and sessions.

Every task module and signal handler asks here instead of reading the environment or
making an engine itself. Each is a :class:`models.perprocess.PerProcess`: a prefork
child builds its own after the fork (an engine's pooled connections must never be
shared with the parent), and every thread of a process shares one.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.engine import make_engine, make_sessionmaker
from models.perprocess import PerProcess
from models.settings import ConfigError, Settings, forget_process_settings, process_settings


def settings() -> Settings:
    """This process's settings, from ``HOOKFLEET_*`` (read once per process;
    models.settings.process_settings, the same object the models' phone rule reads).

    A setting that cannot be used ends the process with one line on stderr naming it
    (SystemExit, status 1): the first call is Celery's configuration, before the worker
    or beat starts anything, and its traceback would bury the line."""
    try:
        return process_settings()
    except ConfigError as error:
        raise SystemExit(f"hookfleet: {error}") from None


def engine() -> Engine:
    return _database.get()[0]


def sessions() -> sessionmaker[Session]:
    """This process's session factory. Built on first use after a fork, never shared."""
    return _database.get()[1]


#: Seconds a worker's statement waits for a row lock (MariaDB ``innodb_lock_wait_timeout``
#: for its sessions) before it fails with 1205, a transient error.
ROW_LOCK_WAIT_S = 3


def _connect() -> tuple[Engine, sessionmaker[Session]]:
    from workers.celery_app import soft_time_limit

    config = settings()
    # Database waits end well inside the task's soft time limit as ordinary,
    # retryable errors: a task interrupted by the limit while blocked in the driver
    # would first have to wait for the blocked statement before it could roll back.
    # Row locks are waited for ROW_LOCK_WAIT_S at most: a lock held by a frozen or
    # slow transaction then costs the one event that needs it (the batch fails
    # fast, its events are settled one by one, the contended one retried later),
    # not a whole batch waiting out MariaDB's default 50 s.
    soft = soft_time_limit(config.task_time_limit_s)
    built = make_engine(
        config,
        io_timeout_s=max(2, soft - 2),
        lock_wait_s=min(ROW_LOCK_WAIT_S, max(1, soft // 4)),
    )
    return built, make_sessionmaker(built)


_database: PerProcess[tuple[Engine, sessionmaker[Session]]] = PerProcess(_connect)


@worker_process_shutdown.connect
def dispose(**_: Any) -> None:
    """Close this process's engine (a pool child ending, or a test repointing the
    runtime); settings are read again on next use too."""
    built = _database.forget()
    if built is not None:
        built[0].dispose()
    forget_process_settings()

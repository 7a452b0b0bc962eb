"""Engines and sessions, built from :class:`~models.settings.Settings`."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from models import tracing
from models.metrics import watch_pool
from models.payload_search import register_sqlite_functions
from models.settings import Settings


def make_engine(
    settings: Settings,
    *,
    io_timeout_s: int | None = None,
    lock_wait_s: int | None = None,
    autocommit_reads: bool = False,
) -> Engine:
    """A pooled engine for ``settings.database_url``. Opens no connection yet.

    MariaDB gets a real QueuePool sized from the settings; SQLite files get a pool too
    and WAL mode, so the receiver's lookups and the workers' writes do not block each
    other more than SQLite must. ``io_timeout_s`` bounds connecting and each read or
    write (whole seconds, PyMySQL's unit) for callers that must not hang on a stalled
    server. ``lock_wait_s`` sets MariaDB's ``innodb_lock_wait_timeout`` for the session,
    so a row lock held elsewhere ends in a clean, retryable error (1205) rather than
    a wait past the task's time limit. ``autocommit_reads``: every statement is its own
    transaction (``AUTOCOMMIT``) and none is rolled back when its connection goes back
    to the pool (``skip_autocommit_rollback``, new in SQLAlchemy 2.0.43): a read on a pooled
    connection is one round trip, for reads only (ingest/inbound.py's lookup).
    """
    url = make_url(settings.database_url)
    options: dict[str, Any] = {"pool_pre_ping": settings.db_pool_pre_ping}
    if autocommit_reads:
        options |= {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}
    if url.get_backend_name() == "sqlite":
        ensure_sqlite_directory(url.database)
        options["connect_args"] = {"timeout": lock_wait_s or io_timeout_s or 30}
    else:
        if url.get_backend_name() in ("mysql", "mariadb"):
            url = url.update_query_dict({"charset": "utf8mb4"}, append=False)
            connect_args: dict[str, Any] = {"ssl_disabled": True} if ssl_disabled_for(url) else {}
            if io_timeout_s:
                connect_args |= {
                    "connect_timeout": io_timeout_s,
                    "read_timeout": io_timeout_s,
                    "write_timeout": io_timeout_s,
                }
            if lock_wait_s:
                connect_args["init_command"] = (
                    f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_s)}"
                )
            if connect_args:
                options["connect_args"] = connect_args
        options.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            pool_recycle=settings.db_pool_recycle_s,
        )
    engine = create_engine(url, **options)
    tracing.instrument_engine(engine)  # statement spans, while tracing is on
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    watch_pool(engine)
    return engine


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def ssl_disabled_for(url: URL) -> bool:
    """Whether the connection is told ``ssl_disabled``: the URL names no TLS option (no
    ``?ssl_*=``: ``ssl_ca``, ``ssl_cert``, ``ssl_verify_identity``, ``ssl_disabled``...)
    and the server is on this host (a loopback address, or ``?unix_socket=``). PyMySQL 1.2
    otherwise builds a default TLS context for every connection it opens (~35-65 ms of
    CPU loading the system's CA store) for an unverified handshake that protects nothing
    on loopback. A remote server named without TLS options keeps PyMySQL's default (TLS
    when the server offers it, unverified); ``?ssl_ca=`` asks for verified TLS."""
    if any(name.startswith("ssl") for name in url.query):
        return False
    host = (url.host or "localhost").strip("[]").lower()
    return "unix_socket" in url.query or host in LOOPBACK_HOSTS or host.startswith("127.")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    register_sqlite_functions(dbapi_connection)


def ensure_sqlite_directory(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = os.path.dirname(os.path.abspath(database))
        os.makedirs(directory, exist_ok=True)

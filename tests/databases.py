"""Test databases migrated once per session: rolled-back sessions, emptied shared databases.

Alembic runs once per backend per test session (``hookfleet migrate``'s own code,
:func:`models.migrate.upgrade`). After that a test either

- works inside one connection's transaction that is rolled back after it
  (:func:`rolled_back`), the recipe of SQLAlchemy's "Joining a Session into an External
  Transaction (such as for test suites)" with ``join_transaction_mode="create_savepoint"``:
  the code's own ``commit()`` and ``rollback()`` end a SAVEPOINT, never the outer
  transaction. SQLite needs the pysqlite savepoint recipe (SQLAlchemy's SQLite dialect
  docs, "Serializable isolation / Savepoints / Transactional DDL") for that: the driver must
  not issue BEGIN/COMMIT on its own;
- or shares a database with threads and processes that must see its commits: a copy of the
  migrated SQLite file (:func:`copy_sqlite`, the sqlite3 backup API, milliseconds), or the
  one migrated MariaDB database with every table emptied (:meth:`SharedDatabase.empty`).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, table
from sqlalchemy.orm import Session, sessionmaker

from models.engine import make_engine
from models.migrate import upgrade
from models.settings import Settings
from tests.servers import MariaDBServer

BACKENDS = ("sqlite", "mariadb")


def copy_sqlite(template: Path, directory: Path) -> str:
    """A copy of the migrated SQLite file ``template`` in ``directory``, as a URL. The
    backup API copies a consistent image whatever the template's journal mode."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"hf_{uuid.uuid4().hex[:8]}.db"
    with sqlite3.connect(template) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    copy.close()
    return f"sqlite:///{target}"


@dataclass
class SharedDatabase:
    """One MariaDB database migrated once; :meth:`empty` makes it look freshly migrated."""

    url: str
    engine: Engine

    @classmethod
    def migrated(cls, url: str) -> SharedDatabase:
        upgrade(Settings(database_url=url))
        # One connection kept for every test's empty() (a new one each time was ~80 ms of
        # CPU: the handshake, SQLAlchemy's first-connect queries, PyMySQL's TLS context);
        # the pre-ping replaces it if the server was restarted under it.
        engine = create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
            isolation_level="AUTOCOMMIT",
            connect_args={"ssl_disabled": True},
        )
        return cls(url, engine)

    def empty(self) -> None:
        """Every table but ``alembic_version`` emptied, ids counting from 1 again (tests
        compare ids across runs no more than a fresh database would let them). A table
        that never had a row is left alone: TRUNCATE recreates the table, DELETE of an
        empty one costs nothing."""
        with self.engine.connect() as db:
            tables = db.exec_driver_sql(
                "SELECT table_name, auto_increment FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name <> 'alembic_version'"
            ).all()
            quote = db.dialect.identifier_preparer.quote
            db.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for name, next_id in tables:
                if next_id is not None and next_id > 1:
                    db.exec_driver_sql(f"TRUNCATE TABLE {quote(name)}")
                else:
                    db.execute(table(name).delete())
            db.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")

    def dispose(self) -> None:
        self.engine.dispose()


def savepoint_engine(url: str) -> Engine:
    """``make_engine(url)`` whose connections can hold an outer transaction with SAVEPOINTs
    inside. On SQLite, SQLAlchemy rather than pysqlite emits BEGIN (the documented recipe):
    pysqlite would otherwise commit on its own and end the outer transaction."""
    engine = make_engine(Settings(database_url=url))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


@contextmanager
def rolled_back(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions that all join one connection's transaction, rolled back at the end. Each
    ``session.commit()`` releases a SAVEPOINT, so the code under test runs its real
    commits and rollbacks, and its reads see what it wrote before."""
    with engine.connect() as connection:
        outer = connection.begin()
        try:
            yield sessionmaker(
                bind=connection,
                expire_on_commit=False,  # as models.engine.make_sessionmaker
                join_transaction_mode="create_savepoint",
            )
        finally:
            if outer.is_active:
                outer.rollback()


@contextmanager
def packet_limited_database(mariadb: MariaDBServer, max_packet: int) -> Iterator[str]:
    """A fresh migrated database on ``mariadb`` while its ``max_allowed_packet`` is
    ``max_packet`` bytes (new connections only), as a URL; the server's 16 MiB after."""
    mariadb.sql(f"SET GLOBAL max_allowed_packet = {max_packet}")
    try:
        url = mariadb.create_database()
        upgrade(Settings(database_url=url))
        yield url
    finally:
        mariadb.sql("SET GLOBAL max_allowed_packet = 16777216")

"""Run Alembic migrations from code, so ``hookfleet migrate`` needs no alembic.ini in cwd."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine import make_url

from models.engine import ensure_sqlite_directory, ssl_disabled_for
from models.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would eat a '%' in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migration_engine(database_url: str) -> Engine:
    """An unpooled engine for Alembic and the revision check (one connection each). A
    MariaDB on this host named without ``?ssl_*`` options is told ``ssl_disabled``, the
    rule of :func:`models.engine.make_engine`: PyMySQL would otherwise build a default TLS
    context (~35-65 ms of CPU) for an unverified handshake on loopback."""
    url = make_url(database_url)
    local_mysql = url.get_backend_name() in ("mysql", "mariadb") and ssl_disabled_for(url)
    connect_args = {"ssl_disabled": True} if local_mysql else {}
    return create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Create or upgrade the schema at ``settings.database_url``. Idempotent."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        ensure_sqlite_directory(url.database)
    command.upgrade(alembic_config(settings.database_url), revision)


def head() -> str:
    """The newest revision the migrations in this checkout know."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert revision is not None
    return revision


def current(settings: Settings) -> str | None:
    """The schema revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = migration_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()

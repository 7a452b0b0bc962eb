"""Run Alembic migrations from code, so ``hookfleet migrate`` needs no alembic.ini in cwd."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from models.engine import _ensure_sqlite_directory
from models.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would eat a '%' in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Create or upgrade the schema at ``settings.database_url``. Idempotent."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        _ensure_sqlite_directory(url.database)
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
    from sqlalchemy import create_engine

    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()

"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from models import Base
from models.migrate import alembic_config, current, head, upgrade
from models.settings import Settings


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {i["name"] for i in inspect(connection).get_indexes("webhook_events")}
            uniques = inspect(connection).get_unique_constraints("webhook_events")
    finally:
        engine.dispose()
    assert "ix_webhook_events_provider_event_id_created_at" in indexes
    assert any(u["column_names"] == ["provider", "event_id"] for u in uniques) or (
        "uq_webhook_events_provider_event_id" in indexes
    )


def test_migrate_is_idempotent_and_reversible(fresh_database_url: str) -> None:
    settings = Settings(database_url=fresh_database_url)

    upgrade(settings)  # already at head: nothing to do, nothing breaks
    assert current(settings) == head()

    command.downgrade(alembic_config(fresh_database_url), "base")
    assert current(settings) is None
    upgrade(settings)
    assert current(settings) == head()

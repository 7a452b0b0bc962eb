"""The inbound lookup (ingest/inbound.py) on real databases: one statement and, on a
warm pool, one round trip to MariaDB per lookup (no ping before it, no rollback after
it), the same answers on MariaDB and SQLite, and a connection the database dropped
costs no call its answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from sqlalchemy import create_engine, text

from ingest.inbound import LOOKUP_THREADS, BranchContact, InboundDirectory, cache_client
from models.settings import Settings
from tests.integration.test_inbound import seed


@pytest.fixture
def directory(database_url: str, redis_url: str) -> Iterator[InboundDirectory]:
    seed(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_url, inbound_budget_ms=5000)
    made = InboundDirectory(settings, cache_client(settings))
    yield made
    made._db().dispose()


def test_the_lookup_answers_the_same_on_both_databases(directory: InboundDirectory) -> None:
    found = directory.find("030 1234567")

    assert isinstance(found, BranchContact)
    assert (found.company_name, found.branch_name, found.agent_id, found.timezone) == (
        "Salon Schnitt",
        "Mitte",
        "agent_mitte",
        "Europe/Berlin",
    )
    assert directory.find("+49 40 7654321") is None  # an inactive branch
    assert directory.find("+49 89 999999") is None  # nobody's number
    no_agent = directory.find("+43 1 5123456")
    assert no_agent is not None and no_agent.agent_id is None


class Commands:
    """Every command PyMySQL sends a server (queries, pings), counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        execute = pymysql.connections.Connection._execute_command
        ping = pymysql.connections.Connection.ping

        def counted_execute(connection: Any, command: int, sql: Any) -> Any:
            self.sent.append(sql if isinstance(sql, str) else sql.decode("utf-8", "replace"))
            return execute(connection, command, sql)

        def counted_ping(connection: Any, *args: Any, **kwargs: Any) -> Any:
            self.sent.append("PING")
            return ping(connection, *args, **kwargs)

        monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counted_execute)
        monkeypatch.setattr(pymysql.connections.Connection, "ping", counted_ping)


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
def test_a_lookup_on_a_warm_pool_is_one_round_trip(
    directory: InboundDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert directory.warm(wait_s=30)
    commands = Commands(monkeypatch)

    found = directory.find("+49301234567")

    assert found is not None and found.branch_name == "Mitte"
    assert len(commands.sent) == 1, commands.sent
    assert commands.sent[0].lstrip().upper().startswith("SELECT")


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
def test_a_connection_the_database_dropped_costs_no_lookup(
    directory: InboundDirectory, database_url: str
) -> None:
    assert directory.warm(wait_s=30)
    admin = create_engine(database_url)
    with admin.connect() as connection:
        own = connection.execute(text("SELECT CONNECTION_ID()")).scalar()
        ids = (
            connection.execute(
                text(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = DATABASE() AND id <> :own"
                ),
                {"own": own},
            )
            .scalars()
            .all()
        )
        assert len(ids) >= LOOKUP_THREADS  # the lookup's pooled connections
        for connection_id in ids:  # what a database restart or wait_timeout does
            connection.execute(text(f"KILL {int(connection_id)}"))
    admin.dispose()

    found = directory.find("+49301234567")

    assert found is not None and found.branch_name == "Mitte"

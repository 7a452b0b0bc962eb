"""Fixtures: real Redis and MariaDB servers (started here), SQLite files, app clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from ingest import create_app
from models.engine import make_engine, make_sessionmaker
from models.migrate import upgrade
from models.settings import Settings
from tests.provisioning_helpers import ready_standin
from tests.servers import MariaDBServer, RedisServer, sqlite_url
from tests.standin import StandIn


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared test Redis, emptied for each test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database on each backend."""
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_server").create_database()
    else:
        url = sqlite_url(tmp_path / "db")
    upgrade(Settings(database_url=url))
    return url


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> str:
    """A freshly migrated, empty MariaDB database (for tests that need MariaDB itself)."""
    url = mariadb_server.create_database()
    upgrade(Settings(database_url=url))
    return url


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the migrated ``database_url``, with room for concurrent workers."""
    engine = make_engine(Settings(database_url=database_url, db_pool_size=20))
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A real local HTTP server standing in for the Retell and Cal.com APIs."""
    server = ready_standin(StandIn().start())
    yield server
    server.stop()


@pytest.fixture
def settings_env(redis_url: str) -> dict[str, str]:
    """Receiver settings for unsigned trials against the test Redis."""
    return {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_STANDARD_VERIFY": "off"}


@pytest.fixture
def client(settings_env: dict[str, str]) -> FlaskClient:
    return create_app(settings_env).test_client()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault-injection suite's counts, one line per scenario, so CI logs show them."""
    from tests.test_faults import RESULTS

    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection: counts per scenario")
    write(
        f"{'scenario':<40} {'sent':>6} {'accepted':>8} {'persisted':>9} {'effects':>7} "
        f"{'lost':>5} {'dup':>4}  answers"
    )
    for row in RESULTS:
        extra = {k: v for k, v in row.items() if k not in HEADLINE}
        write(
            f"{row['scenario']:<40} {row['sent']:>6} {row['accepted']:>8} "
            f"{row['persisted']:>9} {row['effects']:>7} {row['lost']:>5} "
            f"{row['duplicated']:>4}  {extra}"
        )


HEADLINE = ("scenario", "sent", "accepted", "persisted", "effects", "lost", "duplicated")

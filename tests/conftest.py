"""Fixtures: real Redis and MariaDB servers (started here), SQLite files, app clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _pytest.nodeid import NodeId
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ingest import create_app
from models.engine import make_engine, make_sessionmaker
from models.migrate import upgrade
from models.settings import Settings
from tests.databases import (
    BACKENDS,
    SharedDatabase,
    copy_sqlite,
    rolled_back,
    savepoint_engine,
)
from tests.helpers import FAULT_COUNTS
from tests.processes import (
    SESSION_FLEET,
    Processes,
    fleet_on_own_redis,
    forget_deliveries,
    signed_fleet_env,
)
from tests.provisioning_helpers import ready_standin
from tests.servers import MariaDBServer, RedisServer, sqlite_url
from tests.standin import StandIn

TESTS = Path(__file__).resolve().parent
TIERS = {"faults": ("faults", "e2e"), "e2e": ("e2e",)}
"""Folders of tests/ whose tests carry markers by where they are, so ``-m "not faults"``
and ``-m "not e2e"`` select the same tests before and after the tree is split into
unit/, integration/, e2e/ and faults/."""


@pytest.hookimpl(wrapper=True)  # the part before ``yield`` runs before pytest-xdist's hook
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    for item in items:
        where = item.path.relative_to(TESTS).parts
        markers = [m for folder in where[:-1] for m in TIERS.get(folder, ())]
        for marker in markers:
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        if item.get_closest_marker("xdist_group") is None:
            if SESSION_FLEET in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(SESSION_FLEET))
            elif _shares_a_module_fixture(item):
                item.add_marker(pytest.mark.xdist_group(item.path.stem))
    yield
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        _name_xdist_groups(items)


def _name_xdist_groups(items: list[pytest.Item]) -> None:
    """Give each test of an ``xdist_group`` its ``@group`` suffix, which is how
    ``--dist loadgroup`` tells the controller the groups. pytest-xdist 3.8 writes the
    suffix to ``Item._nodeid``, which pytest 9.2's structured node ids no longer read:
    every group was silently spread over the workers (pytest-dev/pytest-xdist#1386; its
    open fix #1388 sets the structured id the same way). With an older pytest the
    suffix is already there and this does nothing."""
    for item in items:
        groups = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(groups)
        # Not ``"@" in nodeid``: a parameter may hold one (test_edge_host.py's
        # ``user@hookfleet``), and such tests were left out of their group.
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = NodeId.parse(item.nodeid + suffix)


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether ``item`` uses a module-scoped fixture (a fleet or a server started once for
    its module). ``--dist loadgroup`` then keeps the module's tests in one xdist worker:
    spread over two, each would start the fleet again (`hookfleet up` in
    tests/e2e/test_first_hour.py took ~50 s on each worker)."""
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the closure
    if info is None:
        return False
    return any(
        definitions[-1].scope == "module"
        for definitions in info.name2fixturedefs.values()
        if definitions
    )


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under ``--dist loadgroup`` the signed fleet's group reaches a worker in one piece:
    after its last test the fleet is stopped there and then, not at the session's end
    (idle, its processes cost ~1 CPU-s a minute, and the group ran early: ~8 minutes of
    the run's 13 on that worker). In one process (``-n 0``) its users are not
    contiguous, so it runs to the end, as before. A rerun after the stop starts it again."""
    result = yield
    last_of_group = nextitem is not None and not _on_signed_fleet(nextitem)
    if getattr(item.config.option, "loadgroup", False) and last_of_group and _on_signed_fleet(item):
        manager = item.session._fixturemanager
        for definition in manager.getfixturedefs(SESSION_FLEET, item) or ():
            definition.finish(item._request)  # type: ignore[attr-defined]  # a Function's
    return result


def _on_signed_fleet(item: pytest.Item) -> bool:
    return any(
        (m.args[0] if m.args else m.kwargs.get("name")) == SESSION_FLEET
        for m in item.iter_markers("xdist_group")
    )


@pytest.fixture(scope="session")
def signed_fleet(
    tmp_path_factory: pytest.TempPathFactory, shared_mariadb: SharedDatabase
) -> Iterator[Processes]:
    """The Procfile's whole fleet (TEST_SETTINGS, three pool children per worker)
    verifying every provider's signature (tests.processes.SIGNED_SECRETS, and
    ``signed_fleet_env``), started once for every test that keeps this
    configuration (a fleet start is ~10 CPU-s of imports in five processes): on a Redis
    of its own and the shared MariaDB database. Tests take it through ``signed``."""
    with fleet_on_own_redis(
        tmp_path_factory.mktemp("signed-fleet"), shared_mariadb.url, **signed_fleet_env()
    ) as processes:
        yield processes


@pytest.fixture
def signed(signed_fleet: Processes, mariadb_url: str, shared_mariadb: SharedDatabase) -> Processes:
    """The session's signed fleet as a fresh one would be, for each test and each rerun
    (tests send fixed ids, signed into their bodies): nothing queued or in flight, no
    claims and no cached inbound lookups in its Redis, the database emptied. Its
    processes keep running: a test that stops or reconfigures one starts a fleet of its
    own."""
    for name, proc in signed_fleet.running.items():
        assert proc.poll() is None, f"the signed fleet's {name} exited:\n{signed_fleet.log(name)}"
    forget_deliveries(signed_fleet)
    # Emptied again: what the workers finished while draining an earlier test's leftovers
    # landed after ``mariadb_url`` emptied it (milliseconds when nothing did).
    shared_mariadb.empty()
    return signed_fleet


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, freeze or reconfigure (thawed and
    stopped afterwards if the test left it running)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.thaw()
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


# --- Databases -------------------------------------------------------------------------
# Each backend is migrated ONCE per session (Alembic, as `hookfleet migrate` does). A test
# then gets either
#   - rolled-back sessions (the default for ``sessions``): one connection inside a
#     transaction that is rolled back after the test; the code's own commits only release
#     SAVEPOINTs (SQLAlchemy's "joining a Session into an external transaction" recipe);
#   - or an emptied shared database (``database_url``, and ``sessions`` in a test that also
#     uses ``database_url`` or is marked ``several_connections``): for threads, worker
#     processes and engines of their own, which must see each other's commits.
# tests/integration/test_migrations.py migrates from scratch on ``fresh_database_url``.


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``mariadb``: every database test runs on both."""
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; tests get copies."""
    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    upgrade(Settings(database_url=f"sqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def shared_mariadb(mariadb_server: MariaDBServer) -> Iterator[SharedDatabase]:
    """One MariaDB database migrated to head once, emptied before each test that uses it."""
    shared = SharedDatabase.migrated(mariadb_server.create_database())
    yield shared
    shared.dispose()


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database at the head revision that any process may connect to: a copy of
    the migrated SQLite file, or the shared MariaDB database with its tables emptied."""
    if backend == "mariadb":
        return mariadb_url_for(request)
    return copy_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "db")


@pytest.fixture
def mariadb_url(request: pytest.FixtureRequest) -> str:
    """The shared MariaDB database, emptied (for tests that need MariaDB itself)."""
    return mariadb_url_for(request)


def mariadb_url_for(request: pytest.FixtureRequest) -> str:
    shared: SharedDatabase = request.getfixturevalue("shared_mariadb")
    shared.empty()
    return shared.url


@pytest.fixture(params=BACKENDS)
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of its own, migrated from scratch (slow: for the migration tests)."""
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_server").create_database()
    else:
        url = sqlite_url(tmp_path / "db")
    upgrade(Settings(database_url=url))
    return url


@pytest.fixture(scope="session")
def sqlite_rollback_engine(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """An engine on a copy of the migrated SQLite file that no test commits to."""
    engine = savepoint_engine(copy_sqlite(sqlite_template, tmp_path_factory.mktemp("sqlite")))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mariadb_rollback_engine(mariadb_server: MariaDBServer) -> Iterator[Engine]:
    """An engine on a second migrated MariaDB database that no test commits to (the
    shared one keeps what committing tests leave until the next one empties it)."""
    url = mariadb_server.create_database()
    upgrade(Settings(database_url=url))
    engine = savepoint_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(backend: str, request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """Sessions on an empty migrated database of ``backend``. Rolled back after the test,
    unless the test shares the database with other connections (see above)."""
    if "database_url" in request.fixturenames or request.node.get_closest_marker(
        "several_connections"
    ):
        engine = make_engine(
            Settings(database_url=request.getfixturevalue("database_url"), db_pool_size=20)
        )
        yield make_sessionmaker(engine)
        engine.dispose()
        return
    with rolled_back(request.getfixturevalue(f"{backend}_rollback_engine")) as rolled:
        yield rolled


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


@pytest.fixture(autouse=True)
def _fault_counts_to_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """The fault rows this test counted, attached to its report: under pytest-xdist the
    rows are counted in a worker process, and only reports reach the terminal."""
    before = len(FAULT_COUNTS)
    yield
    for row in FAULT_COUNTS[before:]:
        request.node.user_properties.append(("fault_counts", row))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        SUMMARY.extend(row for name, row in report.user_properties if name == "fault_counts")


SUMMARY: list[dict[str, Any]] = []
"""Fault rows of every test, gathered where the terminal is (the controller under xdist)."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault-injection suite's counts, one line per scenario, so CI logs show them."""
    if not SUMMARY:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection: counts per scenario")
    write(
        f"{'scenario':<40} {'sent':>6} {'accepted':>8} {'persisted':>9} {'effects':>7} "
        f"{'lost':>5} {'dup':>4}  answers"
    )
    for row in SUMMARY:
        extra = {k: v for k, v in row.items() if k not in HEADLINE}
        write(
            f"{row['scenario']:<40} {row['sent']:>6} {row['accepted']:>8} "
            f"{row['persisted']:>9} {row['effects']:>7} {row['lost']:>5} "
            f"{row['duplicated']:>4}  {extra}"
        )


HEADLINE = ("scenario", "sent", "accepted", "persisted", "effects", "lost", "duplicated")


@pytest.fixture(autouse=True, scope="session")
def _no_developer_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A fleet the developer runs (`hookfleet up`) must not answer for the tests'
    commands: its pointer (workers.cli.discovery) lives in the real state directory."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg_state")))
    yield
    patch.undo()

"""``hookfleet`` commands with nothing to talk to: no fleet found (an empty directory),
a database port nobody listens on, Redis down. Each answers one line saying what it
could not reach and exits 1: no traceback, and no SQLite file created by a command
that only reads."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.databases import copy_sqlite
from tests.helpers import hookfleet_here
from tests.servers import clean_env, free_port

pytestmark = pytest.mark.slow  # servers of their own, and a hookfleet process per test

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
READERS = [
    ["events", "list"],
    ["events", "show", "1"],
    ["dlq", "list"],
    ["replay", "runs"],
    ["replay", "--all-dead", "--dry-run"],
    ["stats"],
    ["integrity", "check"],
    ["prune", "--dry-run"],
]


def hookfleet(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script in a process of its own, as a user runs it."""
    environ = clean_env(XDG_STATE_HOME=str(cwd / "state"), HOME=str(cwd), **env)
    return subprocess.run(
        [HOOKFLEET, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def hookfleet_in_test(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The same command line in this process (tests.helpers.hookfleet_here): the same
    code below ``main()``, without a fresh interpreter's imports (~0.5 CPU-s each)."""
    environ = clean_env(XDG_STATE_HOME=str(cwd / "state"), HOME=str(cwd), **env)
    return hookfleet_here(args, cwd, environ)


def hookfleet_for(args: list[str], first: list[str]) -> Callable[..., CompletedProcess[str]]:
    """A real process for ``first``, the first row of a family (the entry point and the
    interpreter's exit as a user meets them); this process for the family's other rows."""
    return hookfleet if args == first else hookfleet_in_test


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *says: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for text in says:
        assert text in errors[0], errors[0]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_with_no_fleet_a_reading_command_says_so_and_creates_no_database(
    args: list[str], tmp_path: Path
) -> None:
    result = hookfleet_for(args, READERS[0])(args, tmp_path)
    assert_one_clear_line(result, "hookfleet up", "HOOKFLEET_DATABASE_URL")
    assert not (tmp_path / "var").exists()
    assert list(tmp_path.rglob("*.db")) == []


@pytest.mark.parametrize("args", READERS[:5], ids=" ".join)
def test_a_closed_database_port_is_one_line_naming_it_without_the_password(
    args: list[str], tmp_path: Path
) -> None:
    url = f"mysql+pymysql://hookfleet:s3cret@127.0.0.1:{free_port()}/hookfleet"
    result = hookfleet_for(args, READERS[0])(args, tmp_path, HOOKFLEET_DATABASE_URL=url)
    assert_one_clear_line(result, "cannot reach the database", "127.0.0.1", "hookfleet up")
    assert "s3cret" not in result.stderr


def test_a_database_without_tables_says_to_migrate(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "mariadb":
        url = request.getfixturevalue("mariadb_server").create_database()
    else:
        (tmp_path / "empty.db").touch()
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (["events", "list"], ["replay", "runs"]):
        result = hookfleet_for(args, ["events", "list"])(args, tmp_path, HOOKFLEET_DATABASE_URL=url)
        assert_one_clear_line(result, "no Hookfleet tables", "hookfleet migrate")


@pytest.mark.parametrize(
    "args",
    [
        ["breaker", "status"],
        ["quarantine", "list"],
        ["quarantine", "release", "--dry-run"],
        ["quarantine", "release"],
    ],
    ids=" ".join,
)
def test_redis_down_is_one_line_naming_redis(
    args: list[str], tmp_path: Path, sqlite_template: Path
) -> None:
    url = copy_sqlite(sqlite_template, tmp_path)  # migrated, as `hookfleet migrate` leaves it
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"HOOKFLEET_DATABASE_URL": url, "HOOKFLEET_REDIS_URL": redis_url}
    run = hookfleet_for(args, ["breaker", "status"])
    result = run(args, tmp_path, **env)
    assert_one_clear_line(result, "cannot reach Redis", redis_url, "hookfleet up")
    # stats prints what it could read, then one line for what it could not.
    stats = run(["stats"], tmp_path, **env)
    assert stats.returncode == 1 and "Traceback" not in stats.stderr
    assert "redis unreachable" in stats.stderr and "HOOKFLEET_REDIS_URL" in stats.stderr


@pytest.mark.parametrize("args", [["quarantine", "list"], ["breaker", "status"]], ids=" ".join)
def test_unreachable_sentinels_are_one_line_naming_them(
    args: list[str], tmp_path: Path, sqlite_template: Path
) -> None:
    # The documented multi-host form: its netloc is no host:port for a URL parser.
    one, two = free_port(), free_port()
    redis_url = f"redis+sentinel://:s3cret@127.0.0.1:{one},127.0.0.1:{two}/mymaster/2"
    env = {"HOOKFLEET_DATABASE_URL": copy_sqlite(sqlite_template, tmp_path)}
    run = hookfleet_for(args, ["quarantine", "list"])
    result = run(args, tmp_path, HOOKFLEET_REDIS_URL=redis_url, **env)
    assert_one_clear_line(
        result, "cannot reach Redis", f"127.0.0.1:{one},127.0.0.1:{two}/mymaster/2", "mymaster"
    )
    assert "s3cret" not in result.stderr
    assert "<redis." not in result.stderr  # no client reprs: the URL says where

"""A ``hookfleet`` command finds the fleet ``hookfleet up`` runs (workers.cli.discovery):
from any directory, the environment winning, a dead fleet's file ignored with a note."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.servers import wait_until
from workers.cli.discovery import (
    StaleFleet,
    fill_from_fleet,
    find_fleet,
    pointer_path,
    remove_fleet_file,
    write_fleet_file,
)
from workers.cli.params import invocation_settings

FLEET_ENV = {
    "HOOKFLEET_REDIS_URL": "redis://127.0.0.1:49367/0",
    "HOOKFLEET_DATABASE_URL": "sqlite:////srv/fleet/var/hookfleet.db",
    "HOOKFLEET_OPS_BIND": "127.0.0.1:9999",
    "PATH": "/usr/bin",
}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [*FLEET_ENV, "HOOKFLEET_VAR_DIR"]:
        if name != "PATH":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


@pytest.fixture
def hookfleet_like() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line names hookfleet, as `hookfleet up`'s does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "hookfleet"])
    yield proc
    proc.kill()
    proc.wait()


def _write(var_dir: Path, pid: int, environ: dict[str, str]) -> Path:
    var_dir.mkdir(parents=True, exist_ok=True)
    path = write_fleet_file(
        var_dir, receiver_url="http://127.0.0.1:18431", env=FLEET_ENV, environ=environ
    )
    text = path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {pid}')
    path.write_text(text)
    return path


def test_a_command_anywhere_finds_the_fleet_through_the_state_pointer(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    path = _write(tmp_path / "project" / "var", hookfleet_like.pid, state)

    fleet = find_fleet(state, cwd=tmp_path / "elsewhere")

    assert fleet is not None and fleet.path == path
    assert fleet.receiver_url == "http://127.0.0.1:18431"
    assert fleet.env == {k: v for k, v in FLEET_ENV.items() if k.startswith("HOOKFLEET_")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold a database password
    assert pointer_path(state).read_text().strip() == str(path)


def test_the_environment_wins_over_the_fleet_file(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    _write(tmp_path / "project" / "var", hookfleet_like.pid, state)
    fleet = find_fleet(state)
    assert fleet is not None

    merged = fill_from_fleet({"HOOKFLEET_REDIS_URL": "redis://mine:6379/0", **state}, fleet)

    assert merged["HOOKFLEET_REDIS_URL"] == "redis://mine:6379/0"
    assert merged["HOOKFLEET_DATABASE_URL"] == FLEET_ENV["HOOKFLEET_DATABASE_URL"]


def test_a_file_left_by_a_dead_fleet_is_ignored_with_a_note(
    tmp_path: Path, state: dict[str, str]
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass", "hookfleet"])
    dead.wait()
    _write(tmp_path / "project" / "var", dead.pid, state)

    @click.command()
    def show() -> None:
        click.echo(invocation_settings().redis_url)

    result = CliRunner().invoke(show, [])

    assert result.exit_code == 0, result.output
    assert "redis://127.0.0.1:6379/0" in result.output  # the default, not the dead fleet's
    assert "is not running" in result.output and result.output.count("\n") == 2
    with pytest.raises(StaleFleet):
        find_fleet(state)


def test_a_pid_reused_by_another_program_is_not_the_fleet(
    tmp_path: Path, state: dict[str, str]
) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        # /proc/<pid>/cmdline reads empty for a moment after exec (taken as alive).
        wait_until(lambda: Path(f"/proc/{other.pid}/cmdline").read_bytes() != b"", 10, "exec")
        _write(tmp_path / "project" / "var", other.pid, state)
        with pytest.raises(StaleFleet):
            find_fleet(state)
    finally:
        other.kill()
        other.wait()


def test_a_command_reads_the_running_fleets_settings(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    _write(tmp_path / "project" / "var", hookfleet_like.pid, state)

    @click.command()
    def show() -> None:
        settings = invocation_settings()
        click.echo(f"{settings.redis_url} {settings.database_url} {settings.ops_bind}")

    result = CliRunner().invoke(show, [])

    assert result.output.split() == [
        FLEET_ENV["HOOKFLEET_REDIS_URL"],
        FLEET_ENV["HOOKFLEET_DATABASE_URL"],
        FLEET_ENV["HOOKFLEET_OPS_BIND"],
    ]


def test_a_clean_stop_removes_the_file_and_the_pointer(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    path = _write(tmp_path / "project" / "var", hookfleet_like.pid, state)

    remove_fleet_file(path, state)

    assert not path.exists() and not pointer_path(state).exists()
    assert find_fleet(state) is None


def test_stopping_the_newer_of_two_fleets_points_back_at_the_older_one(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    older = _write(tmp_path / "older" / "var", hookfleet_like.pid, state)
    newer = _write(tmp_path / "newer" / "var", hookfleet_like.pid, state)
    assert pointer_path(state).read_text().strip() == str(newer)

    remove_fleet_file(newer, state)

    fleet = find_fleet(state)
    assert fleet is not None and fleet.path == older


def test_stopping_a_fleet_the_pointer_no_longer_names_leaves_the_pointer_alone(
    tmp_path: Path, state: dict[str, str], hookfleet_like: subprocess.Popen[bytes]
) -> None:
    older = _write(tmp_path / "older" / "var", hookfleet_like.pid, state)
    newer = _write(tmp_path / "newer" / "var", hookfleet_like.pid, state)

    remove_fleet_file(older, state)

    assert not older.exists()
    assert pointer_path(state).read_text().strip() == str(newer)
    # The older one stopped first: stopping the newer leaves nothing to point at.
    remove_fleet_file(newer, state)
    assert not pointer_path(state).exists()

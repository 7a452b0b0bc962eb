"""The first hour, as a new user meets it: ``hookfleet up`` in one terminal (a real
pty), and in a second one, from another directory with nothing exported, ``hookfleet
send`` for each provider and ``hookfleet stats`` finding that fleet; the fleet's own
log lines are short console lines on the terminal.

The same fleet answers what ``hookfleet up`` promises while it runs (every Procfile
process and no other, the ops listener apart from the receiver, a second ``up`` on its
ports refused up front) and, at the module's end, what Ctrl-C does (the fleet stops
cleanly, its private Redis with its append-only file, its record with it). One start
for all of them: tests/e2e/test_up.py keeps the fleets a test must own (SIGKILL, a
given Redis)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select

from models.events import EventStatus, WebhookEvent
from tests.bench.fleet import children
from tests.helpers import hookfleet_here
from tests.processes import request
from tests.servers import clean_env, free_port, wait_until
from workers.cli.up import read_procfile

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
SECRETS = {
    "HOOKFLEET_STRIPE_SECRETS": "whsec_3kTq9vPz7LmN2xR8wY4bC6dF1gH5jK0s",
    "HOOKFLEET_RETELL_SECRETS": "key_8f3a1c2e9b7d4f60a5e1c3b2d9f7e6a4",
    "HOOKFLEET_CALCOM_SECRETS": "calcom_first_hour_secret",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Terminal:
    """`hookfleet up` on a pseudo-terminal, its output drained as it comes."""

    proc: subprocess.Popen[bytes]
    chunks: list[bytes]
    tmp: Path
    state: Path
    port: int
    ops_port: int

    @property
    def var_dir(self) -> Path:
        return self.tmp / "project" / "var"

    @property
    def output(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode(errors="replace"))

    def second_terminal(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A ``hookfleet`` command from another directory, no HOOKFLEET_* exported."""
        return subprocess.run(
            [HOOKFLEET, *args],
            cwd=self.tmp / "elsewhere",
            env=clean_env(XDG_STATE_HOME=str(self.state), **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def same_terminal_here(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The same command line in the test process (tests.helpers.hookfleet_here), for
        what a command prints: each command keeps a row above in a process of its own."""
        environ = clean_env(XDG_STATE_HOME=str(self.state), **env)
        return hookfleet_here(args, self.tmp / "elsewhere", environ)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    tmp = tmp_path_factory.mktemp("first_hour")
    (tmp / "elsewhere").mkdir()
    (tmp / "project").mkdir()
    port, ops_port = free_port(), free_port()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            HOOKFLEET,
            "up",
            "--port",
            str(port),
            "--ops-bind",
            f"127.0.0.1:{ops_port}",
            "--concurrency",
            "1",
        ],
        cwd=tmp / "project",
        env=clean_env(XDG_STATE_HOME=str(tmp / "state"), **SECRETS),
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    chunks: list[bytes] = []

    def drain() -> None:  # a full pty would stop the fleet's processes mid-line
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    threading.Thread(target=drain, daemon=True).start()
    terminal = Terminal(proc, chunks, tmp, tmp / "state", port, ops_port)
    wait_until(
        lambda: proc.poll() is not None or "hookfleet is up" in terminal.output,
        120,
        "hookfleet up to print its URL",
        interval=0.2,
    )
    assert proc.poll() is None, terminal.output
    try:
        yield terminal
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0, terminal.output[-3000:]
        os.close(primary)
    assert "hookfleet stopped." in terminal.output
    # A clean stop takes the fleet's record with it.
    assert not (terminal.var_dir / "fleet.json").exists()
    assert not (tmp / "state" / "hookfleet" / "current").exists()
    # ... and its private Redis, which wrote its append-only file: the queue is durable.
    [private_redis] = re.findall(r"private redis: (\S+)", terminal.output)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(private_redis, socket_connect_timeout=1).ping()
    assert (terminal.var_dir / "redis" / "appendonlydir").exists()
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{port}", "GET", "/healthz")


def procfile_argv(command: str, concurrency: str) -> list[str]:
    """A Procfile command as the shell would run it with HOOKFLEET_WORKER_CONCURRENCY
    set (the only variable the Procfile reads with a default)."""
    expanded = re.sub(
        r"\$\{HOOKFLEET_WORKER_CONCURRENCY:-[^}]*\}", concurrency, command.replace("'", "")
    )
    return expanded.split()


def running_commands(pid: int) -> list[list[str]]:
    """The argv of each child of ``pid``, without the interpreter a script runs under."""
    commands = []
    for child in children(pid):
        argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")[:-1]
        if Path(argv[0]).name.startswith("python") and len(argv) > 1:
            argv = argv[1:]
        commands.append([Path(argv[0]).name, *argv[1:]])
    return commands


def test_up_runs_every_procfile_process_on_sqlite_and_a_private_redis(fleet: Terminal) -> None:
    # (Its first delivery, an unsigned one in trial mode, is the `send standard` row.)
    assert f"http://127.0.0.1:{fleet.port}/webhooks/standard" in fleet.output
    assert "private redis: redis://127.0.0.1:" in fleet.output
    # Every Procfile process runs, with the Procfile's command line and no other.
    expected = [procfile_argv(c, "1") for c in read_procfile().values()]
    fleet_commands = [
        c for c in running_commands(fleet.proc.pid) if not c[0].startswith("redis-server")
    ]
    assert sorted(fleet_commands) == sorted(expected)
    assert (fleet.var_dir / "hookfleet.db").exists()
    status, _, _ = request(f"http://127.0.0.1:{fleet.ops_port}", "GET", "/readyz")
    assert status == 200
    assert request(f"http://127.0.0.1:{fleet.port}", "GET", "/metrics")[0] == 404


def test_a_second_up_on_the_fleets_ports_is_refused_up_front(
    fleet: Terminal, tmp_path: Path
) -> None:
    # gunicorn's control socket is the fleet's own, not $HOME/.gunicorn's shared one.
    control = fleet.var_dir / "gunicorn.ctl"
    wait_until(control.is_socket, 30, "the receiver's control socket in its var dir")
    second = ["up", "--port", str(fleet.port), "--ops-bind", f"127.0.0.1:{free_port()}"]
    same_ops = ["up", "--port", str(free_port()), "--ops-bind", f"127.0.0.1:{fleet.ops_port}"]
    environ = clean_env(XDG_STATE_HOME=str(fleet.state))
    # The console script as a process for one; the same command line in this process
    # (tests.helpers.hookfleet_here, which refuses to start a process) for the other.
    refusals = [
        (
            subprocess.run(
                [HOOKFLEET, *second],
                cwd=tmp_path,
                env=environ,
                capture_output=True,
                text=True,
                timeout=120,
            ),
            f"receiver port 127.0.0.1:{fleet.port}",
        ),
        (hookfleet_here(same_ops, tmp_path, environ), "ops"),
    ]

    for refused, which in refusals:
        assert refused.returncode != 0, refused
        assert "hookfleet is up" not in refused.stdout
        assert which in refused.stderr and "already in use" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    # The pointer still names the running fleet: the refused ones touched none.
    pointer = fleet.state / "hookfleet" / "current"
    assert pointer.read_text().strip() == str(fleet.var_dir / "fleet.json")
    assert list(tmp_path.iterdir()) == []  # no var/ of their own


def _event_id(output: str) -> str:
    match = re.search(r'"event_id": "([^"]+)"', output)
    assert match, output
    return match.group(1)


def _wait_processed(fleet: Terminal, provider: str, event_id: str) -> None:
    engine = create_engine(f"sqlite:///{fleet.tmp / 'project' / 'var' / 'hookfleet.db'}")

    def processed() -> bool:
        with engine.connect() as connection:
            status = connection.scalar(
                select(WebhookEvent.status).where(
                    WebhookEvent.provider == provider, WebhookEvent.event_id == event_id
                )
            )
        return status == EventStatus.PROCESSED

    try:
        wait_until(processed, 90, f"{provider} {event_id} to be processed", interval=0.3)
    finally:
        engine.dispose()


@pytest.mark.parametrize("provider", ["stripe", "standard", "retell", "calcom"])
def test_send_from_a_second_terminal_is_accepted_and_recorded(
    fleet: Terminal, provider: str
) -> None:
    # The console script as a second terminal's process for the first provider (the
    # entry point finding the fleet from elsewhere); the same command line, directory
    # and environment in this process for the others: what differs per provider is
    # below main().
    if provider == "stripe":
        sent = fleet.second_terminal("send", provider)
    else:
        sent = fleet.same_terminal_here("send", provider)

    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "202 ACCEPTED" in sent.stdout
    how = "unsigned: trial mode" if provider == "standard" else "signed with the first of"
    assert how in sent.stdout
    _wait_processed(fleet, provider, _event_id(sent.stdout))
    again = fleet.same_terminal_here("send", provider)
    assert _event_id(again.stdout) != _event_id(sent.stdout)  # each send a new event


def test_same_id_sends_one_event_twice_and_the_second_is_a_duplicate(fleet: Terminal) -> None:
    first = fleet.same_terminal_here("send", "stripe", "invoice.paid", "--same-id")
    second = fleet.same_terminal_here("send", "stripe", "invoice.paid", "--same-id")

    assert "202 ACCEPTED" in first.stdout or '"duplicate"' in first.stdout
    assert "200 OK" in second.stdout and '"status": "duplicate"' in second.stdout
    assert _event_id(first.stdout) == _event_id(second.stdout)


def test_a_retell_inbound_call_prints_the_inline_answer(fleet: Terminal) -> None:
    sent = fleet.same_terminal_here("send", "retell", "call_inbound")

    assert sent.returncode == 0, sent.stderr
    assert "200 OK" in sent.stdout
    answer = json.loads(sent.stdout.split("200 OK", 1)[1])
    assert set(answer) == {"call_inbound"}


def test_a_wrong_secret_prints_the_refusal(fleet: Terminal) -> None:
    sent = fleet.same_terminal_here("send", "stripe", HOOKFLEET_STRIPE_SECRETS="whsec_wrong")

    assert sent.returncode == 1
    assert "401 UNAUTHORIZED" in sent.stdout
    assert "refused: invalid_signature" in sent.stderr
    assert "HOOKFLEET_STRIPE_SECRETS" in sent.stderr


def test_stats_in_a_second_terminal_reads_the_fleet(fleet: Terminal) -> None:
    # In this process: the console script finding the fleet from elsewhere is the
    # `send stripe` row's; what `stats` reads and prints is below main().
    stats = fleet.same_terminal_here("stats")

    assert stats.returncode == 0, stats.stderr
    assert "unreachable" not in stats.stdout + stats.stderr
    assert re.search(r"^hookfleet\.high\s+\d+\s+\d+", stats.stdout, flags=re.MULTILINE)


def test_an_exported_variable_wins_over_the_running_fleet(fleet: Terminal) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"

    stats = fleet.same_terminal_here("stats", HOOKFLEET_REDIS_URL=nowhere)

    assert "redis unreachable" in stats.stderr


def test_the_fleets_logs_on_a_terminal_are_one_short_line_per_event(fleet: Terminal) -> None:
    sent = fleet.same_terminal_here("send", "stripe", "checkout.session.completed")
    event_id = _event_id(sent.stdout)
    _wait_processed(fleet, "stripe", event_id)

    def lines_about() -> list[str]:
        return [line for line in fleet.output.splitlines() if event_id in line]

    wait_until(lambda: len(lines_about()) >= 2, 30, "the receiver's and the worker's lines")
    received, *_, processed = lines_about()
    assert re.match(rf"^\d\d:\d\d:\d\d\.\d{{3}} INFO\s+stripe {event_id} accepted ", received)
    assert re.search(rf"INFO\s+stripe {event_id} processed [\d.]+ms", processed)
    assert not any(line.lstrip().startswith('{"ts"') for line in fleet.output.splitlines())

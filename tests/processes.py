"""Running the Procfile's real commands (gunicorn, celery) as subprocesses in tests."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from models.broker.backlog import UNACKED_KEY
from models.contract import QUEUES
from tests.helpers import STANDARD_SECRET
from tests.servers import RedisServer, clean_env, die_with_tests, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


@dataclass
class Processes:
    """Procfile entries started with ``bash -c``, as a Procfile runner would."""

    logs: Path
    env: dict[str, str]
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def for_servers(cls, logs: Path, **hookfleet: str) -> Processes:
        env = clean_env(**hookfleet)
        # The venv's gunicorn and celery first on PATH, like an activated environment.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("PORT", str(free_port()))
        # The ops listener (/metrics, /readyz, /stats) on a free loopback port of its own.
        env.setdefault("HOOKFLEET_OPS_BIND", f"127.0.0.1:{free_port()}")
        env.setdefault("HOOKFLEET_VAR_DIR", str(logs))
        if "PROMETHEUS_MULTIPROC_DIR" not in hookfleet:
            # Every process of this fleet adds up in one metrics directory of its own.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(logs / "metrics")
        logs.mkdir(parents=True, exist_ok=True)
        return cls(logs=logs, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def ops_url(self) -> str:
        return f"http://{self.env['HOOKFLEET_OPS_BIND']}"

    def start(self, name: str, command: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` (default: the Procfile's ``name`` entry) as ``name``, with its
        own log ``<name>.log``; a variant of an entry (another node name, ``-E``) passes
        its edited command."""
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command or procfile()[name]}"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Killed with the test process however it ends (a test run stopped with
            # SIGKILL left workers polling Redis ports nobody listened on any more).
            preexec_fn=die_with_tests(),
        )
        self.running[name] = proc
        return proc

    def wait_for_web(self) -> None:
        def healthy() -> bool:
            if self.running["web"].poll() is not None:
                raise RuntimeError(f"web exited:\n{self.log('web')}")
            try:
                return request(self.base_url, "GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(healthy, 30, "gunicorn /healthz", interval=0.1)

    def wait_for_worker(self, name: str) -> None:
        wait_until(
            lambda: re.search(r"ready\.", self.log(name)) is not None,
            60,
            f"{name} to be ready",
            interval=0.2,
        )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.running.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM to every process at once, then wait for each (SIGKILL after ``timeout``):
        the workers' warm shutdowns overlap instead of adding up, seconds per fleet."""
        stopping = {name: self.running.pop(name) for name in list(self.running)}
        for proc in stopping.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in stopping.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def worker_on(*queues: str) -> str:
    """The Procfile's ``worker_default`` command consuming ``queues`` instead: one
    ``celery worker`` (~1.8 CPU-s to start, nearly all of it the main process's
    imports; a pool child adds ~0.15) where a test needs those queues served but is not
    about which worker serves which (start it with ``Processes.start(name, command)``)."""
    command = procfile()["worker_default"]
    assert " -Q hookfleet.default " in command, command
    return command.replace(" -Q hookfleet.default ", f" -Q {','.join(queues)} ")


FLEET = ("web", "worker_high", "worker_default", "worker_low", "beat")
# Short enough that a crashed worker's jobs come back within a test; two of everything,
# so work is really spread over processes.
TEST_SETTINGS = {
    "HOOKFLEET_VISIBILITY_TIMEOUT_S": "60",
    "HOOKFLEET_TASK_TIME_LIMIT_S": "30",
    "WEB_CONCURRENCY": "2",
    "HOOKFLEET_WORKER_CONCURRENCY": "2",
}


ONE_RECEIVER_WORKER = {"WEB_CONCURRENCY": "1"}
"""For a receiver whose test is not about several receiver workers (how connections
spread, every process's metrics or exporter): one gunicorn worker instead of
TEST_SETTINGS' two. A second worker imports the app after the fork, ~0.5 CPU-s per
receiver start, and proves nothing more where one worker serves every request."""


@contextmanager
def running_fleet(
    tmp_path: Path, redis_url: str, database_url: str, *, names: Sequence[str] = FLEET, **env: str
) -> Iterator[Processes]:
    """The Procfile's ``names`` against these servers (logs in ``tmp_path/fleet``),
    stopped afterwards; ``env`` adds to or overrides TEST_SETTINGS."""
    processes = Processes.for_servers(
        tmp_path / "fleet",
        HOOKFLEET_REDIS_URL=redis_url,
        HOOKFLEET_DATABASE_URL=database_url,
        **{**TEST_SETTINGS, **env},
    )
    for name in names:
        processes.start(name)
    if "web" in names:
        processes.wait_for_web()
    try:
        yield processes
    finally:
        processes.stop_all()


@contextmanager
def fleet_on_own_redis(
    directory: Path, database_url: str, *, names: Sequence[str] = FLEET, **env: str
) -> Iterator[Processes]:
    """:func:`running_fleet` on a Redis of its own in ``directory``, for a fleet that
    outlives one test (module or session scope): the shared test Redis is flushed for
    every test, which would take the queues' bindings from under running workers."""
    redis_server = RedisServer(directory / "redis").start()
    try:
        with running_fleet(
            directory, redis_server.url, database_url, names=names, **env
        ) as processes:
            yield processes
    finally:
        redis_server.stop()


@contextmanager
def standard_receiver(tmp: Path, redis_url: str, **env: str) -> Iterator[Processes]:
    """The Procfile's ``web`` alone (no workers, a database it never opens) verifying
    Standard Webhooks with ``tests.helpers.STANDARD_SECRET``, against ``redis_url``,
    with one gunicorn worker (:data:`ONE_RECEIVER_WORKER`); ``env`` adds to or overrides
    these and TEST_SETTINGS. For raw-socket tests of the receiver's edge, which look at
    answers and at what was queued."""
    settings = {**ONE_RECEIVER_WORKER, "HOOKFLEET_STANDARD_SECRETS": STANDARD_SECRET, **env}
    with running_fleet(
        tmp, redis_url, f"sqlite:///{tmp / 'unused.db'}", names=("web",), **settings
    ) as processes:
        yield processes


def forget_deliveries(processes: Processes) -> None:
    """The fleet's Redis as a fresh fleet's would be for the next test (and a rerun that
    sends the same ids), once its workers finished what was queued: every
    ``hookfleet:*`` key (claims, cached inbound lookups, rate buckets) deleted; the
    broker's own keys, the queues' bindings under the running workers, kept."""
    client = redis.Redis.from_url(processes.env["HOOKFLEET_REDIS_URL"])
    try:
        # What an earlier test (or its failed first attempt) left queued or in flight
        # would land in the next test's emptied database: wait for the workers first.
        wait_until(lambda: not _in_flight(client), 60, "the fleet's queues to drain", 0.1)
        for key in client.scan_iter(match="hookfleet:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def _in_flight(client: redis.Redis) -> int:
    """Messages waiting on a queue or taken by a worker and not yet acknowledged."""
    waiting = sum(int(client.llen(queue)) for queue in QUEUES)
    return waiting + int(client.hlen(UNACKED_KEY))


SIGNED_SECRETS = {
    "standard": "whsec_" + "c2VjcmV0LWZvci10aGUtZW5kLXRvLWVuZC10ZXN0cw==",
    "stripe": "whsec_3kTq9vPz7LmN2xR8wY4bC6dF1gH5jK0s",
    "calcom": "calcom-e2e-secret",
    "retell": "key_8f3a1c2e9b7d4f60a5e1c3b2d9f7e6a4",
}
"""The secret of each provider the session's signed fleet (``signed_fleet`` in
tests/conftest.py) verifies; tests that send to it sign with these."""


SESSION_FLEET = "signed_fleet"
"""The fixture (tests/conftest.py) of the fleet several modules share; its users form
one xdist group, so it starts once per run instead of once per pytest-xdist worker."""


def signed_fleet_env() -> dict[str, str]:
    """The settings of the session's signed fleet, beyond TEST_SETTINGS: every
    provider's secret, and three pool children per worker, so the simultaneous first
    contacts of tests/e2e/test_identity_race.py race in six transactions at once."""
    secrets = {f"HOOKFLEET_{p.upper()}_SECRETS": s for p, s in SIGNED_SECRETS.items()}
    return {**secrets, "HOOKFLEET_WORKER_CONCURRENCY": "3"}


def request(
    base_url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request on a fresh connection; returns (status, headers, JSON or text)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        connection.close()


def shell_words(command: str) -> list[str]:
    return shlex.split(command)

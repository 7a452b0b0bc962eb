"""Starting what the benchmark measures: any WSGI app on one of the benchmark's servers
(:data:`SERVERS`: the shipped one from the Procfile, the fixed gunicorn reference, and
granian for the A/B), ``celery worker`` with the shipped settings and any Celery app,
each as its own process group, stopped by its own pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench import deliveries
from tests.processes import ROOT, procfile, request
from tests.servers import RedisServer, clean_env, free_port, sqlite_url, wait_until

HOOKFLEET_WEB_APP = "'ingest:create_app()'"
HOOKFLEET_WORKER_APP = "workers.celery_app"


def web_command(app: str) -> str:
    """The Procfile's ``web`` command (``-c python:ingest.gunicorn_conf``) serving
    ``app``: every receiver runs on the same gunicorn settings."""
    command = procfile()["web"]
    assert HOOKFLEET_WEB_APP in command, command
    return command.replace(HOOKFLEET_WEB_APP, f"'{app}'")


def reference_command(app: str) -> str:
    """The usual deployment, fixed whatever Hookfleet ships: stock gunicorn, gthread,
    2 workers x 4 threads, no config module (no access log, gunicorn's defaults)."""
    return f"gunicorn --worker-class gthread --workers 2 --threads 4 --bind $HOOKFLEET_BIND '{app}'"


def granian_command(app: str) -> str:
    """granian (Rust HTTP server) in WSGI mode, 2 workers, serving ``app`` (a factory
    call ``module:function()``); the A/B that decided the shipped server."""
    target = app.removesuffix("()")
    return (
        "granian --interface wsgi --factory --no-ws --workers 2 --blocking-threads 2 "
        f"--host 127.0.0.1 --port $PORT --log-level warning '{target}'"
    )


# Server name -> command for a WSGI app.
SERVERS = {
    "shipped": web_command,
    "gthread-2x4": reference_command,
    "granian": granian_command,
}


def receiver_env(work: Path) -> tuple[RedisServer, dict[str, str]]:
    """A private Redis started under ``work`` and the environment a receiver of the
    benchmark runs with: that Redis, an SQLite database and var dir in ``work``, and
    the benchmark's provider secrets (tests.bench.deliveries signs with them)."""
    redis_server = RedisServer(work / "redis").start()
    env = clean_env(
        HOOKFLEET_REDIS_URL=redis_server.url,
        HOOKFLEET_DATABASE_URL=sqlite_url(work),
        HOOKFLEET_VAR_DIR=str(work),
        **deliveries.SECRET_ENV,
    )
    return redis_server, env


def worker_command(app: str | None = None) -> str:
    """The Procfile's ``worker_default`` command, optionally with another Celery app."""
    command = procfile()["worker_default"]
    return command if app is None else command.replace(HOOKFLEET_WORKER_APP, app)


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (forked by any of its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@dataclass
class Proc:
    """One Procfile-style command in its own process group."""

    name: str
    command: str
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    # The checkout whose code it runs (another commit's, for an A/B: tests.bench.profile).
    tree: Path = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        env = dict(self.env)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.tree != ROOT:
            env["PYTHONPATH"] = str(self.tree)
        env["PORT"] = str(self.port)
        env["HOOKFLEET_BIND"] = f"127.0.0.1:{self.port}"
        # The ops listener on a free port of its own (its default is a fixed one).
        env["HOOKFLEET_OPS_BIND"] = f"127.0.0.1:{free_port()}"
        # Servers without gunicorn_conf's hook still share one metrics directory.
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.logs / f"{self.name}-metrics"))
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {self.command}"],
            cwd=self.tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return (self.logs / f"{self.name}.log").read_text(errors="replace")

    def wait_for_web(self) -> Proc:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            try:
                return request(self.url, "GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(healthy, 30, f"{self.name} /healthz", interval=0.1)
        # Let every gunicorn worker finish importing before load arrives.
        time.sleep(0.5)
        return self

    def wait_for_worker(self) -> Proc:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            return "ready." in self.log()

        wait_until(ready, 60, f"{self.name} to be ready", interval=0.1)
        return self

    def pids(self) -> list[int]:
        """The serving processes: gunicorn's or Celery's pool children."""
        assert self.proc is not None
        return children(self.proc.pid)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

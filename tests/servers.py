"""Real Redis and MariaDB servers for the tests: private, on loopback, thrown away after.

Each server runs from a scratch directory with a free port, is stopped by its own pid,
never touches a system instance, and dies with the test process (PR_SET_PDEATHSIG, as
the children of `hookfleet up`) however that ends.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pymysql.constants.CLIENT
import redis

from workers.cli.up import die_with_parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
            None,
        )
        if found:
            return found
    raise RuntimeError(
        f"{names[0]} is not installed; run the test command (bash tests/run.sh), which installs it"
    )


def die_with_tests() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux stop the child when this test process dies
    (``die_with_parent``: PR_SET_PDEATHSIG, SIGTERM). Linux sends it when the *thread*
    that started the child ends (prctl(2)), so only children started by the main thread
    get it: a server restarted from a timer thread would die with that thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return die_with_parent()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class RedisServer:
    """``redis-server`` on a free port; ``stop()`` and ``start()`` again keep the port.
    With ``replica_of`` it replicates that server (``--replicaof``)."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    maxmemory: str | None = None
    replica_of: RedisServer | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            _binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            # A replica's first sync starts at once, not after Redis's 5 s default delay.
            "--repl-diskless-sync-delay",
            "0",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.maxmemory:
            argv += ["--maxmemory", self.maxmemory]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_tests(),  # no server outlives a killed test run
        )
        wait_until(self._answers, 15, f"redis-server on port {self.port}")
        if self.replica_of is not None:
            wait_until(self.in_sync, 15, f"replica on port {self.port} to sync")
        return self

    def in_sync(self) -> bool:
        """A replica that confirms a fresh write at once, as WAIT sees it. (Right after a
        sync, Redis streams to a replica only from its first periodic ACK, up to a
        second later; the primary's INFO may call it online before that.)"""
        assert self.replica_of is not None
        if self.client().info("replication").get("master_link_status") != "up":
            return False
        primary = self.replica_of.client()
        primary.set("tests:replica-probe", self.port)
        return int(primary.wait(1, 100)) >= 1

    def freeze(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited; see {self.directory}/redis.log")
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server could not act on TERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class MariaDBServer:
    """``mariadbd`` in a scratch data directory; ``create_database()`` hands out URLs."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    user: str = "hookfleet"
    password: str = "hookfleet-test"
    # A server configuration to run with instead of the fast test settings below.
    defaults_file: Path | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def socket_path(self) -> Path:
        return self.directory / "sock"

    def start(self) -> MariaDBServer:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        # A private tmpdir (for the server and for mariadb_template's install): servers
        # bootstrapped at once in the shared /tmp collide on
        # their temporary tables' file names ("Unknown table 'mysql.tmp_user_sys'",
        # "Installation of system tables failed": 3 of 6 concurrent installs here).
        tmp = self.directory / "tmp"
        tmp.mkdir(exist_ok=True)
        if not (data / "mysql").exists():  # a restart keeps its data
            shutil.copytree(mariadb_template(), data, dirs_exist_ok=True)
        log = open(self.directory / "mariadb.log", "wb")
        if self.defaults_file is None:
            settings = [
                "--no-defaults",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=128M",
                "--max-connections=500",
            ]
        else:
            settings = [f"--defaults-file={self.defaults_file}"]
        self.proc = subprocess.Popen(
            [
                _binary("mariadbd", "mysqld"),
                *settings,
                "--user=root",
                f"--datadir={data}",
                f"--tmpdir={tmp}",
                f"--socket={self.socket_path}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                f"--pid-file={self.directory / 'mariadb.pid'}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_tests(),
        )
        wait_until(self._answers, 60, f"mariadbd on port {self.port}", interval=0.2)
        self.sql(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}';"
            f"GRANT ALL ON *.* TO '{self.user}'@'127.0.0.1';"
        )
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited; see {self.directory}/mariadb.log")
        try:
            self._root().close()
        except pymysql.err.OperationalError:  # no socket yet, or not accepting yet
            return False
        return True

    def _root(self) -> pymysql.connections.Connection[Any]:
        """root over the server's socket, in this process: the ``mariadb`` client as a
        process was ~84 starts a run (each readiness poll, each database handed out)."""
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            ssl_disabled=True,  # else PyMySQL builds a TLS context (~45 ms) per connection
            autocommit=True,
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
            connect_timeout=10,
        )

    def sql(self, statements: str) -> None:
        """Run ``;``-separated statements as root; raises on the first that fails."""
        connection = self._root()
        try:
            with connection.cursor() as cursor:
                cursor.execute(statements)
                while cursor.nextset():  # each statement's result; an error raises here
                    pass
        finally:
            connection.close()

    def create_database(self) -> str:
        name = "hf_" + uuid.uuid4().hex[:12]
        self.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _install_db(data: Path, tmp: Path) -> None:
    subprocess.run(
        [
            _binary("mariadb-install-db", "mysql_install_db"),
            "--user=root",
            f"--datadir={data}",
            f"--tmpdir={tmp}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@functools.cache
def mariadb_template() -> Path:
    """A data directory as ``mariadb-install-db`` leaves it, made once per machine and
    MariaDB version (under ``$XDG_CACHE_HOME``, else ~/.cache) and copied for each
    server: the install is ~3 s and ~1 CPU-s, the copy ~0.3 s and 0.25 CPU-s. Built
    aside and renamed into place, so test processes starting at once never see half
    of one (the loser of a race throws its copy away)."""
    version = subprocess.run(
        [_binary("mariadbd", "mysqld"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(version.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hookfleet-tests"
    template = cache / f"mariadb-datadir-{key}"
    if (template / "mysql").is_dir():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    try:
        (scratch / "tmp").mkdir()
        _install_db(scratch / "data", scratch / "tmp")
        try:
            (scratch / "data").rename(template)
        except OSError:  # another test process put its template there first
            if not (template / "mysql").is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return template


def sqlite_url(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / ('hf_' + uuid.uuid4().hex[:8] + '.db')}"


def clean_env(**overrides: str) -> dict[str, str]:
    """The process environment minus any HOOKFLEET_* (and OTEL_*: tracing) the developer
    had set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKFLEET_", "OTEL_"))}
    env.update(overrides)
    return env

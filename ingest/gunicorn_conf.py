"""Gunicorn settings for the receiver: ``gunicorn -c python:ingest.gunicorn_conf
'ingest:create_app()'``. A gunicorn config module is read when gunicorn starts, so this
is the one module that reads the environment on import, as gunicorn expects."""

import atexit
import os
import sys

from gunicorn import glogging

from models.logs import logging_config
from models.settings import Settings


def _checked_settings() -> Settings:
    """This receiver's settings, checked while gunicorn reads its config (before it logs
    or binds anything): a setting that cannot be used (``PORT=abc``, ``WEB_CONCURRENCY=0``,
    a bad URL, a provider's refused secret) ends gunicorn with its one line on stderr
    (exit 1), instead of a master with no workers, or each worker failing to boot with a
    traceback. gunicorn lets SystemExit from its config module through (app/base.py)."""
    from ingest.providers import REGISTRY

    try:
        settings = Settings.from_env(os.environ)
        for provider in REGISTRY.values():
            provider.check_settings(settings.provider(provider.name))
    except ValueError as error:  # ConfigError, or a provider's refusal of its secrets
        raise SystemExit(f"hookfleet: {error}") from None
    return settings


settings = _checked_settings()
# Two listeners: the public one (webhooks and /healthz only) and the ops one for
# /metrics, /readyz and /stats (ingest/metrics.py), on loopback unless told otherwise.
public_bind = settings.bind or f"0.0.0.0:{settings.port}"
ops_bind = settings.ops_bind
bind = [public_bind] if ops_bind == public_bind else [public_bind, ops_bind]
workers = settings.web_concurrency
# One event loop per process reads every request and serves deliveries itself; the
# WSGI app's other requests (and gunicorn's parser for unusual framing) run in
# ``threads`` threads (ingest/aio_worker.py). The former worker, gthread buffering
# arrivals with JSON refusals, stays selectable with gunicorn's own option:
# --worker-class ingest.gunicorn_worker.JsonErrorWorker (e.g. in GUNICORN_CMD_ARGS).
worker_class = "ingest.aio_worker.AioWorker"
threads = settings.web_threads
keepalive = 5
# A provider gives up after 10 s (Retell) to 20 s (Stripe); nothing we do takes longer.
timeout = 30
# SIGTERM lets in-flight requests finish for this long before workers are killed.
graceful_timeout = 20
# No request header sets the WSGI SCRIPT_NAME or PATH_INFO. gunicorn's default takes
# both from a peer in ``forwarded_allow_ips`` (loopback unless told), for a proxy that
# mounts an app under a prefix: a client's ``SCRIPT_NAME: /x`` through a proxy on this
# host answered 500 (gunicorn's ConfigurationProblem page, not JSON), and
# ``SCRIPT_NAME: /webhooks`` turned a signed delivery's 202 into a 404. The webhook paths
# are fixed; a proxy that moves them rewrites the path itself.
forwarder_headers = ""
# No access line: the receiver logs one line per delivery itself (outcome, event id,
# correlation id, duration), and gunicorn's would double the logging cost of every
# request. ``--access-logfile -`` (e.g. in GUNICORN_CMD_ARGS) turns it back on.
accesslog = None
errorlog = "-"
# gunicorn's own lines (booting, worker exits, timeouts) on stdout, like ours (JSON, or
# console lines on a terminal: HOOKFLEET_LOG_FORMAT).
logconfig_dict = logging_config("INFO", settings.log_format)
loglevel = settings.log_level.lower()

# One metrics directory for every process of this host, set before any worker imports
# prometheus_client (see models/metrics.py): in on_starting, once the settings passed,
# so a master that cannot start leaves no directory behind. `hookfleet up` and the
# systemd units empty it when the whole fleet starts.
from models.metrics import mark_process_dead, metrics_dir_of, use_metrics_dir  # noqa: E402

# How gunicorn's master (``Arbiter.reap_workers``) logs a worker that ended badly: a
# status other than 0, or a signal other than SIGTERM (SIGKILL as an ERROR, others as a
# WARNING). gunicorn hands its hooks no exit status, so the master reads it here
# (tests/e2e/test_receiver_stop.py fails if gunicorn words them otherwise).
WORKER_FAILED_LINES = (
    "Worker (pid:%s) exited with code %s.",
    "Worker (pid:%s) was sent %s! Perhaps out of memory?",
    "Worker (pid:%s) was sent %s!",
)


class JsonLogger(glogging.Logger):
    """gunicorn's logger, writing an access line only when ``accesslog`` asks for one
    (with a ``logconfig_dict`` gunicorn writes one for every request otherwise), and
    noting in the master which worker ended badly (see :func:`child_exit`)."""

    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)

    def error(self, msg: str, *args: object, **kwargs: object) -> None:
        _note_worker_failure(msg, args)
        super().error(msg, *args, **kwargs)

    def warning(self, msg: str, *args: object, **kwargs: object) -> None:
        _note_worker_failure(msg, args)
        super().warning(msg, *args, **kwargs)


logger_class = JsonLogger

# In the master: the workers reaped with a failed status and not yet past child_exit
# (pid -> what the master logged), and those of its final shutdown.
_worker_failed: dict[object, str] = {}
_failed_at_stop: list[str] = []


def _note_worker_failure(msg: str, args: tuple[object, ...]) -> None:
    if msg in WORKER_FAILED_LINES and args:
        _worker_failed[args[0]] = msg % args


def child_exit(server: object, worker: object) -> None:
    """A gunicorn worker ended: drop its live gauges (its counters stay in the sums)
    and free its place on the connection board (ingest/gunicorn_worker.py; both
    worker classes keep theirs in ``worker.board_slot``). One that failed in the
    master's final shutdown (``Arbiter.stop`` closed the listeners first) sets the
    master's exit status (:func:`on_exit`); one replaced mid-life does not."""
    pid = worker.pid  # type: ignore[attr-defined]
    mark_process_dead(pid)
    from ingest.gunicorn_worker import BOARD

    BOARD.release(getattr(worker, "board_slot", -1))
    failed = _worker_failed.pop(pid, None)
    if failed is not None and not getattr(server, "LISTENERS", True):
        _failed_at_stop.append(failed)


def on_starting(_server: object) -> None:
    """Before any worker (the settings passed at import, see _checked_settings): the
    metrics directory is made; a master that never serves (a port taken, workers that
    fail to boot) removes it at exit."""
    _made_for_metrics.extend(_missing_parents(metrics_dir_of(os.environ)))
    use_metrics_dir()
    atexit.register(_forget_metrics_dir_of_failed_boot, os.getpid())


# Directories on_starting created for the metrics (deepest first), and whether this
# master served: a master that never got a worker running removes them again at exit,
# with what its failed workers wrote there (the directory was new: nothing else's).
_made_for_metrics: list[str] = []
_master = {"served": False}


def _missing_parents(path: str) -> list[str]:
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def when_ready(_server: object) -> None:
    """The master listens; from here its workers' boot decides (see on_exit)."""
    _master["served"] = True


def on_exit(server: object) -> None:
    """gunicorn halts; after "Worker failed to boot" / "App failed to load" (gunicorn
    raises HaltServer with status 3 or 4, arbiter.py) it never served. A stop in
    which a worker failed (status 1: answered calls' records it lost or could not
    confirm, ingest/late_records.py; a crash; the window's SIGKILL) ends the master
    with status 1 instead of 0: systemd, Kubernetes and ``hookfleet run web`` see only
    the master's."""
    halted = sys.exc_info()[1]
    status = getattr(halted, "exit_status", 0)
    if status in (3, 4):
        _master["served"] = False
    if _failed_at_stop and not status:
        server.log.error(  # type: ignore[attr-defined]
            "Shutting down with status 1: a worker's exit failed (%s)",
            "; ".join(_failed_at_stop),
        )
        raise SystemExit(1)


def _forget_metrics_dir_of_failed_boot(master_pid: int) -> None:
    if os.getpid() != master_pid or _master["served"]:
        return  # a worker exiting (atexit is inherited by fork), or a master that served
    import shutil

    for made in _made_for_metrics:
        shutil.rmtree(made, ignore_errors=True)


#: Seconds a worker waits for its inbound lookup's warm-up before it accepts calls: its
#: four connections took 1.2 s with the database 50 ms away (the first one's handshake
#: and SQLAlchemy's first-connect queries, ~24 round trips), 3.1 s at 150 ms; 0.5 s left
#: the first calls at 50 ms to dial inside their 300 ms budget (unrouted). A database
#: that refuses fails at once, one that does not answer after the 1 s connect timeout.
WARM_WAIT_S = 2.5


def post_worker_init(worker: object) -> None:
    """A worker loaded the app: connect its inbound lookup and its inbound records'
    database before it accepts requests (gunicorn calls this hook before the worker's
    accept loop), not on the first call."""
    # Other apps served with this config (the benchmark's) have no inbound lookup.
    extensions = getattr(worker.wsgi, "extensions", {})  # type: ignore[attr-defined]
    inbound = extensions.get("hookfleet_inbound")
    if inbound is not None:
        from models.tracing import untraced

        # Untraced: each worker's warm-up SELECT was a trace of its own, with no request.
        with untraced():
            # The connections an inline answer's record may need before it: Redis
            # waited for 0.5 s at most, the database in the background; then the
            # lookup's, waited for 2.5 s at most: a slow database must not hold the
            # first calls long (they queue in the listen backlog).
            extensions["hookfleet_inbound_record"].warm()
            inbound.warm(wait_s=WARM_WAIT_S)
    worker.log.info("Worker ready: pid %s", worker.pid)  # type: ignore[attr-defined]


def _control_socket(environ: "os._Environ[str]") -> str:
    """gunicorn 25.1+'s control socket (``gunicornc``): gunicorn's default,
    ``$HOME/.gunicorn/gunicorn.ctl``, is one path for every gunicorn of a user, so two
    fleets would take it from each other. Each fleet's goes in its var dir
    (``HOOKFLEET_VAR_DIR``); "" (none) without one, or where the path is too long for a
    unix socket (108 bytes on Linux)."""
    var_dir = environ.get("HOOKFLEET_VAR_DIR", "").strip()
    path = os.path.join(os.path.abspath(var_dir), "gunicorn.ctl") if var_dir else ""
    return path if len(path.encode()) < 100 else ""


_own_control_socket = _control_socket(os.environ)
if _own_control_socket:
    control_socket = _own_control_socket
control_socket_disable = not _own_control_socket

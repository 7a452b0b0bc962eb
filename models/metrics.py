"""Prometheus plumbing shared by the receiver and the workers.

Every Hookfleet process on a host writes its samples into one directory
(``PROMETHEUS_MULTIPROC_DIR``); a scrape adds them up across processes, so counts from
two gunicorn workers and four Celery children add up. prometheus_client decides between
per-process and shared mode when it is first imported, so the variable must be set
before that: :func:`use_metrics_dir` does it and is called from the gunicorn config and
the Celery app's configuration hook, which run before any metric exists.

Here because ``models`` is the one package both sides may import. Importing this module
imports no prometheus_client and reads no environment.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import weakref
from collections.abc import Mapping, MutableMapping
from functools import cache
from typing import Any

from sqlalchemy import Engine, event

from models.settings import DEFAULT_VAR_DIR

METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

# Circuit breakers (workers.outbound.breaker) keep their state in Redis under
# f"{BREAKER_NAMESPACE}:{name}:pybreaker:state" (pybreaker's CircuitRedisStorage); the
# receiver's /metrics reads it there, so the gauge is the state every process shares.
BREAKER_NAMES = ("retell", "calcom")
BREAKER_NAMESPACE = "hookfleet:breaker"
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


def breaker_state_key(name: str) -> str:
    return f"{BREAKER_NAMESPACE}:{name}:pybreaker:state"


def metrics_dir_of(env: Mapping[str, str]) -> str:
    """The metrics directory ``env`` names: ``PROMETHEUS_MULTIPROC_DIR``, else
    ``$HOOKFLEET_VAR_DIR/metrics`` (``var_dir``'s default when unset), absolute."""
    var_dir = env.get("HOOKFLEET_VAR_DIR") or DEFAULT_VAR_DIR
    return os.path.abspath(env.get(METRICS_DIR_VAR) or os.path.join(var_dir, "metrics"))


def use_metrics_dir(environ: MutableMapping[str, str] | None = None) -> str:
    """Make sure ``PROMETHEUS_MULTIPROC_DIR`` names an existing directory; return it.

    Keeps a value that is already set; otherwise ``$HOOKFLEET_VAR_DIR/metrics``. Call it
    before prometheus_client is imported in this process (or set it in the environment
    the process starts with, as the Procfile, the systemd units and ``hookfleet up`` do).
    """
    env = os.environ if environ is None else environ
    path = metrics_dir_of(env)
    os.makedirs(path, exist_ok=True)
    env[METRICS_DIR_VAR] = path
    return path


def wipe_metrics_dir(path: str) -> None:
    """Forget every process's samples. Only while no Hookfleet process on this host
    runs (fleet start): a live process keeps writing to a file unlinked under it."""
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)


def multiprocess() -> bool:
    return bool(os.environ.get(METRICS_DIR_VAR))


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (its counters keep counting in the sum)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)


def scrape_registry() -> Any:
    """A registry holding everything this host's processes recorded.

    Shared mode: a fresh registry that reads the directory at collect time, after
    dropping the live gauges of processes that no longer exist
    (:func:`forget_dead_processes`). Otherwise the process's own default registry (tests
    in one process, ``flask run``).
    """
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client import multiprocess as mp

    if not multiprocess():
        return REGISTRY

    class LiveProcessesCollector(mp.MultiProcessCollector):
        def collect(self) -> Any:
            forget_dead_processes(self._path)
            return super().collect()

    registry = CollectorRegistry()
    LiveProcessesCollector(registry)
    return registry


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead_processes(path: str) -> list[int]:
    """Drop the live gauges (``livesum``, ``liveall``, ``livemax``, ...) of every process
    that wrote to ``path`` and no longer runs; returns their pids.

    A process that exits cleanly is marked dead by its parent (gunicorn's
    ``child_exit``, Celery's ``worker_process_shutdown``); one killed by SIGKILL or the
    OOM killer is not, and its last values would stay in the sums for good (a pool
    checkout count stuck high, feeding the pool-exhaustion alert). Counters and
    histograms of dead processes stay: a count does not go back.

    Pids are this PID namespace's: every process writing to ``path`` must run in it
    (one host, or one container or pod, as shipped), or a live process elsewhere would
    be taken for dead and its gauges dropped.
    """
    gone = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _running(int(match.group(1))):
            gone.add(int(match.group(1)))
    for pid in gone:
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid, path)
    return sorted(gone)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, under another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): existing is the best we know
    return state not in (b"Z", b"X")


@cache
def _pool_gauges() -> tuple[Any, Any]:
    from prometheus_client import Gauge

    return (
        Gauge(
            "hookfleet_db_pool_checked_out",
            "Database connections in use, summed over live processes.",
            multiprocess_mode="livesum",
        ),
        Gauge(
            "hookfleet_db_pool_overflow",
            "Connections open beyond the pool size (HOOKFLEET_DB_MAX_OVERFLOW), summed.",
            multiprocess_mode="livesum",
        ),
    )


def declare_shared_metrics() -> None:
    """Create the shared metrics now, so a scrape lists them before first use."""
    _pool_gauges()


_in_use: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def watch_pool(engine: Engine) -> None:
    """Keep the pool gauges current for ``engine``; every pooled engine of a process adds
    to the same two numbers. Pools without a size (SQLite in memory) are skipped."""
    pool = engine.pool
    if not hasattr(pool, "checkedout") or not hasattr(pool, "size"):
        return

    def checked_out(*_: Any) -> None:
        _record(pool, pool.checkedout())

    def checked_in(*_: Any) -> None:
        # SQLAlchemy fires "checkin" before the connection is back in the pool.
        _record(pool, pool.checkedout() - 1)

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)


def _record(pool: Any, in_use: int) -> None:
    gauge_in_use, gauge_overflow = _pool_gauges()
    with _pools_lock:
        _in_use[pool] = max(0, in_use)
        counts = list(_in_use.items())
    gauge_in_use.set(sum(n for _, n in counts))
    # Overflow: connections in use beyond the pool size, i.e. HOOKFLEET_DB_MAX_OVERFLOW
    # being spent. Sustained > 0 means the pool is too small for the concurrency.
    gauge_overflow.set(sum(max(0, n - p.size()) for p, n in counts))

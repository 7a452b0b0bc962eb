"""A bound on how long a worker's shutdown may take, whatever its running batches wait for.

Celery's warm shutdown (SIGTERM) waits for the running tasks however long they take;
its ``worker_soft_shutdown_timeout`` applies only to a *cold* shutdown (Celery 5.5,
``celery/apps/worker.py`` ``_shutdown_handler`` / ``wait_for_soft_shutdown``). A batch
blocked on a database that does not answer (mariadbd stopped, a partitioned host) then
kept a SIGTERMed worker alive until the task's soft time limit — minutes, where the
README promises the soft-shutdown period.

So from the start of any shutdown, ``HOOKFLEET_WORKER_SOFT_SHUTDOWN_S`` later the pool's
processes still running are killed (their batches never committed: the database rolls
their transactions back when it sees the connection gone, and their messages are
leased, so the main process or the lease gives them back — still exactly once), and a
little later the process exits if its own shutdown has not finished.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

logger = logging.getLogger("hookfleet.worker")

#: Seconds after the pool is ended that the main process may still take to close.
EXIT_GRACE_S = 10.0

_armed = threading.Event()


def bound_shutdown(soft_shutdown_s: float, exit_grace_s: float = EXIT_GRACE_S) -> None:
    """Arm the bound (once a process): after ``soft_shutdown_s`` seconds SIGKILL the
    pool's processes; after ``exit_grace_s`` more, end this process (exit status 1)."""
    if _armed.is_set():
        return
    _armed.set()
    thread = threading.Thread(
        target=_expire,
        args=(soft_shutdown_s, exit_grace_s),
        name="hookfleet-shutdown-bound",
        daemon=True,  # a shutdown that finishes in time ends it with the process
    )
    thread.start()


def arm_on_signal(soft_shutdown_s: float) -> None:
    """Arm the bound from SIGTERM/SIGINT themselves, before Celery's own handler runs.

    Celery's shutdown steps (which arm it too) run only once the main loop gets control
    back; a main thread blocked in a read that never returns (a broker socket gone
    silent) would never get there. A signal handler still runs: Python interrupts the
    blocking call, runs the handler, and resumes the call (PEP 475)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(number: int, frame: Any, previous: Any = previous) -> None:
            bound_shutdown(soft_shutdown_s)
            if callable(previous):
                previous(number, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(number, signal.SIG_DFL)
                os.kill(os.getpid(), number)

        signal.signal(signum, handler)


def _expire(soft_shutdown_s: float, exit_grace_s: float) -> None:
    time.sleep(soft_shutdown_s)
    children = pool_processes()
    if children:
        logger.warning(
            "soft shutdown period over: ending the pool's running batches",
            extra={"pool_processes": len(children), "soft_shutdown_s": soft_shutdown_s},
        )
    for pid in children:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(exit_grace_s)
    logger.error("shutdown still not finished; exiting", extra={"after_s": exit_grace_s})
    logging.shutdown()
    os._exit(1)


def pool_processes() -> list[int]:
    """Pids of this process's children (the prefork pool's processes), from Linux's
    ``/proc/<pid>/task/<tid>/children`` (proc(5)); none where that is not available."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with suppress(OSError):
            pids += [int(pid) for pid in children.read_text().split()]
    return pids

"""The shipped worker with a stopwatch, for the benchmark only (``tests.bench.tail``).

``TimedAioWorker`` is ``ingest.aio_worker.AioWorker`` with three opt-in instruments, so
the shipped class pays nothing for them:

- **server time per request**: from the loop's first read of a request's bytes
  (``Connection.data_received`` on an empty buffer) to its answer handed to the
  transport (``Connection.write``), by ``time.perf_counter``;
- **loop stalls**: a timer due every ``_PROBE_S`` notes how late it ran (a late timer
  is a loop held by a callback, a GC pass, or a process the kernel did not run) and the
  loop thread's CPU time meanwhile (``time.thread_time``: near the stall's length, the
  worker's own work; near zero, the kernel ran something else);
- **GC passes**: ``gc.callbacks`` times each collection, wall and CPU, by generation.

``HOOKFLEET_BENCH_GC=as-before`` starts the worker as it was before the collect-and-
freeze of ``AioWorker._prepare_app`` (for the A/B of ``tests.bench.tail --ab``).

Each worker writes one JSON file into ``$HOOKFLEET_BENCH_TIMINGS`` when it stops
(``{"server_ms": [[t, ms], ...], "stalls_ms": [...], "stall_cpu_ms": [...], "gc_ms":
{"0": [...], ...}, "gc_cpu_ms": {...}, "gc_frozen": n}``, each entry ``[time.monotonic()
when it ended, milliseconds]``, so a reader keeps a window).
Selected on the command line (``--worker-class tests.bench.timed_worker.TimedAioWorker``,
which overrides the config module's ``worker_class``).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ingest import aio_worker
from ingest.aio_worker import AioWorker

_PROBE_S = 0.002
# Stalls shorter than this are the timer's own granularity: not kept.
_STALL_FLOOR_S = 0.002


class _Stopwatch:
    """One worker's timings (the loop's thread only, so no lock)."""

    def __init__(self) -> None:
        self.server_ms: list[tuple[float, float]] = []
        self.stalls_ms: list[tuple[float, float]] = []
        # The loop thread's CPU milliseconds during each stall: near the stall's length,
        # the worker's own work held the loop; near zero, the kernel ran something else.
        self.stall_cpu_ms: list[tuple[float, float]] = []
        self.gc_ms: dict[str, list[tuple[float, float]]] = {"0": [], "1": [], "2": []}
        self.arrived: dict[int, float] = {}
        self._gc_started = self._gc_cpu_started = 0.0
        # CPU milliseconds of each pass (what load does not stretch), by generation.
        self.gc_cpu_ms: dict[str, list[tuple[float, float]]] = {"0": [], "1": [], "2": []}

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started, self._gc_cpu_started = time.perf_counter(), time.thread_time()
        else:
            now, generation = time.monotonic(), str(info["generation"])
            took = (time.perf_counter() - self._gc_started) * 1000
            cpu = (time.thread_time() - self._gc_cpu_started) * 1000
            self.gc_ms[generation].append((now, round(took, 3)))
            self.gc_cpu_ms[generation].append((now, round(cpu, 3)))

    def dump(self, directory: str) -> None:
        path = Path(directory) / f"worker-{os.getpid()}.json"
        body = {
            "server_ms": self.server_ms,
            "stalls_ms": self.stalls_ms,
            "stall_cpu_ms": self.stall_cpu_ms,
            "gc_ms": self.gc_ms,
            "gc_cpu_ms": self.gc_cpu_ms,
            "gc_frozen": gc.get_freeze_count(),
        }
        path.write_text(json.dumps(body))


WATCH = _Stopwatch()
_data_received = aio_worker.Connection.data_received
_write = aio_worker.Connection.write


def _timed_data_received(self: aio_worker.Connection, data: bytes) -> None:
    if not self.buffer and not self.serving and id(self) not in WATCH.arrived:
        WATCH.arrived[id(self)] = time.perf_counter()
    _data_received(self, data)


def _timed_write(self: aio_worker.Connection, data: bytes) -> None:
    _write(self, data)
    arrived = WATCH.arrived.pop(id(self), None)
    if arrived is not None:
        took = (time.perf_counter() - arrived) * 1000
        WATCH.server_ms.append((time.monotonic(), round(took, 3)))


def _nothing() -> None:
    return None


class TimedAioWorker(AioWorker):
    """AioWorker with the instruments above (installed after the fork)."""

    def run(self) -> None:
        setattr(aio_worker.Connection, "data_received", _timed_data_received)  # noqa: B010
        setattr(aio_worker.Connection, "write", _timed_write)  # noqa: B010
        if os.environ.get("HOOKFLEET_BENCH_GC") == "as-before":
            # The worker's own gc.collect() and gc.freeze() become no-ops.
            setattr(aio_worker, "gc", SimpleNamespace(collect=_nothing, freeze=_nothing))  # noqa: B010
        gc.callbacks.append(WATCH.on_gc)
        try:
            super().run()
        finally:
            directory = os.environ.get("HOOKFLEET_BENCH_TIMINGS")
            if directory:
                WATCH.dump(directory)

    def _prepare_app(self) -> None:
        super()._prepare_app()
        self._probe_next()

    def _probe_next(self) -> None:
        self.loop.call_later(_PROBE_S, self._probe, time.monotonic() + _PROBE_S, time.thread_time())

    def _probe(self, due: float, cpu: float) -> None:
        # uvloop's timers are in whole milliseconds: up to ~1 ms late is the clock.
        now = time.monotonic()
        if now - due > _STALL_FLOOR_S:
            WATCH.stalls_ms.append((now, round((now - due) * 1000, 3)))
            WATCH.stall_cpu_ms.append((now, round((time.thread_time() - cpu) * 1000, 3)))
        self._probe_next()

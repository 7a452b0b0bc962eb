"""Where the tail at half rate comes from: ``python -m tests.bench.tail``.

Starts a private Redis and one receiver on the Procfile's gunicorn settings with the
shipped worker under a stopwatch (``tests.bench.timed_worker``), finds its maximum rate
with wrk (16 connections, like the benchmark) unless ``--rate`` is given, then paces
deliveries at half of it with the benchmark's generator (``tests.bench.load``) and
splits each figure:

- the generator's: p99 from the due time (what the benchmark reports), its lag (sent
  minus due), the time from its send to the answer read, its own loop stalls;
- the server's: time per request in the worker's loop (first byte read -> answer
  written), the worker loop's stalls, its GC passes by generation.

Each of ``--rounds`` starts a fresh receiver; ``--ab`` alternates the shipped worker
with the worker as it was before its ``gc.freeze`` (``HOOKFLEET_BENCH_GC=as-before``).
The load average is printed with each round; on a shared machine the split and the CPU
times are what to read, not the latency levels.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import deliveries, load
from tests.bench.fleet import Proc, receiver_env, web_command

TIMED_WORKER = "tests.bench.timed_worker.TimedAioWorker"


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


def server_split(directory: Path, since: float, until: float) -> dict[str, Any]:
    """The workers' timing files (tests.bench.timed_worker) summed over workers, the
    entries between ``since`` and ``until`` (``time.monotonic()``) only."""

    def window(entries: list[list[float]]) -> list[float]:
        return [ms for at, ms in entries if since <= at <= until]

    server: list[float] = []
    stalls: list[float] = []
    gcs: dict[str, list[float]] = {"0": [], "1": [], "2": []}
    gc_cpu: dict[str, list[float]] = {"0": [], "1": [], "2": []}
    frozen: list[int] = []
    stall_cpu: list[float] = []
    per_worker: list[int] = []
    for path in sorted(directory.glob("worker-*.json")):
        body = json.loads(path.read_text())
        served = window(body["server_ms"])
        server += served
        per_worker.append(len(served))
        stalls += window(body["stalls_ms"])
        stall_cpu += window(body["stall_cpu_ms"])
        for generation, passes in body["gc_ms"].items():
            gcs[generation] += window(passes)
        for generation, passes in body["gc_cpu_ms"].items():
            gc_cpu[generation] += window(passes)
        frozen.append(body["gc_frozen"])
    return {
        "requests_by_worker": per_worker,
        "server_p50_ms": round(_pct(server, 50), 3),
        "server_p99_ms": round(_pct(server, 99), 3),
        "server_p999_ms": round(_pct(server, 99.9), 3),
        "server_max_ms": round(max(server, default=0.0), 3),
        "loop_stalls_over_2ms": len(stalls),
        "loop_stalls_over_10ms": sum(1 for s in stalls if s > 10),
        "loop_stall_max_ms": round(max(stalls, default=0.0), 3),
        # Stalls in which the loop's own thread ran 5 ms or more: its own work.
        "own_work_stalls_over_5ms": sum(1 for c in stall_cpu if c >= 5),
        "own_work_stall_cpu_max_ms": round(max(stall_cpu, default=0.0), 3),
        "gc_passes": {g: len(p) for g, p in gcs.items()},
        "gc_max_ms": {g: round(max(p, default=0.0), 3) for g, p in gcs.items()},
        "gc_cpu_max_ms": {g: round(max(p, default=0.0), 3) for g, p in gc_cpu.items()},
        "gc_frozen_objects": frozen,
    }


def one_round(
    env: dict[str, str], work: Path, n: int, rate: float | None, seconds: float, variant: str
) -> dict[str, Any]:
    """A fresh receiver: wrk at full speed (unless ``rate``), then paced at half.
    ``variant`` "as-before": the worker without its collect-and-freeze."""
    timings = work / f"timings-{n}"
    timings.mkdir()
    requests = work / f"requests-{n}"
    count = int(7000 * seconds * 2)
    deliveries.write_requests(
        requests, deliveries.requests("standard", count, 0.0, start=n * count)
    )
    command = f"{web_command('ingest:create_app()')} --worker-class {TIMED_WORKER}"
    extra = {"HOOKFLEET_BENCH_TIMINGS": str(timings), "HOOKFLEET_BENCH_GC": variant}
    web = Proc(f"web-{n}", command, {**env, **extra}, work)
    result: dict[str, Any] = {"variant": variant, "load_average": os.getloadavg()}
    try:
        web.start().wait_for_web()
        if rate is None:
            wrk = load.ensure_wrk()
            assert wrk, "wrk is needed to find the maximum rate (or pass --rate)"
            blast = load.run_wrk(wrk, web.url, requests, seconds, 16, threads=2)
            result["max_rate"] = blast["rate"]
            rate = blast["rate"] / 2
        # The blast's requests are claimed: the paced run sends the file's second half.
        paced = work / f"paced-{n}"
        deliveries.write_requests(
            paced, deliveries.requests("standard", count, 0.0, start=(n + 100) * count)
        )
        since = time.monotonic()
        result["paced"] = load.run_python(
            web.url, paced, seconds=seconds, rate=rate, connections=16, probe=True
        )
        until = time.monotonic()
    finally:
        web.stop()
    result["server"] = server_split(timings, since, until)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=None, help="paced rate (default: wrk/2)")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ab",
        action="store_true",
        help="alternate rounds: the shipped worker, then the worker as before its gc.freeze",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hookfleet-tail-"))
    redis_server, env = receiver_env(work)
    try:
        for n in range(args.rounds):
            variant = "as-before" if args.ab and n % 2 else "shipped"
            result = one_round(env, work, n, args.rate, args.seconds, variant)
            print(json.dumps(result), flush=True)
    finally:
        redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do the two paced generators agree? ``python -m tests.bench.paced_check``.

The benchmark's p99 at half rate is timed by wrk paced (tests/bench/wrk_paced.lua) when
wrk is installed, else by the Python paced generator (tests/bench/load.py). This starts
a private Redis and one receiver on the Procfile's settings and paces deliveries at each
of ``--rates`` with both, alternated in each of ``--rounds``, so that at a rate neither
is saturated by the two should read the same p99, and where they part the table shows
which one fell behind: its lag (sent minus due) and the CPU it used per request.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.bench import deliveries, load
from tests.bench.fleet import Proc, receiver_env, web_command


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_cpu(result: dict[str, Any], cpu_before: float) -> dict[str, Any]:
    """``result`` with the CPU its generator process (ended since ``cpu_before``, of
    :func:`_children_cpu`) used per request."""
    cpu = _children_cpu() - cpu_before
    return {**result, "cpu_us_per_request": round(cpu / max(1, result["requests"]) * 1e6, 1)}


def one_rate(
    wrk: str, url: str, work: Path, n: int, rate: float, seconds: float, connections: int
) -> list[dict[str, Any]]:
    """Both generators at ``rate``, each on deliveries of its own (every one new)."""
    results = []
    for k, generator in enumerate(("wrk-paced", "python-paced")):
        requests = work / f"paced-{n}-{k}"
        count = int(rate * seconds * 1.5) + connections
        deliveries.write_requests(
            requests, deliveries.requests("standard", count, 0.0, start=(2 * n + k) * count)
        )
        before = _children_cpu()
        if generator == "wrk-paced":
            result = load.run_wrk_paced(wrk, url, requests, seconds, rate, connections, threads=2)
        else:
            result = load.reached(
                load.run_python(url, requests, seconds=seconds, rate=rate, connections=connections),
                rate,
            )
        results.append({**with_cpu(result, before), "load_average": round(os.getloadavg()[0], 1)})
    return results


def row(result: dict[str, Any]) -> str:
    return (
        f"| {result['generator']} | {result['target_rate']:.0f} | {result['rate']:.0f} "
        f"({result['reached_share']:.0%}) | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | "
        f"{result.get('lag_p99_ms', 0):.1f} | {result['cpu_us_per_request']:.0f}{_own(result)} | "
        f"{result['errors']} | {result['load_average']} |"
    )


def _own(result: dict[str, Any]) -> str:
    """The Python generator's CPU per request while it ran (without starting Python,
    importing and reading its requests), which it measures itself."""
    own = result.get("generator_cpu_us_per_request")
    return "" if own is None else f" ({own:.0f} in its run)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="200,400", help="comma-separated requests/s")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    wrk = load.ensure_wrk()
    if wrk is None:
        parser.error("wrk is not installed and could not be installed")
    work = Path(tempfile.mkdtemp(prefix="hookfleet-paced-"))
    redis_server, env = receiver_env(work)
    web = Proc("web", web_command("ingest:create_app()"), env, work)
    lines = [
        "| generator | asked /s | reached /s | p50 ms | p99 ms | lag p99 ms | "
        "generator process CPU µs/request | errors | load average |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    try:
        web.start().wait_for_web()
        n = 0
        for _ in range(args.rounds):
            for rate in (float(r) for r in args.rates.split(",")):
                for result in one_rate(wrk, web.url, work, n, rate, args.seconds, args.connections):
                    print(json.dumps(result), flush=True)
                    lines.append(row(result))
                n += 1
    finally:
        web.stop()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

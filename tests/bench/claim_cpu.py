"""The receiver process's CPU per claim: the blocking gate (``DedupGate.admit``: called
in this thread, and from an event loop through a thread pool, as an in-loop server
without the pipelined client must) against the pipelined client
(``PipelinedClaims.admit``), one at a time and with 16 claims in flight (a loaded
worker), on a private redis-server; the loops are uvloop's when it is installed.

    python -m tests.bench.claim_cpu [--claims 20000]

CPU is this process's (``time.process_time``: user + system), so Redis's own work is
not in it; wall time is printed beside it. Brief on a loaded machine: compare the rows
of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ingest.claims import PipelinedClaims
from ingest.dedup import DedupGate
from models.broker.redis_links import redis_client
from tests.servers import RedisServer

MESSAGE = "x" * 1500  # about a Celery message of a small delivery


def _measure(name: str, claims: int, work: Callable[[], None]) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:<40} {cpu / claims * 1e6:7.1f} us CPU/claim {wall / claims * 1e6:7.1f} us wall")


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # the in-loop receiver's loop (h18w's worker); optional here
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=20_000)
    n = parser.parse_args().claims
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory)).start()
        try:
            client = redis_client(server.url, timeout_s=2.0)
            gate = DedupGate(client, client, same_server=True)

            def blocking() -> None:
                for i in range(n):
                    gate.admit(f"b{i}", "claim", 60, "q", MESSAGE)

            def in_threads(in_flight: int, prefix: str) -> Callable[[], None]:
                async def claim_all() -> None:
                    loop = asyncio.get_running_loop()
                    pool = ThreadPoolExecutor(in_flight)

                    async def lane(start: int) -> None:
                        for i in range(start, n, in_flight):
                            await loop.run_in_executor(
                                pool, gate.admit, f"{prefix}{i}", "claim", 60, "q", MESSAGE
                            )

                    await asyncio.gather(*(lane(start) for start in range(in_flight)))
                    pool.shutdown()

                return lambda: _run_loop(claim_all())

            def pipelined(in_flight: int, prefix: str) -> Callable[[], None]:
                async def claim_all() -> None:
                    claims = PipelinedClaims.for_gate(gate)
                    assert claims is not None
                    await claims.admit("warm", "claim", 60, "q", MESSAGE)

                    async def lane(start: int) -> None:
                        for i in range(start, n, in_flight):
                            await claims.admit(f"{prefix}{i}", "claim", 60, "q", MESSAGE)

                    await asyncio.gather(*(lane(start) for start in range(in_flight)))
                    await claims.aclose()

                return lambda: _run_loop(claim_all())

            gate.admit("warm", "claim", 60, "q", MESSAGE)
            _measure("DedupGate.admit (blocking)", n, blocking)
            _measure("DedupGate.admit in a pool, 16 in flight", n, in_threads(16, "t"))
            _measure("PipelinedClaims.admit, 1 in flight", n, pipelined(1, "p"))
            _measure("PipelinedClaims.admit, 16 in flight", n, pipelined(16, "s"))
        finally:
            server.stop()


if __name__ == "__main__":
    main()

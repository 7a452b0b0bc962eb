"""What a rate limit costs the receiver's one Redis step: ``python -m tests.bench.rate_limit_step``.

Runs :meth:`ingest.dedup.DedupGate.admit` on a private Redis for new keys, in rounds
that alternate the cases (each round starting with another) so a busy machine slows
them alike, and prints per case the
median over rounds of two figures: Redis's own time in the script (``INFO
commandstats``, ``usec_per_call`` of ``EVALSHA``) and the client's wall time per call.
The cases: limits off; a limit that never refuses (every call reads and spends a
token); a limit that refuses every call (it writes nothing). ``--before FILE`` adds the
claim-and-enqueue script of an earlier version, run with the same arguments as "off"
(``git show <rev>:ingest/claim_and_enqueue.lua > FILE``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from ingest.dedup import DedupGate, RateLimit, rate_key
from tests.servers import RedisServer

QUEUE = "hookfleet.default"
MESSAGE = "m" * 600  # about a small delivery's Celery message
NEVER_REFUSES = RateLimit(rate_key("standard"), per_second=1e9, burst=10**9)
ALWAYS_REFUSES = RateLimit(rate_key("stripe"), per_second=1e-6, burst=1)

Admit = Callable[[str], object]


def cases(client: redis.Redis, before: Path | None) -> dict[str, Admit]:
    gate = DedupGate(client, client, same_server=True)
    found: dict[str, Admit] = {
        "off": lambda key: gate.admit(key, "c", 60, QUEUE, MESSAGE, 100_000),
        "on (accepted, token spent)": lambda key: gate.admit(
            key, "c", 60, QUEUE, MESSAGE, 100_000, rate_limit=NEVER_REFUSES
        ),
        "on (refused 429)": lambda key: gate.admit(
            key, "c", 60, QUEUE, MESSAGE, 100_000, rate_limit=ALWAYS_REFUSES
        ),
    }
    if before is not None:
        old = DedupGate(client, client, same_server=True)
        # The same gate, running the earlier script.
        old._script = client.register_script(before.read_text())
        found["before (old script)"] = lambda key: old.admit(key, "c", 60, QUEUE, MESSAGE, 100_000)
    return found


def measure(client: redis.Redis, admit: Admit, count: int, tag: str) -> tuple[float, float]:
    """(server µs per script, client µs per call) for ``count`` new keys."""
    admit(f"{tag}:warm")  # caches the script (EVAL once), dials the connection
    client.config_resetstat()
    started = time.perf_counter()
    for n in range(count):
        admit(f"{tag}:{n}")
    wall_us = (time.perf_counter() - started) * 1e6 / count
    server_us = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    return server_us, wall_us


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", type=Path, help="an earlier claim_and_enqueue.lua")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch) / "redis").start()
        try:
            client = server.client()
            admits = cases(client, args.before)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in admits}
            names = list(admits)
            for round_ in range(args.rounds):
                # A different case first each round: none gains from going first.
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    admit = admits[name]
                    client.flushall()  # every case starts from the same empty Redis
                    results[name].append(measure(client, admit, args.count, f"r{round_}"))
        finally:
            server.stop()
    base_server = statistics.median(s for s, _ in results["off"])
    base_wall = statistics.median(w for _, w in results["off"])
    print(f"{args.rounds} rounds x {args.count} calls; medians over rounds")
    print(f"{'case':30} {'Redis µs/script':>16} {'ratio':>6} {'client µs/call':>15} {'ratio':>6}")
    for name, samples in results.items():
        server_us = statistics.median(s for s, _ in samples)
        wall_us = statistics.median(w for _, w in samples)
        print(
            f"{name:30} {server_us:16.2f} {server_us / base_server:6.2f} "
            f"{wall_us:15.1f} {wall_us / base_wall:6.2f}"
        )


if __name__ == "__main__":
    main()

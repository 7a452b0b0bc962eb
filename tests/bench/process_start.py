"""What each Hookfleet process kind costs to start: CPU-s of an idle start and clean stop
of the Procfile's ``web`` (master and ``WEB_CONCURRENCY`` workers), ``worker_high`` (main
process and its pool children) and ``beat``, and of two ``hookfleet`` commands, against a
private redis-server and a SQLite file.

    python -m tests.bench.process_start [--rounds 3]

Each process is started as the tests start it (tests/processes.py, under ``nice -n 10``),
stopped with SIGTERM once ready, and reaped by this process: its CPU is this process's
``RUSAGE_CHILDREN`` before and after (user + system of the process and of every child it
reaped). Mostly imports; the best of the rounds is the least disturbed by other load.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.processes import TEST_SETTINGS, Processes, procfile
from tests.servers import RedisServer, sqlite_url, wait_until

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
COMMANDS = {"hookfleet --help": ["--help"], "hookfleet stats": ["stats"]}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def beat_ready(fleet: Processes) -> Callable[[], None]:
    return lambda: wait_until(lambda: "Starting" in fleet.log("beat"), 60, "beat to start")


def one_round(fleet: Processes) -> dict[str, float]:
    ready = {
        "web": fleet.wait_for_web,
        "worker_high": lambda: fleet.wait_for_worker("worker_high"),
        "beat": beat_ready(fleet),
    }
    spent = {}
    for name, wait in ready.items():
        before = children_cpu_s()
        fleet.start(name, f"nice -n 10 {procfile()[name]}")
        wait()
        time.sleep(0.5)  # past "ready": what an idle process does next is counted too
        fleet.stop(name)
        spent[name] = children_cpu_s() - before
    for label, args in COMMANDS.items():
        before = children_cpu_s()
        subprocess.run(["nice", "-n", "10", HOOKFLEET, *args], env=fleet.env, capture_output=True)
        spent[label] = children_cpu_s() - before
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    tmp = Path(tempfile.mkdtemp(prefix="hookfleet_start_"))
    redis_server = RedisServer(tmp / "redis").start()
    database_url = sqlite_url(tmp / "db")
    results: dict[str, list[float]] = {}
    try:
        for n in range(rounds):
            fleet = Processes.for_servers(
                tmp / f"round{n}",
                HOOKFLEET_REDIS_URL=redis_server.url,
                HOOKFLEET_DATABASE_URL=database_url,
                **TEST_SETTINGS,
            )
            if n == 0:
                subprocess.run([HOOKFLEET, "migrate"], env=fleet.env, check=True)
            for kind, cpu_s in one_round(fleet).items():
                results.setdefault(kind, []).append(cpu_s)
    finally:
        redis_server.stop()
    for kind, runs in results.items():
        shown = " ".join(f"{cpu_s:.2f}" for cpu_s in runs)
        print(f"{kind:18s} best {min(runs):.2f} CPU-s  (rounds: {shown})")


if __name__ == "__main__":
    main()

"""Resident memory of a ``hookfleet.high`` worker taking a burst of long Retell calls.

Starts Redis, a SQLite database (MariaDB with ``--mariadb``, its packet as shipped:
32M) and the receiver; posts 20 call_analyzed bodies of
~3.3 MB and 8 of ~6.1 MB (signed, as Retell sends them), so they wait on the queue as
after a burst; then starts ``worker_high`` (Procfile, two pool processes) and samples
VmRSS of its main process and of each pool process every 0.2 s until every event is
settled and 5 s after. Prints the peak and the last sample (the plateau) of each.
``NAME=value`` arguments go to the fleet's environment, e.g. ``HOOKFLEET_BATCH_BYTES=0
HOOKFLEET_WORKER_MAX_MEMORY_MB=0`` for batches bounded by count only.

    .venv/bin/python -m tests.bench.measure_worker_memory [--mariadb] [NAME=value ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import create_engine, text

from ingest.providers import retell
from models.migrate import upgrade
from models.settings import Settings
from tests.bench.fleet import children, rss_kb
from tests.long_calls import call_body
from tests.processes import Processes, request, running_fleet
from tests.servers import MariaDBServer, RedisServer

KEY = "key_measure_memory_0123456789abcdef"


def bodies() -> list[bytes]:
    out = [call_body(f"call_mem_a{n}", 120, scrubbed=True) for n in range(20)]
    for n in range(8):
        call = json.loads(call_body(f"call_mem_b{n}", 120, scrubbed=True))
        call["call"]["transcript"] += " ok" * ((6_100_000 - len(out[0])) // 3)
        out.append(json.dumps(call, separators=(",", ":")).encode())
    return out


def statuses(database: str) -> dict[str, int]:
    engine = create_engine(database)
    try:
        with engine.connect() as db:
            query = text("SELECT status, count(*) FROM webhook_events GROUP BY status")
            return {str(status): int(count) for status, count in db.execute(query)}
    finally:
        engine.dispose()


def settled(database: str) -> int:
    counts = statuses(database)
    return sum(counts.get(status, 0) for status in ("processed", "failed", "dead"))


def run(fleet: Processes, database: str) -> None:
    burst = bodies()
    for body in burst:
        signature = retell.sign(KEY, body, int(time.time() * 1000))
        status = request(
            fleet.base_url, "POST", "/webhooks/retell", body, {retell.HEADER: signature}
        )[0]
        assert status == 202, status
    main_pid = fleet.start("worker_high").pid  # bash execs celery: the same process
    peaks: dict[str, int] = defaultdict(int)
    last: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            values = {"main": rss_kb(main_pid)}
            for child in children(main_pid):
                values[f"pool process {child}"] = rss_kb(child)
            for name, value in values.items():
                peaks[name] = max(peaks[name], value)
            last.clear()
            last.update(values)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = time.time() + 600
    while settled(database) < len(burst) and time.time() < deadline:
        time.sleep(1)
    time.sleep(5)
    stop.set()
    sampler.join()
    print(f"events: {statuses(database)}")
    for name in sorted(peaks):
        print(
            f"{name:<24} peak {peaks[name] // 1024:>5} MB   last {last.get(name, 0) // 1024:>5} MB"
        )


def main(mariadb: bool, overrides: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_server = RedisServer(tmp / "redis").start()
        mariadb_server = None
        if mariadb:
            mariadb_server = MariaDBServer(
                tmp / "mariadb", extra_args=("--max-allowed-packet=32M",)
            ).start()
            database = mariadb_server.create_database()
        else:
            database = f"sqlite:///{tmp / 'memory.db'}"
        upgrade(Settings(database_url=database))
        try:
            with running_fleet(
                tmp,
                redis_server.url,
                database,
                names=("web",),
                HOOKFLEET_RETELL_SECRETS=KEY,
                HOOKFLEET_TASK_TIME_LIMIT_S="300",
                **overrides,
            ) as fleet:
                run(fleet, database)
        finally:
            redis_server.stop()
            if mariadb_server is not None:
                mariadb_server.stop()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main("--mariadb" in arguments, dict(a.split("=", 1) for a in arguments if "=" in a))

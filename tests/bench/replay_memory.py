"""Peak RSS of ``hookfleet replay`` over a million stored events.

``python -m tests.bench.replay_memory [N]`` starts a private MariaDB and Redis, stores N
dead ``webhook_events`` rows (1 KiB payloads) with one INSERT … SELECT, then runs the real
console script under ``/usr/bin/time -v``, once as a dry run and once publishing every
event to ``hookfleet.low``, and prints the peak RSS and wall time of each.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from models.migrate import upgrade
from models.settings import Settings
from tests.servers import MariaDBServer, RedisServer, clean_env

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")


def seed(server: MariaDBServer, url: str, n: int) -> None:
    database = url.rsplit("/", 1)[1].split("?")[0]
    payload = '{"event":"call_ended","call":{"call_id":"c","transcript":"' + "x" * 900 + '"}}'
    statement = (  # our own constants only: a database name and a count
        f"INSERT INTO {database}.webhook_events (provider, event_id, event_type, queue, "  # noqa: S608
        "correlation_id, status, attempts, last_error, headers, payload, received_at, "
        "created_at, updated_at) "
        "SELECT 'retell', CONCAT('call_', seq, ':call_ended'), 'call_ended', 'hookfleet.high', "
        f"'corr', 'dead', 9, 'OperationalError', '{{}}', '{payload}', NOW(6), NOW(6), NOW(6) "
        f"FROM seq_1_to_{n}"
    )
    server.sql(f"USE {database}; {statement}")


def measure(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-v", HOOKFLEET, *args], env=env, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if done.returncode != 0 or peak is None:
        raise RuntimeError(done.stdout + done.stderr)
    return wall, int(peak.group(1)), done.stdout.strip().splitlines()[-1]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        mariadb = MariaDBServer(Path(tmp) / "db").start()
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            url = mariadb.create_database()
            upgrade(Settings(database_url=url))
            seed(mariadb, url, n)
            env = clean_env(HOOKFLEET_DATABASE_URL=url, HOOKFLEET_REDIS_URL=redis_server.url)
            for label, args in [
                ("dry run", ["replay", "--all-dead", "--dry-run"]),
                ("publish", ["replay", "--all-dead", "--rate", "0"]),
            ]:
                wall, peak_kib, last = measure(args, env)
                print(
                    f"{label:8} {n:>9} events  {wall:6.1f} s  peak RSS {peak_kib / 1024:6.1f} MiB"
                )
                print(f"         {last}")
            print(f"hookfleet.low holds {redis_server.client().llen('hookfleet.low')} messages")
        finally:
            redis_server.stop()
            mariadb.stop()


if __name__ == "__main__":
    main()

"""Time and peak memory of ``hookfleet integrity check`` on a large MariaDB (not a test).

    .venv/bin/python -m tests.bench.measure_integrity 20000 200000

For each size: a private MariaDB database with that many customers (and as many calls),
of which 1% have raw phones, 0.5% a case-variant twin, and 0.5% of calls a deleted staff
member; then ``/usr/bin/time -v hookfleet integrity check``, ``fix`` and ``check`` again, each
with its wall time and peak RSS. Bounded memory shows as the same RSS at every size.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

from models.migrate import upgrade
from models.settings import Settings
from tests.servers import MariaDBServer, clean_env

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")

SEED = [
    # seq_1_to_N is MariaDB's Sequence engine: N rows with no table behind them.
    "INSERT INTO companies (id, name, created_at, updated_at) VALUES (1, 'Big', NOW(), NOW())",
    """INSERT INTO customers
         (id, company_id, company_key, name, email, phone, phone_key, phone_type, phone_valid,
          created_at, updated_at)
       SELECT seq, 1, 1, CONCAT('Customer ', seq), CONCAT('user', seq, '@example.com'),
              IF(MOD(seq, 100) = 0, CONCAT('0151 ', LPAD(seq, 8, '0')),
                 CONCAT('+49151', LPAD(seq, 8, '0'))),
              IF(MOD(seq, 100) = 0, NULL, CONCAT('+49151', LPAD(seq, 8, '0'))),
              IF(MOD(seq, 100) = 0, NULL, 'mobile'), MOD(seq, 100) <> 0, NOW(), NOW()
       FROM seq_1_to_{n}""",
    # The same company's case-variant twins, written past the model (no phone, no name).
    """INSERT INTO customers (company_id, company_key, email, phone_valid, created_at, updated_at)
       SELECT 1, 1, CONCAT(' User', seq, '@Example.com'), 0, NOW(), NOW()
       FROM seq_1_to_{n} WHERE MOD(seq, 200) = 0""",
    """INSERT INTO calls (call_id, company_id, customer_id, staff_id, status, event_rank,
                          created_at, updated_at)
       SELECT CONCAT('call_', seq), 1, seq, IF(MOD(seq, 200) = 0, 999999, NULL), 'ended', 2,
              NOW(), NOW()
       FROM seq_1_to_{n}""",
]


def measure(server: MariaDBServer, customers: int) -> str:
    url = server.create_database()
    upgrade(Settings(database_url=url))
    engine = create_engine(url)
    started = time.monotonic()
    with engine.begin() as connection:
        connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        for statement in SEED:
            connection.exec_driver_sql(statement.format(n=customers))
    engine.dispose()
    seeded = time.monotonic() - started
    lines = [f"{customers} customers (seeded in {seeded:.1f} s):"]
    for command in ("check", "fix", "check"):
        lines.append(_timed(url, command))
    return "\n".join(lines)


def _timed(url: str, command: str) -> str:
    done = subprocess.run(
        ["/usr/bin/time", "-v", HOOKFLEET, "integrity", command],
        env=clean_env(HOOKFLEET_DATABASE_URL=url),
        capture_output=True,
        text=True,
    )
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", done.stderr)
    summary = [line for line in done.stdout.splitlines() if not line.startswith("      ")]
    return (
        f"  hookfleet integrity {command}: exit {done.returncode}, wall {wall and wall.group(1)}, "
        f"peak RSS {rss and int(rss.group(1)) // 1024} MiB\n    " + "\n    ".join(summary)
    )


def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        server = MariaDBServer(Path(scratch)).start()
        try:
            for size in sizes:
                print(measure(server, size), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [200_000])

"""The exit watchdog of answered calls' records (ingest/late_records.py): whatever holds
an exit past its window, the records not durable are named at ERROR by event id and the
process ends before gunicorn's master would SIGKILL it. A real child process, blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import logging, sys, time
    import redis
    from ingest.late_records import LateRecord, LateRecords

    class Line(logging.Formatter):
        def format(self, record):
            return f"{record.levelname}|{record.getMessage()}|{getattr(record, 'event_id', '')}"

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(Line())
    logger = logging.getLogger("hookfleet.ingest")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def refused():
        raise redis.ConnectionError("frozen")

    records = LateRecords()
    unreachable = "sqlite:///" + sys.argv[1] + "/no/such/dir/hf.db"
    for n in range(3):
        records.keep(LateRecord(refused, f"call_{n}", time.monotonic(), "{}", unreachable))
    armed = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the parent
    print(f"ARMED|{armed}|", flush=True)
    records.arm_watchdog(armed + float(sys.argv[2]))
    time.sleep(60)  # the exit is stuck (a database connect, a frozen Redis)
    print("NOT ENDED", flush=True)
    """
)


def test_a_stuck_exit_names_every_record_not_durable_and_ends_before_its_window(
    tmp_path: Path,
) -> None:
    window_s = 3.0
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(window_s)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    ended = time.monotonic()
    lines = child.stdout.splitlines()
    armed = float(next(line for line in lines if line.startswith("ARMED|")).split("|")[1])
    named = sorted(
        line.split("|")[2] for line in lines if line.startswith("ERROR|inline event not recorded|")
    )
    assert named == ["call_0", "call_1", "call_2"], child.stdout + child.stderr  # once each
    assert "NOT ENDED" not in child.stdout
    assert child.returncode != 0
    assert ended - armed < window_s  # its margin (1.5 s) left for a loaded machine

"""The exit watchdog of answered calls' records (ingest/late_records.py): whatever holds
an exit past its window, the records not durable are named at ERROR by event id and the
process ends before gunicorn's master would SIGKILL it. A real child process, blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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

# The exit's last batch write is sent and never answers (a database 1 s away mid-commit):
# whether its rows landed is unknown when the window ends.
WRITE_IN_FLIGHT = textwrap.dedent(
    """
    import logging, sys, time
    import redis
    import ingest.late_records as late
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

    late.shelve = lambda url, messages: time.sleep(60)  # sent, never answered
    records = LateRecords()
    for n in range(2):
        records.keep(LateRecord(refused, f"call_{n}", time.monotonic(), "{}", "sqlite://"))
    armed = time.monotonic()
    print(f"ARMED|{armed}|", flush=True)
    records.arm_watchdog(armed + float(sys.argv[2]))
    {exit}
    print("ENDED", flush=True)
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


def run_child(code: str, tmp_path: Path, window_s: float) -> tuple[list[str], float, float]:
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(window_s)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ended = time.monotonic()
    lines = child.stdout.splitlines()
    assert lines, child.stderr
    armed = float(next(line for line in lines if line.startswith("ARMED|")).split("|")[1])
    return lines, armed, ended


@pytest.mark.parametrize(
    "ending",
    [
        "records.finish(armed + float(sys.argv[2]))",  # the event-loop worker's exit
        "records._at_exit()",  # the gthread worker's: at interpreter end, after SIGTERM
    ],
)
def test_a_record_whose_write_was_in_flight_at_exit_is_named_unconfirmed_not_lost(
    tmp_path: Path, ending: str
) -> None:
    lines, _, _ = run_child(WRITE_IN_FLIGHT.replace("{exit}", ending), tmp_path, 4.0)
    unconfirmed = sorted(
        line.split("|")[2]
        for line in lines
        if line.startswith("ERROR|inline event record unconfirmed|")
    )
    assert unconfirmed == ["call_0", "call_1"], lines
    assert not [line for line in lines if "inline event not recorded" in line], lines


def test_the_exit_at_interpreter_end_tries_until_the_window_armed_at_sigterm(
    tmp_path: Path,
) -> None:
    """The gthread worker leaves through ``atexit``: it must use what is left of the
    window armed at SIGTERM (an outsider's gthread workers gave up 6-10 s before the
    master's kill with the database reachable, 1 s away), not a fixed few seconds."""
    code = CHILD.replace(
        "records = LateRecords()\n",
        "import ingest.late_records as late\n"
        "from sqlalchemy.exc import OperationalError\n"
        "def down(url, messages):\n"
        "    raise OperationalError('INSERT', {}, Exception('down'))\n"
        "late.shelve = down  # the database refuses: every try fails at once\n"
        "records = LateRecords()\n",
    ).replace(
        "time.sleep(60)  # the exit is stuck (a database connect, a frozen Redis)\n",
        "records._at_exit()\nprint(f'LEFT|{time.monotonic()}|', flush=True)\n",
    )
    assert "LEFT|" in code and "late.shelve = down" in code
    window_s = 9.0
    lines, armed, _ = run_child(code, tmp_path, window_s)
    left = float(next(line for line in lines if line.startswith("LEFT|")).split("|")[1])
    # Tried until the window less its 3 s reserve (a fixed exit gave up after ~1 s).
    assert left - armed > window_s - 3.0 - 0.5, lines
    assert left - armed < window_s, lines
    named = [line for line in lines if line.startswith("ERROR|inline event not recorded|")]
    assert len(named) == 3, lines

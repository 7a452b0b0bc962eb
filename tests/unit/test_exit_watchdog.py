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

# Each row runs a child interpreter and waits out an exit window (4-13 s apiece): not in
# the inner loop (README *Tests*: ``slow``).
pytestmark = pytest.mark.slow

# A child process with three parts: what its database does, how many records it keeps
# (Redis refuses them all), and how its exit ends after the watchdog is armed.
PREAMBLE = textwrap.dedent(
    """
    import logging, sys, time
    import redis
    import ingest.late_records as late
    from ingest.late_records import LateRecord, LateRecords
    from sqlalchemy.exc import OperationalError

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

    def down(url, messages):
        raise OperationalError("INSERT", {}, Exception("down"))

    unreachable = "sqlite:///" + sys.argv[1] + "/no/such/dir/hf.db"
    """
)

KEEP_AND_ARM = textwrap.dedent(
    """
    records = LateRecords()
    for n in range(int(sys.argv[3])):
        records.keep(LateRecord(refused, f"call_{n}", time.monotonic(), "{}", unreachable))
    armed = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the parent
    print(f"ARMED|{armed}|", flush=True)
    records.arm_watchdog(armed + float(sys.argv[2]))
    """
)

# Its database: an unreachable SQLite path; one that refuses every write at once; a
# write sent and never answered (a database 1 s away mid-commit: whether its rows
# landed is unknown when the window ends).
UNREACHABLE = ""
REFUSING = "late.shelve = down\n"
NEVER_ANSWERS = "late.shelve = lambda url, messages: time.sleep(60)\n"
TAKING = "late.shelve = lambda url, messages: len(messages)\n"

STUCK = "time.sleep(60)  # the exit is stuck (a database connect, a frozen Redis)\n"


def run_child(
    database: str, records: int, ending: str, tmp_path: Path, window_s: float
) -> tuple[subprocess.CompletedProcess[str], list[str], float, float]:
    """Run the child; its result, stdout lines, when it armed and when it ended."""
    code = PREAMBLE + database + KEEP_AND_ARM + ending + 'print("NOT ENDED", flush=True)\n'
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(window_s), str(records)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ended = time.monotonic()
    lines = child.stdout.splitlines()
    assert lines, child.stderr
    armed = float(next(line for line in lines if line.startswith("ARMED|")).split("|")[1])
    return child, lines, armed, ended


def test_a_stuck_exit_names_every_record_not_durable_and_ends_before_its_window(
    tmp_path: Path,
) -> None:
    window_s = 3.0
    child, lines, armed, ended = run_child(UNREACHABLE, 3, STUCK, tmp_path, window_s)
    named = sorted(
        line.split("|")[2] for line in lines if line.startswith("ERROR|inline event not recorded|")
    )
    assert named == ["call_0", "call_1", "call_2"], child.stdout + child.stderr  # once each
    assert "NOT ENDED" not in child.stdout
    assert child.returncode != 0
    assert "ERROR|receiver exit overran its window: ending the process|" in lines
    assert ended - armed < window_s  # its margin (1.5 s) left for a loaded machine


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
    _, lines, _, _ = run_child(NEVER_ANSWERS, 2, ending + "\n", tmp_path, 4.0)
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
    master's kill with the database reachable, 1 s away), not a fixed few seconds; and
    records it lost end the process with status 1 (an outsider's exits that lost calls
    ended 0)."""
    window_s = 9.0
    child, lines, armed, ended = run_child(REFUSING, 3, "records._at_exit()\n", tmp_path, window_s)
    # Tried until the window less its 3 s reserve (a fixed exit gave up after ~1 s).
    assert ended - armed > window_s - 3.0 - 0.5, lines
    assert ended - armed < window_s, lines
    named = [line for line in lines if line.startswith("ERROR|inline event not recorded|")]
    assert len(named) == 3, lines
    assert "NOT ENDED" not in child.stdout
    assert child.returncode == 1


def test_an_exit_that_lost_no_record_at_interpreter_end_goes_on(tmp_path: Path) -> None:
    """Every record in the database by the exit: no status of its own (the interpreter
    ends as it would)."""
    child, lines, _, _ = run_child(TAKING, 2, "records._at_exit()\n", tmp_path, 6.0)
    assert "NOT ENDED" in child.stdout
    assert child.returncode == 0
    assert not [line for line in lines if line.startswith("ERROR|")], lines


def test_a_stuck_exit_with_every_record_in_the_database_ends_with_a_warning_and_status_0(
    tmp_path: Path,
) -> None:
    """Nothing lost: the records are left to the stuck-work sweep (WARNING each), and the
    window's end is a WARNING with exit status 0, not an ERROR that pages for nothing."""
    window_s = 3.0
    child, lines, armed, ended = run_child(TAKING, 3, STUCK, tmp_path, window_s)
    swept = sorted(
        line.split("|")[2]
        for line in lines
        if line.startswith("WARNING|inline event left to the stuck-work sweep|")
    )
    assert swept == ["call_0", "call_1", "call_2"], child.stdout + child.stderr
    assert "WARNING|receiver exit overran its window: ending the process|" in lines, lines
    assert not [line for line in lines if line.startswith("ERROR|")], lines
    assert "NOT ENDED" not in child.stdout
    assert child.returncode == 0
    assert ended - armed < window_s

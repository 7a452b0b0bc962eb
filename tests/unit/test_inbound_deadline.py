"""The inbound answer's shared deadline and the record writes' skipping, on their own
(the processes and the slow servers: tests/e2e/test_slow_backends_inbound.py)."""

from __future__ import annotations

import time

import pytest

from ingest import inbound_record
from ingest.call_deadline import ARRIVED, CallDeadline, arrived_at
from ingest.inbound_record import DatabaseWatch, answer_bound_s
from models.settings import Settings


def test_a_step_gets_the_smaller_of_its_bound_and_what_is_left() -> None:
    deadline = CallDeadline(time.monotonic() + 0.5)
    assert 0.4 < deadline.within(1.0) <= 0.5
    assert deadline.within(0.1) == 0.1
    assert CallDeadline(time.monotonic() - 1).within(1.0) == 0.0


def test_the_deadline_counts_from_the_arrival_the_event_loop_noted() -> None:
    arrived = time.monotonic() - 2.0  # the call waited 2 s for a thread
    assert arrived_at({ARRIVED: arrived}) == arrived
    assert abs(arrived_at({}) - time.monotonic()) < 0.1  # no loop: its thread took it now


def test_the_answer_bound_is_the_budget_the_redis_try_and_the_database_write() -> None:
    assert answer_bound_s(Settings(inbound_budget_ms=300)) == pytest.approx(1.375)


def test_a_slow_write_skips_the_writes_then_one_call_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbound_record, "DATABASE_SKIP_S", 0.2)
    watch = DatabaseWatch()
    assert watch.may_write()
    watch.finished(0.2, failed=False)  # fast: nothing changes
    assert watch.may_write()
    watch.finished(inbound_record.SLOW_WRITE_S + 0.1, failed=False)
    assert not watch.may_write()
    time.sleep(0.25)
    assert watch.may_write()  # the trial
    assert not watch.may_write()  # the others wait for it
    watch.finished(0.01, failed=False)  # the trial was fast
    assert watch.may_write() and watch.may_write()


def test_a_failed_write_skips_the_writes() -> None:
    watch = DatabaseWatch()
    watch.finished(0.01, failed=True)
    assert not watch.may_write()

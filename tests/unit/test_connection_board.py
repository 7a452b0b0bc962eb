"""The connection board's spreading protocol (ingest/gunicorn_worker.py ConnectionBoard),
read and written as the workers of one master do, slot by slot, in one process."""

from __future__ import annotations

import select
import time

import pytest

from ingest.gunicorn_worker import (
    ACCEPTING,
    BOARD_STALE_S,
    OUT,
    PAUSED,
    SPREAD_SLACK,
    ConnectionBoard,
)


@pytest.fixture
def board() -> ConnectionBoard:
    board = ConnectionBoard()
    for _ in range(3):
        board.reserve()
    return board


def test_a_worker_pauses_for_a_paused_one_holding_fewer(board: ConnectionBoard) -> None:
    """The burst that went 2 / 14: the first worker paused at 2 no longer counted, so
    the other took all the rest."""
    board.post(0, SPREAD_SLACK, PAUSED)
    board.post(1, 2 * SPREAD_SLACK - 1, ACCEPTING)
    board.release(2)

    assert board.may_accept(1, 2 * SPREAD_SLACK - 1)
    assert not board.may_accept(1, 2 * SPREAD_SLACK)


def test_the_least_loaded_worker_always_may_accept(board: ConnectionBoard) -> None:
    for counts in [(0, 0, 0), (5, 3, 4), (100, 2, 2), (7, 9, 8)]:
        for slot, count in enumerate(counts):
            board.post(slot, count, PAUSED)
        least = counts.index(min(counts))
        assert board.may_accept(least, counts[least]), counts


def test_a_paused_worker_that_may_accept_again_is_to_be_woken(board: ConnectionBoard) -> None:
    board.post(0, 10, PAUSED)  # paused when the others held 8
    board.post(1, 12, ACCEPTING)  # they have grown since
    board.post(2, 12, PAUSED)

    assert board.to_wake(1) == [0]
    board.post(0, 10, ACCEPTING)
    assert board.to_wake(1) == []


def test_a_paused_worker_still_above_the_others_is_left_asleep(board: ConnectionBoard) -> None:
    board.post(0, 10, PAUSED)
    board.post(1, 8, ACCEPTING)
    board.post(2, 9, ACCEPTING)

    assert board.to_wake(1) == []


def test_leaving_and_stale_workers_do_not_count(board: ConnectionBoard) -> None:
    board.post(0, 0, OUT)  # leaving on SIGTERM
    board.post(1, 50, ACCEPTING)
    board.post(2, 0, ACCEPTING)
    board._write(2, 12345, 0, ACCEPTING, time.monotonic() - BOARD_STALE_S - 1)  # stuck

    assert board.may_accept(1, 50)


def test_a_ring_makes_the_workers_bell_readable(board: ConnectionBoard) -> None:
    bell = board.bell(0)
    assert bell is not None  # Linux: an abstract-namespace datagram socket
    try:
        assert select.select([bell], [], [], 0)[0] == []
        board.ring(0)
        assert select.select([bell], [], [], 1)[0] == [bell]
        board.ring(1)  # a slot without a bell: nothing to wake, no error
    finally:
        bell.close()


def test_two_boards_bells_are_apart() -> None:
    """Two masters on one host (tests start several): a ring reaches its own board's
    worker only."""
    first, second = ConnectionBoard(), ConnectionBoard()
    bells = [first.bell(0), second.bell(0)]
    try:
        first.ring(0)
        assert [b for b in bells if b is not None and select.select([b], [], [], 0.5)[0]] == [
            bells[0]
        ]
    finally:
        for bell in bells:
            if bell is not None:
                bell.close()

"""The JSON log line: models.logs.JsonLines writes what python-json-logger's own
JsonFormatter writes for the same format, field for field and in the same order."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter

from models.logs import JsonLines, TickLines, info_line, json_handler, log_context


def _library() -> JsonFormatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
    )


def _record(msg: object, *args: object, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogger("hookfleet.ingest").makeRecord(
        "hookfleet.ingest", logging.INFO, __file__, 1, msg, args, exc_info, extra=extra
    )


RECORDS = {
    "a delivery's line": lambda: _record(
        "accepted",
        outcome="accepted",
        duration_ms=0.55,
        correlation_id="6461c12c",
        provider="standard",
        event_id="msg_1",
        queue="hookfleet.default",
    ),
    "arguments and no extra": lambda: _record("Worker ready: pid %s", 42),
    "unicode, None, nested and dates": lambda: _record(
        "é ✓", caller="Zoë", gone=None, nested={"a": [1, 2.5]}, at=datetime(2026, 1, 2, tzinfo=UTC)
    ),
    "an exception": lambda: _record("unhandled error", exc=True, correlation_id="c1"),
    "a private attribute is left out": lambda: _record("hidden", _private=1, shown=2),
    "a dict message": lambda: _record({"event": "x", "n": 1}),
}


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_json_lines_writes_the_librarys_line(make: Any) -> None:
    # Two records made alike, at the same instant (the library formats in place).
    ours, theirs = make(), make()
    for record in (ours, theirs):
        record.created, record.msecs = 0.0, 0.0
    assert JsonLines().format(ours) == _library().format(theirs)


def test_a_stack_is_written_like_the_library_does() -> None:
    first, second = _record("where"), _record("where")
    for record in (first, second):
        record.stack_info = "Stack (most recent call last):\n  here"
        record.created, record.msecs = 0.0, 0.0
    assert JsonLines().format(first) == _library().format(second)


@settings(max_examples=300)
@given(created=st.floats(min_value=0, max_value=4_102_444_800))  # to 2100
def test_the_time_is_the_librarys_at_any_instant(created: float) -> None:
    ours = JsonLines()
    for instant in (created, created + 0.5, created + 1.0, created):  # its reuse, and after
        first, second = _record("at"), _record("at")
        for record in (first, second):
            record.created = instant
            record.msecs = int((instant - int(instant)) * 1000) + 0.0
        assert ours.format(first) == _library().format(second)


# The receiver loop's lines (models.logs.TickLines): the same line as logger.info's,
# written once per pass of the loop, in the order logged.


@pytest.fixture()
def loop_lines() -> Any:
    """A ``hookfleet`` logger set up as configure_logging does, on a StringIO, its lines
    batched by TickLines on a fresh event loop; yields (loop, stream, TickLines)."""
    stream = io.StringIO()
    logger = logging.getLogger("hookfleet")
    kept = (logger.handlers, logger.propagate, logger.level)
    logger.handlers, logger.propagate = [], False
    logger.setLevel(logging.INFO)
    handler = json_handler(stream)
    handler._hookfleet = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    lines = TickLines.install(loop)
    assert lines is not None
    try:
        yield loop, stream, lines
    finally:
        lines.uninstall()
        loop.close()
        logger.handlers, logger.propagate = kept[0], kept[1]
        logger.setLevel(kept[2])  # clears the loggers' cached levels too


def _shipped_only(lines: TickLines) -> None:
    """The shipped set-up: the hookfleet logger's JSON handler alone (pytest adds its
    capture handlers when a test starts, which sends lines through logging)."""
    logging.getLogger("hookfleet").handlers = [lines.handler]
    lines._quick.clear()


def _one_pass(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_the_loops_line_is_logger_infos_line(
    loop_lines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, stream, lines = loop_lines
    monkeypatch.setattr(time, "time", lambda: 1_764_490_000.25)  # both lines, one instant
    _shipped_only(lines)
    log = logging.getLogger("hookfleet.ingest")
    assert lines._shipped(log)  # the quick line, not logger.info's, is compared
    token = log_context.set({"correlation_id": "c1", "provider": "standard", "outcome": "x"})
    try:
        info_line(log, "accepted", {"outcome": "accepted", "duration_ms": 0.55})
        log.info("accepted", extra={"outcome": "accepted", "duration_ms": 0.55})
    finally:
        log_context.reset(token)
    _one_pass(loop)
    quick, plain = stream.getvalue().splitlines()
    assert quick == plain
    assert json.loads(quick)["correlation_id"] == "c1"


def test_the_loops_lines_are_written_once_per_pass(loop_lines: Any) -> None:
    loop, stream, lines = loop_lines
    _shipped_only(lines)
    log = logging.getLogger("hookfleet.ingest")
    for n in range(3):
        info_line(log, "accepted", {"n": n})
    assert stream.getvalue() == ""  # not yet: at the loop's next pass
    _one_pass(loop)
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]


def test_a_threads_line_comes_after_the_loops_earlier_ones(loop_lines: Any) -> None:
    loop, stream, lines = loop_lines
    _shipped_only(lines)
    log = logging.getLogger("hookfleet.ingest")
    assert lines._shipped(log)
    info_line(log, "first", {})
    worker = threading.Thread(target=log.info, args=("second",))
    worker.start()
    worker.join()
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "first",
        "second",
    ]
    _one_pass(loop)
    assert len(stream.getvalue().splitlines()) == 2


def test_an_operators_extra_handler_gets_the_line_too(loop_lines: Any) -> None:
    # Not the shipped set-up: the line goes through logging, to every handler.
    loop, stream, lines = loop_lines
    _shipped_only(lines)
    log = logging.getLogger("hookfleet.ingest")
    records: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = records.append  # type: ignore[method-assign]
    log.addHandler(extra)
    assert not lines._shipped(log)
    try:
        info_line(log, "accepted", {"outcome": "accepted"})
    finally:
        log.removeHandler(extra)
    _one_pass(loop)
    assert [r.getMessage() for r in records] == ["accepted"]
    assert json.loads(stream.getvalue())["outcome"] == "accepted"


def test_a_level_above_info_writes_no_line(loop_lines: Any) -> None:
    loop, stream, lines = loop_lines
    _shipped_only(lines)
    logger = logging.getLogger("hookfleet")
    logger.setLevel(logging.WARNING)
    info_line(logging.getLogger("hookfleet.ingest"), "accepted", {})
    _one_pass(loop)
    assert stream.getvalue() == ""


def test_lines_pending_at_exit_are_written(loop_lines: Any) -> None:
    _loop, stream, lines = loop_lines
    _shipped_only(lines)
    info_line(logging.getLogger("hookfleet.ingest"), "last", {})
    lines.uninstall()
    assert json.loads(stream.getvalue())["message"] == "last"

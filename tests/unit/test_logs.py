"""The JSON log line: models.logs.JsonLines writes what python-json-logger's own
JsonFormatter writes for the same format, field for field and in the same order."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter

from models.logs import JsonLines


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

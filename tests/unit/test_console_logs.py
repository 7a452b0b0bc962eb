"""Logs a person reads on a terminal: one short line per event, coloured unless
NO_COLOR; JSON when the stream is not a terminal or when HOOKFLEET_LOG_FORMAT says so."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import sys

import pytest

from models.logs import ConsoleLines, chosen_log_format, json_handler, line_formatter
from models.settings import ConfigError, Settings

CORRELATION_ID = "24dfa8a414a543268f0e3d4f1ff6e90a"


def _delivery_record(**extra: object) -> logging.LogRecord:
    fields = {
        "outcome": "accepted",
        "duration_ms": 1.934,
        "provider": "stripe",
        "event_id": "evt_272358c6a9ed8d2c4faac86d",
        "correlation_id": CORRELATION_ID,
        "queue": "hookfleet.default",
        **extra,
    }
    return logging.getLogger("hookfleet.ingest").makeRecord(
        "hookfleet.ingest", logging.INFO, __file__, 1, "accepted", (), None, extra=fields
    )


def test_a_delivery_is_one_short_line_with_what_a_person_needs() -> None:
    line = ConsoleLines(colour=False).format(_delivery_record())

    assert "\n" not in line and not line.startswith("{")
    clock, level, provider, event_id, what, latency, correlation = line.split()
    assert len(clock) == len("02:19:05.350") and clock[2] == ":" and clock[8] == "."
    assert (level, provider, event_id, what) == (
        "INFO",
        "stripe",
        "evt_272358c6a9ed8d2c4faac86d",
        "accepted",
    )
    assert latency == "1.9ms"
    assert correlation == "~24dfa8a4"  # abbreviated: the full id is in the JSON line


def test_other_fields_follow_and_a_long_event_id_is_cut() -> None:
    record = _delivery_record(reason="invalid_signature", event_id="call_" + "x" * 80)
    record.msg, record.levelname = "rejected delivery", "WARNING"

    line = ConsoleLines(colour=False).format(record)

    assert "rejected delivery (accepted)" in line  # the outcome, where it says more
    assert "reason=invalid_signature" in line
    assert "call_" + "x" * 34 + "…" in line and "x" * 40 not in line
    assert "queue=" not in line


def test_colour_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal: console by choice
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = line_formatter("console").format(_delivery_record())
    monkeypatch.setenv("NO_COLOR", "1")
    plain = line_formatter("console").format(_delivery_record())

    assert "\x1b[" in coloured
    assert "\x1b[" not in plain
    assert plain == ConsoleLines(colour=False).format(_delivery_record())


def test_an_exception_follows_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("hookfleet.worker").makeRecord(
            "hookfleet.worker", logging.ERROR, __file__, 1, "unhandled", (), sys.exc_info()
        )

    first, *rest = ConsoleLines(colour=False).format(record).splitlines()

    assert first.split()[1:] == ["ERROR", "unhandled"]
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


def test_auto_is_console_on_a_terminal_and_json_on_a_pipe() -> None:
    primary, secondary = pty.openpty()
    read_end, write_end = os.pipe()
    try:
        with open(secondary, "w", closefd=False) as terminal, open(write_end, "w") as pipe:
            assert chosen_log_format("auto", terminal) == "console"
            assert chosen_log_format("auto", pipe) == "json"
            assert chosen_log_format("json", terminal) == "json"
            assert chosen_log_format("console", pipe) == "console"
    finally:
        for fd in (primary, secondary, read_end):
            os.close(fd)


def test_json_stays_the_format_off_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal
    handler = json_handler(stream, "auto")
    logger = logging.getLogger("hookfleet.test_console_logs")
    logger.addHandler(handler)
    try:
        logger.warning("rejected delivery", extra={"provider": "stripe"})
    finally:
        logger.removeHandler(handler)

    line = json.loads(stream.getvalue())
    assert (line["message"], line["provider"]) == ("rejected delivery", "stripe")


def test_the_log_format_setting_is_checked() -> None:
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"HOOKFLEET_LOG_FORMAT": "Console"}).log_format == "console"
    with pytest.raises(ConfigError, match="HOOKFLEET_LOG_FORMAT"):
        Settings.from_env({"HOOKFLEET_LOG_FORMAT": "pretty"})

"""Logging for every Hookfleet process: JSON lines, or short lines for a person.

Here because the receiver and the workers both log the same way and ``models`` is the
one package both may import. Lines go to stdout; rotation belongs to journald or the
container runtime. Each format is written once (:func:`json_formatter`,
:class:`ConsoleLines`) and chosen once (:func:`chosen_log_format`:
``HOOKFLEET_LOG_FORMAT`` ``json``, ``console``, or ``auto`` = console on a terminal);
gunicorn (``logconfig_dict``) and Celery (its ``setup_logging`` signal) both install
:func:`logging_config`, and :func:`configure_logging` adds Hookfleet's own loggers.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from typing import IO, Any

from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from models.tracing import current_ids

# The delivery a line is about; the receiver and the task wrapper set it.
log_context: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "hookfleet_log_context", default=None
)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (log_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        ids = current_ids()  # None unless tracing is on (models.tracing)
        if ids is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = ids
        return True


class JsonLines(JsonFormatter):
    """python-json-logger's ``JsonFormatter`` for :func:`json_formatter`'s one format,
    writing the same line with less work per record.

    The receiver logs one line per delivery, and the library's general ``format``
    (its field parsing, defaults, static fields, renames, a new encoder per line) was
    a tenth of a delivery's Python time. This keeps what the format uses: ``ts``,
    ``level``, ``logger``, ``message``, ``exc_info`` / ``stack_info``, then every
    ``extra`` field in the record's order (the library's ``merge_record_extra``
    rule), encoded by the library's ``JsonEncoder``. A record whose message is a dict
    goes to the library's own ``format``. ``tests/unit/test_logs.py`` compares the
    two line for line.
    """

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
        self._encode = JsonEncoder(ensure_ascii=True).encode
        # (whole second, its local time as text): one strftime per second, not per line.
        # One tuple, swapped whole, so a thread never pairs one second with another's text.
        self._clock: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``logging.Formatter.formatTime``'s text (``2026-11-30 08:28:28,754``, local
        time), its date and time part reused within a second."""
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)  # what time.localtime takes of it (created >= 0)
        clock = self._clock
        if clock[0] != second:
            clock = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._clock = clock
        msec_format = self.default_msec_format
        return msec_format % (clock[1], record.msecs) if msec_format else clock[1]

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line: dict[str, Any] = {
            "ts": record.asctime,
            "level": record.levelname,
            "logger": record.name,
            "message": record.message,
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if not line.get("exc_info") and record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        skip = self._skip_fields
        for key, value in record.__dict__.items():
            if key not in skip and not key.startswith("_"):
                line[key] = value
        return self._encode(line)


def json_formatter() -> logging.Formatter:
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and any
    ``extra`` fields."""
    return JsonLines()


# What a person reads first on a delivery's line; the rest of its fields follow as
# key=value, minus the ones that only a machine wants (which task, which attempt).
_CONSOLE_QUIET = frozenset(
    {"provider", "event_id", "correlation_id", "duration_ms", "outcome", "task", "task_id", "queue"}
)
_LEVEL_COLOUR = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[1;31m",
    "CRITICAL": "\x1b[1;31m",
}
_DIM, _CYAN, _BOLD, _RESET = "\x1b[2m", "\x1b[36m", "\x1b[1m", "\x1b[0m"
_EVENT_ID_CHARS = 40
_CORRELATION_CHARS = 8


class ConsoleLines(logging.Formatter):
    """One short line per record, for a terminal::

        02:19:05.350 INFO  stripe evt_272358c6a9ed8d2c4faac86d accepted 1.9ms ~24dfa8a4

    time (local), level, the logger unless it is Hookfleet's, provider, event id (cut
    at 40 characters), what happened (the message, and the outcome when it says more),
    the duration, the record's other ``extra`` fields as ``key=value`` (not the queue
    or task: a machine's fields), the correlation id's first 8 characters after ``~``;
    a traceback on the lines after. Colour unless ``colour`` is false.
    It shows the fields the JSON line has, no others: what is kept out of one (secrets)
    is kept out of both.
    """

    def __init__(self, colour: bool = True) -> None:
        super().__init__()
        self._colour = colour
        self._standard = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self._colour and text else text

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            k: v
            for k, v in record.__dict__.items()
            if k not in self._standard and not k.startswith("_")
        }
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [
            self._paint(_DIM, f"{clock}.{int(record.msecs):03d}"),
            self._paint(_LEVEL_COLOUR.get(record.levelname, ""), f"{record.levelname:<5}"),
        ]
        if not record.name.startswith("hookfleet"):
            parts.append(self._paint(_DIM, record.name))
        if fields.get("provider"):
            parts.append(self._paint(_CYAN, str(fields["provider"])))
        if fields.get("event_id"):
            parts.append(_shorten(str(fields["event_id"]), _EVENT_ID_CHARS))
        message = record.getMessage()
        parts.append(self._paint(_BOLD, message))
        outcome = fields.get("outcome")
        if outcome is not None and str(outcome) != message:
            parts.append(f"({outcome})")
        if isinstance(fields.get("duration_ms"), int | float):
            parts.append(f"{fields['duration_ms']:.1f}ms")
        if fields.get("attempt") == 1:
            del fields["attempt"]  # a retry says which attempt it is; a first one need not
        parts += [f"{k}={v}" for k, v in fields.items() if k not in _CONSOLE_QUIET]
        if fields.get("correlation_id"):
            parts.append(
                self._paint(_DIM, "~" + str(fields["correlation_id"])[:_CORRELATION_CHARS])
            )
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chosen_log_format(setting: str, stream: IO[str] | None = None) -> str:
    """``json`` or ``console`` for the ``HOOKFLEET_LOG_FORMAT`` value ``setting``:
    ``auto`` is console when ``stream`` (default: stdout, where the lines go) is a
    terminal, else JSON."""
    if setting in ("json", "console"):
        return setting
    stream = sys.stdout if stream is None else stream
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "json"


def line_formatter(log_format: str = "auto") -> logging.Formatter:
    """The formatter for ``log_format`` (see :func:`chosen_log_format`); console lines
    are coloured unless ``NO_COLOR`` is set (https://no-color.org)."""
    if chosen_log_format(log_format) == "console":
        return ConsoleLines(colour=not os.environ.get("NO_COLOR"))
    return json_formatter()


def json_handler(stream: IO[str], log_format: str = "json") -> logging.Handler:
    """A handler writing lines (JSON unless ``log_format`` says otherwise), with the
    delivery's context, to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(line_formatter(log_format))
    handler.addFilter(_ContextFilter())
    return handler


def logging_config(level: str | int = "INFO", log_format: str = "json") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` every process installs: the root logger and
    gunicorn's own (booting, worker exits, timeouts; access lines when asked for) write
    lines in ``log_format`` (see :func:`chosen_log_format`) to stdout at ``level``.
    Loggers already made keep working."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "models.logs.line_formatter", "log_format": log_format}},
        "filters": {"context": {"()": "models.logs._ContextFilter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["context"],
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            name: {"handlers": ["json"], "level": level, "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Send ``hookfleet.*`` loggers to stdout as lines in ``log_format`` (JSON unless
    told). Safe to call twice."""
    logger = logging.getLogger("hookfleet")
    logger.setLevel(level)
    if any(getattr(h, "_hookfleet", False) for h in logger.handlers):
        return
    handler = json_handler(sys.stdout, log_format)
    handler._hookfleet = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False

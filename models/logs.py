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
import threading
import time
from asyncio import AbstractEventLoop
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
        return self.time_text(record.created, record.msecs)

    def time_text(self, created: float, msecs: float) -> str:
        """:meth:`formatTime`'s text for a record made at ``created`` (seconds since
        the epoch) with ``msecs`` (its milliseconds, as LogRecord computes them)."""
        second = int(created)  # what time.localtime takes of it (created >= 0)
        clock = self._clock
        if clock[0] != second:
            clock = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._clock = clock
        msec_format = self.default_msec_format
        return msec_format % (clock[1], msecs) if msec_format else clock[1]

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


class TickLines:
    """A loop's log lines, written once per pass of the event loop.

    Wraps the stream of one ``logging.StreamHandler`` (the ``hookfleet`` logger's, on
    stdout). A line logged in the loop's thread joins the pass's pending text and the
    loop writes and flushes it all with ``call_soon``: at the next pass, after the
    answers written in this one went to their transports and before the loop waits
    for I/O again (a pending callback makes its poll not wait). One write for every
    delivery answered in a pass instead of a write and a flush each. A line logged in
    another thread (the worker's WSGI threads) writes the pending text first, then its
    own, at once: lines keep the order they were logged in. Everything goes through
    the handler's lock.

    :meth:`quick_info` writes a line as ``logger.info(message, extra=...)`` would,
    without the record: only for a logger whose set-up is the shipped one
    (:func:`configure_logging`'s JSON handler alone), else it calls ``logger.info``.
    """

    def __init__(self, handler: logging.StreamHandler[Any], loop: AbstractEventLoop) -> None:
        self.handler = handler
        self.stream: IO[str] = handler.stream
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self.pending: list[str] = []
        self._lock = handler.lock or threading.RLock()
        self._quick: dict[str, bool] = {}
        formatter = handler.formatter
        self._lines = formatter if isinstance(formatter, JsonLines) else None

    @classmethod
    def install(cls, loop: AbstractEventLoop, name: str = "hookfleet") -> TickLines | None:
        """Batch the lines of logger ``name``'s stream handler written in this thread
        (``loop``'s); None when it has no :func:`configure_logging` handler."""
        for handler in logging.getLogger(name).handlers:
            if getattr(handler, "_hookfleet", False) and type(handler) is logging.StreamHandler:
                lines = cls(handler, loop)
                handler.setStream(lines)
                global _tick_lines
                _tick_lines = lines
                return lines
        return None

    def uninstall(self) -> None:
        """Write what is pending and give the handler its stream back."""
        global _tick_lines
        _tick_lines = None
        self.drain()
        with self._lock:
            self.handler.stream = self.stream

    # the stream StreamHandler.emit writes to
    def write(self, text: str) -> int:
        with self._lock:
            if threading.get_ident() == self.loop_thread:
                self._add(text)
            else:
                pending, self.pending = self.pending, []
                pending.append(text)
                self.stream.write("".join(pending))
                self.stream.flush()
        return len(text)

    def flush(self) -> None:
        """Nothing: the loop flushes once per pass (:meth:`drain`), a thread at once."""

    def _add(self, text: str) -> None:
        if not self.pending:
            self.loop.call_soon(self.drain)
        self.pending.append(text)

    def drain(self) -> None:
        """Write and flush the lines pending (the loop calls it once per pass)."""
        with self._lock:
            pending, self.pending = self.pending, []
            if pending:
                try:
                    self.stream.write("".join(pending))
                    self.stream.flush()
                except Exception:  # noqa: BLE001 (logging's rule: a failed write is reported, not raised)
                    self.handler.handleError(logging.makeLogRecord({"msg": "".join(pending)}))

    # the line without the record
    def quick_info(self, logger: logging.Logger, message: str, extra: dict[str, Any]) -> None:
        """``logger.info(message, extra=extra)``'s line, cheaper when the set-up allows."""
        if (
            threading.get_ident() != self.loop_thread
            or not logger.isEnabledFor(logging.INFO)
            or not self._shipped(logger)
            or current_ids() is not None
        ):
            logger.info(message, extra=extra)
            return
        now = time.time()
        lines = self._lines
        assert lines is not None  # _shipped says so
        line: dict[str, Any] = {
            "ts": lines.time_text(now, int((now - int(now)) * 1000) + 0.0),  # LogRecord's
            "level": logging.getLevelName(logging.INFO),
            "logger": logger.name,
            "message": message,
        }
        skip = lines._skip_fields
        for key, value in extra.items():
            if key not in skip and not key.startswith("_"):
                line[key] = value
        for key, value in (log_context.get() or {}).items():  # _ContextFilter's rule
            if key not in extra and key not in _RECORD_FIELDS:
                if key not in skip and not key.startswith("_"):
                    line[key] = value
        text = lines._encode(line) + self.handler.terminator
        with self._lock:
            self._add(text)

    def _shipped(self, logger: logging.Logger) -> bool:
        """Whether ``logger``'s lines go to this handler alone, as JSON lines, with
        nothing (a filter, another handler, a record factory) that would change them."""
        known = self._quick.get(logger.name)
        if known is None:
            known = self._quick[logger.name] = self._reaches_only_us(logger)
        return known

    def _reaches_only_us(self, logger: logging.Logger) -> bool:
        handler = self.handler
        if (
            type(self._lines) is not JsonLines
            or self._lines.datefmt
            or handler.level > logging.INFO
            or [type(f) for f in handler.filters] != [_ContextFilter]
            or logging.getLogRecordFactory() is not logging.LogRecord
        ):
            return False
        handlers: list[logging.Handler] = []
        current: logging.Logger | None = logger
        while current is not None:
            if type(current) not in (logging.Logger, logging.RootLogger) or current.filters:
                return False
            handlers += current.handlers
            current = current.parent if current.propagate else None
        return handlers == [handler]


# What a LogRecord has when _ContextFilter sees it (hasattr: its fields and its class's).
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | frozenset(dir(logging.LogRecord))
_tick_lines: TickLines | None = None


def info_line(logger: logging.Logger, message: str, extra: dict[str, Any]) -> None:
    """``logger.info(message, extra=extra)``: the same line, written by the loop's
    :class:`TickLines` when the event loop's thread logs it under the shipped set-up."""
    lines = _tick_lines
    if lines is None:
        logger.info(message, extra=extra)
    else:
        lines.quick_info(logger, message, extra)


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

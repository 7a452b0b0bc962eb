"""JSON-lines logging for every Hookfleet process.

Here because the receiver and the workers both log the same way and ``models`` is the
one package both may import. Lines go to stdout; rotation belongs to journald or the
container runtime. The format is written once (:func:`json_formatter`); gunicorn
(``logconfig_dict``) and Celery (its ``setup_logging`` signal) both install
:func:`logging_config`, and :func:`configure_logging` adds Hookfleet's own loggers.
"""

from __future__ import annotations

import contextvars
import logging
import sys
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


def json_handler(stream: IO[str]) -> logging.Handler:
    """A handler writing JSON lines, with the delivery's context, to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(_ContextFilter())
    return handler


def logging_config(level: str | int = "INFO") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` every process installs: the root logger and
    gunicorn's own (booting, worker exits, timeouts; access lines when asked for) write
    JSON lines to stdout at ``level``. Loggers already made keep working."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "models.logs.json_formatter"}},
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


def configure_logging(level: str = "INFO") -> None:
    """Send ``hookfleet.*`` loggers to stdout as JSON lines. Safe to call twice."""
    logger = logging.getLogger("hookfleet")
    logger.setLevel(level)
    if any(getattr(h, "_hookfleet", False) for h in logger.handlers):
        return
    handler = json_handler(sys.stdout)
    handler._hookfleet = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False

"""Celery task messages, written exactly as Celery's own producer writes them to Redis.

The receiver pushes the message inside a Lua script (see :mod:`ingest.dedup`), so it
cannot call ``apply_async``; it builds the same bytes instead. The format is Celery's
task protocol 2 inside kombu's Redis envelope; ``tests/unit/test_taskmessage.py`` checks it
against what ``send_task`` really writes, and the end-to-end tests have a stock
``celery worker`` consume it.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from base64 import b64encode
from typing import Any

from models.contract import PROCESS_EVENT, EventMessage
from models.ids import uuid4_text
from models.perprocess import PerProcess
from models.tracing import trace_headers

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_EMBED_JSON = _dumps(_EMBED)
_string = json.encoder.encode_basestring_ascii


# ``gen<pid>@<host>``, as Celery names a producer; recomputed after a fork.
_origin = PerProcess(lambda: f"gen{os.getpid()}@{socket.gethostname()}")


def _fixed_headers(task_name: str, origin: str) -> dict[str, Any]:
    """Celery's headers that do not vary from one message of a task to the next."""
    return {
        "lang": "py",
        "task": task_name,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "parent_id": None,
        "argsrepr": "()",
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


# Every header Celery writes: extra headers may add to them, never replace one.
_CELERY_HEADERS = frozenset(_fixed_headers("", "")) | {"id", "root_id", "kwargsrepr"}


@functools.lru_cache(maxsize=256)
def _fixed_parts(task_name: str, queue: str, origin: str) -> tuple[str, str]:
    """The headers and properties that are the same for every message of a task on a
    queue, as JSON members: built once, then joined with what varies (ids, body)."""
    properties = {
        "reply_to": "",
        "delivery_mode": 2,
        # Exchange "" is the default direct exchange: a retry republishes the task
        # to the same queue by its routing key.
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
    }
    return _dumps(_fixed_headers(task_name, origin))[1:-1], _dumps(properties)[1:-1]


def build_task_message(
    task_name: str,
    kwargs: dict[str, Any],
    queue: str,
    *,
    task_id: str | None = None,
    kwargsrepr: str = "",
    extra_headers: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Return ``(task_id, message)``: a JSON string ready to LPUSH onto ``queue``.

    ``kwargsrepr`` is what Celery shows for the arguments in logs and monitors; callers
    pass a short summary so payloads (and the personal data in them) stay out of logs.
    The receiver builds one per delivery, so the parts that never change are kept as
    JSON text (:func:`_fixed_parts`) and only the ids, the body and the extra headers
    are encoded each time.
    """
    return _task_message(task_name, _dumps(kwargs), queue, task_id, kwargsrepr, extra_headers)


def _task_message(
    task_name: str,
    kwargs_json: str,
    queue: str,
    task_id: str | None,
    kwargsrepr: str,
    extra_headers: dict[str, Any] | None,
) -> tuple[str, str]:
    """:func:`build_task_message` for arguments already encoded as compact JSON."""
    task_id = task_id or uuid4_text()
    # The body is what _dumps([[], kwargs, _EMBED]) writes, joined from its parts.
    body = b64encode(f"[[],{kwargs_json},{_EMBED_JSON}]".encode()).decode("ascii")
    headers, properties = _fixed_parts(task_name, queue, _origin.get())
    task = _string(task_id)
    varying = {"kwargsrepr": kwargsrepr or "{...}"}
    if extra_headers:
        if not _CELERY_HEADERS.isdisjoint(extra_headers):
            raise ValueError(f"extra headers may not replace Celery's: {sorted(extra_headers)}")
        varying.update(extra_headers)
    message = (
        f'{{"body":"{body}","content-encoding":"utf-8","content-type":"application/json",'
        f'"headers":{{{headers},"id":{task},"root_id":{task},{_members(varying)}}},'
        f'"properties":{{"correlation_id":{task},{properties},'
        f'"delivery_tag":"{uuid4_text()}"}}}}'
    )
    return task_id, message


def _members(mapping: dict[str, Any]) -> str:
    """``_dumps(mapping)`` without its braces; text keys and values joined directly (the
    general encoder's set-up costs more than a few short strings)."""
    try:
        return ",".join([f"{_string(k)}:{_string(v)}" for k, v in mapping.items()])
    except TypeError:  # a value that is not text
        return _dumps(mapping)[1:-1]


def build_event_message(event: EventMessage) -> tuple[str, str]:
    """Return ``(task_id, message)``: ``event`` as a :data:`~models.contract.PROCESS_EVENT`
    message on its own queue, its arguments in the contract's layout
    (:meth:`~models.contract.EventMessage.to_kwargs`), its correlation id in the
    ``hookfleet_correlation_id`` header, the current trace context in ``traceparent`` /
    ``tracestate`` (while tracing is on), and only provider and event id in the
    ``kwargsrepr`` that Celery logs (never the payload)."""
    return _task_message(
        PROCESS_EVENT,
        event.kwargs_json(),
        event.queue,
        None,
        f"{{'provider': {event.provider!r}, 'event_id': {event.event_id!r}}}",
        # The trace context of the current span (the receiver's request span): the
        # worker's span for this event continues the delivery's trace (models.tracing).
        {"hookfleet_correlation_id": event.correlation_id, **trace_headers()},
    )

"""Celery task messages, written exactly as Celery's own producer writes them to Redis.

The receiver pushes the message inside a Lua script (see :mod:`ingest.dedup`), so it
cannot call ``apply_async``; it builds the same bytes instead. The format is Celery's
task protocol 2 inside kombu's Redis envelope; ``tests/test_taskmessage.py`` checks it
against what ``send_task`` really writes, and the end-to-end tests have a stock
``celery worker`` consume it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from base64 import b64encode
from typing import Any

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_origin: tuple[int, str] | None = None


def _origin_name() -> str:
    """``gen<pid>@<host>``, as Celery names a producer; recomputed after a fork."""
    global _origin
    pid = os.getpid()
    if _origin is None or _origin[0] != pid:
        _origin = (pid, f"gen{pid}@{socket.gethostname()}")
    return _origin[1]


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
    """
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([[], kwargs, _EMBED], separators=(",", ":"))
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr or "{...}",
        "origin": _origin_name(),
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if extra_headers:
        headers.update(extra_headers)
    envelope = {
        "body": b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            # Exchange "" is the default direct exchange: a retry republishes the task
            # to the same queue by its routing key.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return task_id, json.dumps(envelope, separators=(",", ":"))

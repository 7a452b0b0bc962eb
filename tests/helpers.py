"""Small things several test modules need: reading queued Celery messages, signed raw
requests and reads for socket-level tests, running a script in a fresh Python process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from ingest.providers import standard
from models.contract import QUEUES, Queue
from models.settings import DEFAULT_OPS_BIND, forget_process_settings
from tests.servers import clean_env

# What a test client passes as ``base_url`` to reach the operator endpoints, which
# answer only on the ops listener (its port, as gunicorn would report it).
OPS = f"http://{DEFAULT_OPS_BIND}"
ROOT = Path(__file__).resolve().parents[1]


STANDARD_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"""The Standard Webhooks specification's example secret (24 bytes once decoded), which
the raw-socket tests of a real receiver sign with."""
DELIVERY_LINE = "POST /webhooks/standard HTTP/1.1"
JSON = "application/json"


def standard_head(
    event_id: str, body: bytes, request_line: str = DELIVERY_LINE, content_type: str = JSON
) -> str:
    """``request_line`` and the headers of a Standard Webhooks delivery of ``body``
    signed now with :data:`STANDARD_SECRET` (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``: standard-webhooks' spec and ``Webhook.sign``), each line
    CRLF-ended; no ``Content-Length`` and no blank line, for the test to add its own
    framing."""
    timestamp = int(time.time())
    signature = standard.sign(STANDARD_SECRET, body, timestamp, webhook_id=event_id)
    return (
        f"{request_line}\r\nHost: hookfleet\r\nContent-Type: {content_type}\r\n"
        f"webhook-id: {event_id}\r\nwebhook-timestamp: {timestamp}\r\n"
        f"webhook-signature: {signature}\r\n"
    )


def recv_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    """``data`` and what ``sock`` sends after it until ``marker`` is in it or the peer
    closes (a timeout is the socket's own)."""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def queued(client: redis.Redis, queue: str = Queue.DEFAULT) -> list[dict[str, Any]]:
    """The Celery messages waiting on ``queue``, oldest first, with the body decoded."""
    messages = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        envelope["decoded_body"] = json.loads(base64.b64decode(envelope["body"]))
        messages.append(envelope)
    return messages


def total_queued(client: redis.Redis) -> int:
    return sum(int(client.llen(q)) for q in QUEUES)


def dedup_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter("hookfleet:dedup:*"))


def post_json(client: Any, path: str, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def retell_call_ended_body(
    call_id: str, caller: str = "+4915112345678", ours: str = "+4930901820", **extra: Any
) -> dict[str, Any]:
    """A Retell ``call_ended`` body as Retell sends it: an inbound call from ``caller`` to
    ``ours`` (the branch's number), ``extra`` fields added to the ``call`` object last."""
    call = {
        "call_id": call_id,
        "call_status": "ended",
        "direction": "inbound",
        "from_number": caller,
        "to_number": ours,
        "start_timestamp": 1764061200000,
        "end_timestamp": 1764061260000,
        **extra,
    }
    return {"event": "call_ended", "call": call}


def retell_call_ended(
    call_id: str, caller: str = "+4915112345678", ours: str = "+4930901820"
) -> str:
    """:func:`retell_call_ended_body` as JSON text (the fault suite and the sweeper tests
    send this one)."""
    return json.dumps(retell_call_ended_body(call_id, caller, ours))


def calcom_booking_created(
    uid: str, name: str, email: str | None, phone: str | None = None
) -> dict[str, Any]:
    """A Cal.com ``BOOKING_CREATED`` body (``sendPayload``'s envelope) of a haircut at
    event type 1001 with one attendee; ``email`` and ``phone`` left out when None."""
    attendee: dict[str, Any] = {"name": name, "timeZone": "Europe/Berlin"}
    if email is not None:
        attendee["email"] = email
    if phone is not None:
        attendee["phoneNumber"] = phone
    payload = {
        "uid": uid,
        "title": "Haircut",
        "startTime": "2026-12-01T09:00:00Z",
        "endTime": "2026-12-01T09:30:00Z",
        "eventTypeId": 1001,
        "attendees": [attendee],
    }
    return {
        "triggerEvent": "BOOKING_CREATED",
        "createdAt": "2026-11-23T09:00:00Z",
        "payload": payload,
    }


FAULT_COUNTS: list[dict[str, Any]] = []
"""The fault suite's count rows (sent, accepted, persisted, effects, lost, duplicated,
answers), one per scenario, appended by the scenarios of this process. tests/conftest.py
hands each test's rows to its report, so the summary lists them under pytest-xdist too."""


def run_python(
    script: str, env: Mapping[str, str], *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -c script args...`` in a process of its own, in the repository, its
    output captured as text. For what must not run in the test process: a tracer
    provider is process-wide, a command runs as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def last_json_line(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON value a script printed last on its stdout, past the JSON log lines
    (``ts`` and ``level``) the process may write after it, e.g. at exit."""
    for line in reversed(done.stdout.strip().splitlines()):
        value = json.loads(line)
        if not (isinstance(value, dict) and {"ts", "level"} <= value.keys()):
            return value
    raise AssertionError(f"no JSON value but log lines on stdout: {done.stdout[-2000:]}")


def command_env(database_url: str, redis_url: str, var_dir: Path) -> dict[str, str]:
    """The environment a ``hookfleet`` command runs in against a test's servers
    (publishing configures the Celery app, which makes ``$HOOKFLEET_VAR_DIR/metrics``)."""
    return clean_env(
        HOOKFLEET_DATABASE_URL=database_url,
        HOOKFLEET_REDIS_URL=redis_url,
        HOOKFLEET_VAR_DIR=str(var_dir),
    )


def hookfleet_here(
    args: Sequence[str], cwd: Path | None, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """``hookfleet args`` run in this process as the console script runs it in a process
    of its own with exactly ``env`` in ``cwd`` (None: this process's): stdout and stderr
    captured (click's CliRunner isolation), the exit status as the interpreter makes it
    (``SystemExit`` with a message: the message on stderr, status 1). An exception the
    command lets through (a traceback, in a process) propagates and fails the test. The
    same code below ``main()`` without the ~0.5 CPU-s a fresh interpreter spends
    importing it; keep one real process per command family (the entry point, the
    interpreter's own exit) beside the rows run here.

    Nothing may start a process from here: ``os.execve`` (``hookfleet run``) and
    ``subprocess.Popen`` (``hookfleet up``) raise instead, so a refusal that does not
    happen fails the test instead of replacing or forking the test process."""
    from click.testing import CliRunner

    from workers.cli.main import main

    overrides: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    overrides.update(env)
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext(),
        CliRunner().isolation(env=overrides) as (out, err, _),
    ):
        patch.setattr(os, "execve", _no_process_here)
        patch.setattr(subprocess, "Popen", _no_process_here)
        # Code with no settings handed to it (the phone rule) reads this command's
        # environment, as a fresh process would, and keeps none of it afterwards.
        forget_process_settings()
        try:
            main.main(args=list(args), prog_name="hookfleet")
            status = 0
        except SystemExit as exit_:
            status = _exit_status(exit_.code)
        finally:
            forget_process_settings()
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["hookfleet", *args], status, stdout, stderr)


def _exit_status(code: object) -> int:
    """What the interpreter exits with for ``SystemExit(code)``, printing a message code
    to stderr as it does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _no_process_here(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a hookfleet command run in the test process started {args[:2]}")

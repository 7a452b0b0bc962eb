"""A ``hookfleet`` command is one trace (workers/tracing.py ``command_span``): its
statements under its root span, and a task it queues carrying that trace on.

The command runs as a user runs it, in a process of its own, exporting to a real
OTLP/HTTP receiver (tests/otlp.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from models.contract import Queue
from tests.helpers import run_python
from tests.otlp import otlp_sink
from tests.servers import clean_env, sqlite_url

pytestmark = pytest.mark.slow  # each test runs its probe or command as a process of its own


def hookfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_python("from workers.cli.main import main; main()", env, *args)


def test_a_command_is_one_trace_and_the_task_it_queues_continues_it(
    tmp_path: Path, redis_url: str
) -> None:
    with otlp_sink() as sink:
        env = clean_env(
            HOOKFLEET_DATABASE_URL=sqlite_url(tmp_path),
            HOOKFLEET_REDIS_URL=redis_url,
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
        )
        assert hookfleet(env, "migrate").returncode == 0
        # No worker runs: the command queues the task, waits a second, gives up.
        waited = hookfleet(env, "provision", "7", "--queue", "--wait", "1")
        assert "no outcome within 1 s" in waited.stderr, waited.stderr[-2000:]
        spans = sink.wait_for(
            lambda spans: {"hookfleet migrate", "hookfleet provision"} <= {s.name for s in spans}
        )
    roots = {s.trace_id: s for s in spans if not s.parent_id}
    assert sorted(s.name for s in roots.values()) == ["hookfleet migrate", "hookfleet provision"]
    statements = [s for s in spans if "db.system" in s.attributes]
    assert statements and all(s.trace_id in roots and s.parent_id for s in statements)
    (provision,) = [s for s in roots.values() if s.name == "hookfleet provision"]
    (raw,) = redis.Redis.from_url(redis_url).lrange(Queue.PROVISIONING, 0, -1)
    _version, trace_id, _parent, _flags = json.loads(raw)["headers"]["traceparent"].split("-")
    assert trace_id == provision.trace_id

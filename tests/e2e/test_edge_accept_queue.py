"""An inline answer's deadline counts the time its request waited to be accepted
(ingest/accept_queue.py): a real gunicorn whose only worker is stopped (SIGSTOP, as a
busy or still-starting worker leaves connections in the listen backlog) while a Retell
``call_inbound`` comes. Past its deadline by the time the worker takes it, the call is
answered at once without a lookup; before, the deadline started when the worker read
it and the call was looked up as if it had just come. Its record is still queued in
Redis before the answer (ingest/inbound_record.py tries Redis whatever is left)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from ingest.accept_queue import stamp_arrivals, waited_before_accept
from tests.e2e.test_aio_worker import worker_pids
from tests.e2e.test_edge_inbound_db import call_to, seed_branches
from tests.integration.test_inbound import API_KEY as RETELL_KEY
from tests.processes import running_fleet

#: Longer than the answer's deadline at the default budget (1.375 s).
STOPPED_S = 1.8


def test_the_wait_before_accept_is_read_from_the_kernels_stamp() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stamp_arrivals(listener)
        # Linux turns receive stamping on a moment later (net_enable_timestamp defers it
        # to a work queue): a worker's listeners have it long before their first request.
        time.sleep(0.2)
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(b"POST / HTTP/1.1\r\n")
            time.sleep(0.3)
            accepted, _ = listener.accept()
            accepted.setblocking(False)
            with accepted:
                waited = waited_before_accept(accepted)
                assert accepted.recv(100) == b"POST / HTTP/1.1\r\n"  # peeked, not taken

    assert 0.25 < waited < 5


def test_nothing_come_yet_waited_nothing() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stamp_arrivals(listener)
        with socket.create_connection(listener.getsockname()):
            time.sleep(0.1)
            accepted, _ = listener.accept()
            accepted.setblocking(False)
            with accepted:
                assert waited_before_accept(accepted) == 0.0


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_call_that_waited_past_its_deadline_to_be_accepted_is_answered_at_once(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    seed_branches(database_url)
    with running_fleet(
        tmp_path,
        redis_url,
        database_url,
        names=("web",),
        HOOKFLEET_RETELL_SECRETS=RETELL_KEY,
        WEB_CONCURRENCY="1",
    ) as web:
        assert call_to(web, 0)[0] == "agent_0"  # routed while the worker takes it at once
        (worker,) = worker_pids(web.running["web"].pid)
        os.kill(worker, signal.SIGSTOP)
        threading.Timer(STOPPED_S, os.kill, (worker, signal.SIGCONT)).start()
        agent, seconds = call_to(web, 1)
        log = web.log("web")

    assert agent is None  # no lookup: its deadline had passed in the listen backlog
    assert STOPPED_S - 0.2 < seconds < STOPPED_S + 1.0
    assert "inbound lookup skipped: the call's deadline passed" in log
    # Its record was queued before the answer all the same (the Redis try is bounded).
    assert "inline event answered before it was recorded" not in log
    assert "Traceback" not in log

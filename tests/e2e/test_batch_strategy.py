"""The batch strategy keeps what Celery's default strategy does with a message.

``workers.broker.batching.strategy`` replaces ``celery.worker.strategy.default`` for
``hookfleet.process_event``. Two of the default's behaviours a user can see were missing:
the ``task-received`` event a worker started with ``-E`` sends (what Flower and
``celery events`` show), and the rejection of a message whose ETA cannot be turned into a
time (the handler raised instead, out of Celery's consumer). A real ``celery worker``
runs the strategy here, on a real Redis and MariaDB.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from ingest.providers import retell
from tests.faults.test_faults import SECRET, call_body
from tests.processes import ONE_RECEIVER_WORKER, procfile, request, running_fleet
from tests.servers import wait_until

pytestmark = pytest.mark.e2e


def post_call_ended(base_url: str, call_id: str) -> int:
    raw = call_body(call_id)
    headers = {"x-retell-signature": retell.sign(SECRET, raw, int(time.time() * 1000))}
    return request(base_url, "POST", "/webhooks/retell", raw, headers)[0]


def test_a_batch_worker_sends_task_received_and_rejects_an_impossible_eta(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    with running_fleet(
        tmp_path,
        redis_url,
        mariadb_url,
        names=("web",),
        **ONE_RECEIVER_WORKER,
        HOOKFLEET_RETELL_SECRETS=SECRET,
    ) as fleet:
        fleet.start("worker_high", procfile()["worker_high"].replace(" worker ", " worker -E "))
        fleet.wait_for_worker("worker_high")

        probe = Celery("probe", broker=redis_url, set_as_current=False)
        received: list[dict[str, Any]] = []
        with probe.connection_for_read() as connection:

            def on_received(event: dict[str, Any]) -> None:
                received.append(event)
                receiver.should_stop = True

            receiver = probe.events.Receiver(connection, handlers={"task-received": on_received})
            listening = threading.Thread(
                target=lambda: receiver.capture(limit=None, timeout=30), daemon=True
            )
            listening.start()
            time.sleep(1)  # subscribed before the delivery
            assert post_call_ended(fleet.base_url, "ev_1") == 202
            listening.join(30)

        # The year 1 at +14:00 is before the year 1 in UTC: no timestamp exists for it.
        impossible = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
        probe.send_task(
            "hookfleet.process_event",
            kwargs={"event_id": "eta_1"},
            queue="hookfleet.high",
            eta=impossible,
        )
        wait_until(
            lambda: "Couldn't convert ETA" in fleet.log("worker_high"), 30, "the ETA refused"
        )
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: client.hlen("unacked") == 0, 15, "the message settled")
        # The worker still consumes: a delivery after it is processed.
        assert post_call_ended(fleet.base_url, "ev_2") == 202
        wait_until(
            lambda: (
                '"event_id": "ev_2:call_ended"' in fleet.log("worker_high")
                and "processed" in fleet.log("worker_high")
            ),
            30,
            "the next delivery processed",
        )
        queued = client.llen("hookfleet.high")
        alive = fleet.running["worker_high"].poll() is None

    assert [e["name"] for e in received] == ["hookfleet.process_event"]
    assert received[0]["uuid"] and received[0]["retries"] == 0
    assert queued == 0  # rejected, not requeued to fail again
    assert alive
    assert datetime.now(UTC).year > 1  # (the probe's clock is sane)

"""``/metrics`` on a running fleet: two gunicorn workers and two Celery processes write
their own samples; one scrape must add them up to exactly what was sent."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import multiprocess as mp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select, text

from models.contract import PROCESS_EVENT, Queue
from models.events import EventStatus, WebhookEvent
from tests.processes import Processes, request, running_fleet
from tests.servers import free_port, wait_until

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(exposition: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(base_url: str) -> Samples:
    status, headers, body = request(base_url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def per_process(metrics_dir: Path, kind: str, name: str, **labels: str) -> dict[str, float]:
    """One process's share of a metric: its own file, aggregated alone."""
    shares = {}
    for path in glob.glob(str(metrics_dir / f"{kind}_*.db")):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry, path=alone)
            found = value(parse(generate_latest(registry).decode()), name, **labels)
        if found:
            shares[os.path.basename(path)] = found
    return shares


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, mariadb_url: str) -> Iterator[Processes]:
    """The receiver; worker_default is started by the test. (Idle workers of the other
    queues, which this fleet once had, consume nothing here and move no sum.)"""
    with running_fleet(
        tmp_path,
        redis_url,
        mariadb_url,
        names=("web",),
        HOOKFLEET_STANDARD_VERIFY="off",
        HOOKFLEET_STRIPE_SECRETS="whsec_metrics_test",
        HOOKFLEET_MAX_BODY_BYTES="2000",
        # Forty events fill four pool jobs, so both pool children take some: the test
        # checks that their histograms add up. (At the default of 50 one job may take
        # them all.)
        HOOKFLEET_BATCH_SIZE="10",
        # Extra deliveries that only spread load over both gunicorn workers go where no
        # worker of this fleet consumes, so they move no task metric.
        HOOKFLEET_ROUTES="standard:spread.check=hookfleet.provisioning",
    ) as processes:
        yield processes


def post_standard(
    base_url: str, event_id: str, size: int = 0, event_type: str = "order.created"
) -> int:
    body = {"type": event_type, "data": {"order": event_id, "pad": "x" * size}}
    return request(base_url, "POST", "/webhooks/standard", body, {"webhook-id": event_id})[0]


def test_counters_queue_depth_and_task_histogram_add_up_across_processes(
    fleet: Processes, mariadb_url: str
) -> None:
    base = fleet.base_url
    before = scrape(fleet.ops_url)
    ids = [f"evt_m_{n:03d}" for n in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        accepted = list(pool.map(lambda e: post_standard(base, e), ids))
        repeats = list(pool.map(lambda e: post_standard(base, e), ids[:10]))
        too_large = list(pool.map(lambda n: post_standard(base, f"big_{n}", 3000), range(3)))

    def stripe(signature: str) -> int:
        headers = {"Stripe-Signature": signature}
        return request(base, "POST", "/webhooks/stripe", {"id": "evt_x"}, headers)[0]

    forged = [stripe(f"t={int(time.time())},v1={'0' * 64}") for _ in range(5)]
    replayed = [stripe(f"t=1,v1={'0' * 64}") for _ in range(2)]
    unknown = [request(base, "POST", "/webhooks/nope", {"a": 1})[0] for _ in range(2)]
    assert set(accepted) == {202} and set(repeats) == {200} and set(too_large) == {413}
    assert set(forged + replayed) == {401} and set(unknown) == {404}

    after = scrape(fleet.ops_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    received = "hookfleet_webhooks_received_total"
    assert moved(received, provider="standard", outcome="accepted") == 40
    assert moved(received, provider="standard", outcome="duplicate") == 10
    assert moved(received, provider="standard", outcome="too_large") == 3
    assert moved(received, provider="stripe", outcome="invalid_signature") == 5
    assert moved(received, provider="stripe", outcome="expired") == 2
    assert moved(received, provider="unknown", outcome="bad_request") == 2
    assert moved("hookfleet_ingest_duration_seconds_count", provider="standard") == 53
    # Nobody consumes hookfleet.default yet: the gauge is Redis's own count.
    assert value(after, "hookfleet_queue_depth", queue=Queue.DEFAULT) == 40
    assert value(after, "hookfleet_queue_unacked", queue=Queue.DEFAULT) == 0
    assert value(after, "hookfleet_queue_oldest_age_seconds", queue=Queue.DEFAULT) > 0
    assert value(after, "hookfleet_dependency_up", dependency="redis") == 1
    metrics_dir = Path(fleet.env["PROMETHEUS_MULTIPROC_DIR"])
    shares = per_process(metrics_dir, "counter", received, provider="standard", outcome="accepted")
    assert sum(shares.values()) == 40, shares
    # Which gunicorn worker accepts a connection is the kernel's choice: send more (to a
    # queue nobody here consumes) until both took some, and check the sum still holds.
    sent = 40
    for round_ in range(20):
        if len(shares) == 2:
            break
        extra = [f"spread_{round_}_{n}" for n in range(40)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = pool.map(lambda e: post_standard(base, e, event_type="spread.check"), extra)
            assert set(statuses) == {202}
        sent += len(extra)
        shares = per_process(
            metrics_dir, "counter", received, provider="standard", outcome="accepted"
        )
    assert sum(shares.values()) == sent and len(shares) == 2, shares  # both gunicorn workers

    # A worker that takes messages and cannot finish them (the table is locked): they
    # leave the list but are not done. The list alone under-counts; unacked shows them.
    engine = create_engine(mariadb_url)
    with engine.connect() as locker:
        locker.execute(text("LOCK TABLES webhook_events WRITE"))
        fleet.start("worker_default")
        fleet.wait_for_worker("worker_default")

        def holding() -> bool:
            now = scrape(fleet.ops_url)
            return value(now, "hookfleet_queue_unacked", queue=Queue.DEFAULT) >= 2

        wait_until(holding, 30, "the worker to reserve messages", interval=0.3)
        held = scrape(fleet.ops_url)
        waiting = value(held, "hookfleet_queue_depth", queue=Queue.DEFAULT)
        unacked = value(held, "hookfleet_queue_unacked", queue=Queue.DEFAULT)
        assert waiting < 40 and waiting + unacked == 40
        locker.execute(text("UNLOCK TABLES"))

    def all_processed() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == 40

    wait_until(all_processed, 90, "40 processed rows", interval=0.5)
    engine.dispose()
    task = {"task": PROCESS_EVENT, "outcome": "success"}
    histogram = "hookfleet_task_duration_seconds_count"
    ops = fleet.ops_url
    wait_until(lambda: moved_now(ops, before, histogram, **task) == 40, 15, "task histogram")
    done = scrape(fleet.ops_url)
    assert value(done, "hookfleet_queue_depth", queue=Queue.DEFAULT) == 0
    assert value(done, "hookfleet_queue_unacked", queue=Queue.DEFAULT) == 0
    e2e = "hookfleet_end_to_end_seconds_count"
    assert value(done, e2e, provider="standard") - value(before, e2e, provider="standard") == 40
    children = per_process(metrics_dir, "histogram", histogram, **task)
    assert sum(children.values()) == 40 and len(children) == 2, children  # both children


def moved_now(base_url: str, before: Samples, name: str, **labels: str) -> float:
    return value(scrape(base_url), name, **labels) - value(before, name, **labels)


def test_a_worker_apart_from_any_receiver_serves_its_own_metrics_port(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    """The Kubernetes layout: receiver and worker in different pods, different metrics
    directories; the worker's main process serves its children's samples."""
    common = {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_DATABASE_URL": mariadb_url,
        "HOOKFLEET_STANDARD_VERIFY": "off",
        "HOOKFLEET_ROUTES": "standard=hookfleet.low",
        "HOOKFLEET_VISIBILITY_TIMEOUT_S": "60",
        "HOOKFLEET_TASK_TIME_LIMIT_S": "30",
    }
    metrics_port = free_port()
    web = Processes.for_servers(tmp_path / "web-pod", **common)
    worker = Processes.for_servers(
        tmp_path / "worker-pod", HOOKFLEET_WORKER_METRICS_PORT=str(metrics_port), **common
    )
    try:
        web.start("web")
        worker.start("worker_low")
        web.wait_for_web()
        worker.wait_for_worker("worker_low")
        assert post_standard(web.base_url, "evt_apart") == 202
        worker_url = f"http://127.0.0.1:{metrics_port}"
        task = {"task": PROCESS_EVENT, "outcome": "success"}
        histogram = "hookfleet_task_duration_seconds_count"

        def counted() -> bool:
            try:
                return value(parse(_get(worker_url)), histogram, **task) == 1
            except OSError:
                return False

        wait_until(counted, 60, "the worker's metrics port to count the task", interval=0.3)
        on_web = scrape(web.ops_url)
        assert value(on_web, histogram, **task) == 0  # its own pod's processes only
        assert value(on_web, "hookfleet_queue_depth", queue=Queue.LOW) == 0
    finally:
        web.stop_all()
        worker.stop_all()


def _get(base_url: str) -> str:
    status, _, body = request(base_url, "GET", "/metrics")
    assert status == 200
    return str(body)

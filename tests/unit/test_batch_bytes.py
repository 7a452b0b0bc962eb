"""A worker's batches are bounded by bytes as well as by count: a pool process decodes
and applies one batch at a time, so its memory follows the batch's bytes."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any, cast

from celery.worker.state import task_ready

from workers.broker.batching import Batch, Collector

MB = 1_000_000


class Pool:
    """Two pool processes that take every batch handed to them and never answer."""

    num_processes = 2

    def __init__(self) -> None:
        self.jobs: list[list[Any]] = []


class Timer:
    def call_after(self, *_: Any) -> object:
        return object()

    def cancel(self, _: object) -> None:
        pass


class Recording(Collector):
    """The collector, handing each batch to the fake pool as its list of messages."""

    def _submit(self, batch: Batch) -> None:
        self.pool.jobs.append(batch.requests)


def collector(pool: Pool, batch_size: int, batch_bytes: int) -> Collector:
    conf = {"hookfleet_batch_size": batch_size, "hookfleet_batch_bytes": batch_bytes}
    task = SimpleNamespace(
        app=SimpleNamespace(
            conf=SimpleNamespace(get=conf.get, task_soft_time_limit=None, task_time_limit=None)
        ),
        run_batch="workers.pipeline.tasks:process_batch",
        batch_size=batch_size,
        batch_wait_s=0.01,
        soft_time_limit=None,
        time_limit=None,
    )
    return Recording(cast(Any, task), pool, Timer())


class Message:
    """What the collector reads of a Celery request: its id and its body."""

    def __init__(self, size: int) -> None:
        self.id = str(uuid.uuid4())
        self.body = b"x" * size
        self.delivery_info: dict[str, Any] = {}


def message(size: int) -> Any:
    return Message(size)


def sizes(job: list[Any]) -> list[int]:
    return [len(entry.body) for entry in job]


def run(messages: list[Any], batch_size: int, batch_bytes: int) -> list[list[int]]:
    pool = Pool()
    batches = collector(pool, batch_size, batch_bytes)
    try:
        for request in messages:
            batches.add(request)
        while batches.buffer:
            batches.running = 0
            batches.flush()
        return [sizes(job) for job in pool.jobs]
    finally:
        for request in messages:
            task_ready(request)


def test_large_messages_are_batched_by_bytes_not_only_by_count() -> None:
    jobs = run([message(6 * MB) for _ in range(8)], batch_size=50, batch_bytes=8 * MB)

    assert jobs == [[6 * MB]] * 8  # a second 6 MB call would pass 8 MB


def test_small_messages_fill_a_batch_up_to_its_byte_budget() -> None:
    jobs = run([message(3 * MB) for _ in range(7)], batch_size=50, batch_bytes=8 * MB)

    assert [size for job in jobs for size in job] == [3 * MB] * 7
    assert max(sum(job) for job in jobs) == 6 * MB
    assert [3 * MB, 3 * MB] in jobs


def test_a_message_larger_than_the_budget_goes_alone() -> None:
    jobs = run([message(1000), message(10 * MB), message(1000)], batch_size=50, batch_bytes=MB)

    assert jobs == [[1000], [10 * MB], [1000]]


def test_no_byte_budget_batches_by_count_only() -> None:
    jobs = run([message(6 * MB) for _ in range(5)], batch_size=2, batch_bytes=0)

    assert jobs == [[6 * MB, 6 * MB], [6 * MB, 6 * MB], [6 * MB]]

"""Fault injection: real processes are killed, stopped and starved while deliveries
stream in, and every scenario ends with counts — sent, accepted, persisted, effects,
lost, duplicated. It passes only with lost = 0 and duplicated = 0.

Run alone with ``pytest -m faults``; the table of counts is printed at the end of the run.

*Persisted*: the delivery's ``webhook_events`` row is processed. *Effects*: its ``calls``
row exists. *Duplicated*: a worker logged ``processed`` for the same event more than once
(an effect applied twice). *Lost*: accepted (a 2xx at least once: 202, or 200 for a
duplicate, e.g. a retry of a delivery whose 202 was lost when Redis died after
enqueueing it) but never persisted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from ingest.providers import retell
from models import Call
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from models.migrate import upgrade
from models.settings import Settings
from tests.helpers import FAULT_COUNTS, retell_call_ended
from tests.processes import Processes, request, running_fleet
from tests.servers import MariaDBServer, RedisServer, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

RESULTS = FAULT_COUNTS  # each row reaches the terminal summary (tests/conftest.py)
SECRET = "key_faults"


@dataclass
class Ledger:
    """What the senders saw, per delivery."""

    scenario: str
    sent: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    answers: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, call_id: str, status: int) -> None:
        with self.lock:
            self.sent.add(call_id)
            self.answers[status] += 1
            if 200 <= status < 300:  # the provider stops retrying: we own it now
                self.accepted.add(call_id)


@dataclass
class Stack:
    fleet: Processes
    redis: RedisServer
    mariadb: MariaDBServer
    database_url: str
    engine: Engine
    logs: Path
    run: str = ""  # added to event ids on a module's shared fleet: see ``calm_stack``
    marks: dict[str, int] = field(default_factory=dict)  # log sizes when the row began

    def log_since(self, name: str) -> str:
        """``name``'s log from where this row began: on a module's shared fleet the
        log also holds the rows before it (their restarts, lapsed leases, retries)."""
        return self.fleet.log(name)[self.marks.get(name, 0) :]

    def processed(self, ids: set[str]) -> set[str]:
        """Call ids whose ``call_ended`` delivery (what the senders send) is processed."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(WebhookEvent.event_id).where(
                    WebhookEvent.status == EventStatus.PROCESSED,
                    WebhookEvent.event_type == "call_ended",
                )
            ).scalars()
            return {event_id.removesuffix(":call_ended") for event_id in rows} & ids

    def calls(self, ids: set[str]) -> set[str]:
        """Call ids whose row shows the ``call_ended`` effect."""
        with self.engine.connect() as connection:
            ended = select(Call.call_id).where(Call.status == "ended")
            return set(connection.execute(ended).scalars()) & ids

    def applied_twice(self) -> list[str]:
        """Events a worker logged as processed (effect applied) more than once."""
        seen: Counter[str] = Counter()
        for path in self.logs.glob("worker_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"message": "processed"' in line:
                    seen[json.loads(line).get("event_id", "")] += 1
        return [event_id for event_id, n in seen.items() if n > 1]


def call_body(call_id: str) -> bytes:
    return retell_call_ended(call_id).encode()


def deliver(
    stack: Stack, ledger: Ledger, call_id: str, give_up_s: float = 120, body: bytes | None = None
) -> int:
    """Post as Retell would: signed, retried on 5xx or a dropped connection until a 2xx."""
    raw = body or call_body(call_id)
    deadline = time.monotonic() + give_up_s
    while True:
        headers = {"x-retell-signature": retell.sign(SECRET, raw, int(time.time() * 1000))}
        try:
            status = request(stack.fleet.base_url, "POST", "/webhooks/retell", raw, headers)[0]
        except OSError:
            status = 599  # connection refused or reset: the provider retries
        ledger.saw(call_id, status)
        if status < 500 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def stream(stack: Stack, ledger: Ledger, ids: list[str], threads: int = 8) -> Callable[[], None]:
    """Deliver ``ids`` in the background; the returned function waits for the senders."""
    pool = ThreadPoolExecutor(threads)
    futures = [pool.submit(deliver, stack, ledger, call_id) for call_id in ids]

    def finish() -> None:
        for future in futures:
            future.result()
        pool.shutdown()

    return finish


def settle_and_count(stack: Stack, ledger: Ledger, timeout_s: float = 180) -> dict[str, Any]:
    """Wait until every accepted delivery is persisted (or the timeout), then count."""
    try:
        wait_until(
            lambda: stack.processed(ledger.accepted) == ledger.accepted,
            timeout_s,
            f"{ledger.scenario}: every accepted delivery persisted",
            interval=1,
        )
    except TimeoutError:
        pass  # the counts below say what is missing
    persisted = stack.processed(ledger.accepted | ledger.sent)
    row = {
        "scenario": ledger.scenario,
        "sent": len(ledger.sent),
        "accepted": len(ledger.accepted),
        "persisted": len(persisted),
        "effects": len(stack.calls(ledger.sent)),
        "lost": len(ledger.accepted - persisted),
        "duplicated": len(stack.applied_twice()),
        "answers": dict(sorted(ledger.answers.items())),
    }
    RESULTS.append(row)
    return row


def assert_exactly_once(row: dict[str, Any]) -> None:
    assert (row["lost"], row["duplicated"]) == (0, 0), row
    assert row["persisted"] == row["effects"] == row["accepted"], row


FAULT_FLEET = ("web", "worker_high", "worker_default", "worker_low")
FAULT_SETTINGS = {
    "HOOKFLEET_RETELL_SECRETS": SECRET,
    "HOOKFLEET_STANDARD_VERIFY": "off",
    "HOOKFLEET_VISIBILITY_TIMEOUT_S": "20",
    "HOOKFLEET_TASK_TIME_LIMIT_S": "10",
    "HOOKFLEET_REDIS_TIMEOUT_S": "1",
    "HOOKFLEET_WORKER_SOFT_SHUTDOWN_S": "3",
}


@pytest.fixture
def stack(tmp_path: Path, mariadb_server: MariaDBServer) -> Iterator[Stack]:
    with running_stack(tmp_path, mariadb_server) as built:
        yield built


@pytest.fixture(scope="module")
def shared_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb_server: MariaDBServer
) -> Iterator[Stack]:
    """One fault fleet (its own Redis and database) for the rows that leave it whole:
    they restore what they change (a Redis setting, closed sockets), restart the fleet
    process they kill or stop, as an operator would, and the Redis they kill (same port,
    its AOF). Rows that stop the database server, flush Redis, or need settings that
    would change another row's fleet still build their own."""
    with running_stack(
        tmp_path_factory.mktemp("faults-shared"), mariadb_server, **SHARED_SETTINGS
    ) as built:
        yield built


SHARED_SETTINGS = {
    "HOOKFLEET_ROUTES": "standard=hookfleet.low",
    "HOOKFLEET_VISIBILITY_TIMEOUT_S": "10",
}
"""What the module fleet changes in ``FAULT_SETTINGS`` for one row each, which no other
row of it minds: the flood row's Standard Webhooks go to hookfleet.low; the visibility
timeout, the last resort for messages no lease covers (none here: every consumer is a
Hookfleet worker), is 10 s (the time limit) instead of 20 s, so the task held past both
is held 15 s, not 25."""


@pytest.fixture
def calm_stack(shared_stack: Stack) -> Stack:
    """The module's fleet, checked whole, with event ids of this attempt's own: a rerun
    (``--reruns``) or a later row must not meet an earlier attempt's ids as duplicates.
    Its counts stay this row's own: they are taken over the row's ids, and a duplicate
    anywhere in the fleet's logs still fails the row."""
    fleet = shared_stack.fleet
    exited = {
        name: proc.returncode for name, proc in fleet.running.items() if proc.poll() is not None
    }
    assert not exited and set(fleet.running) == set(FAULT_FLEET), exited
    return this_row(shared_stack)


def this_row(shared: Stack) -> Stack:
    """``shared`` for one row (one attempt of it): event ids of its own, and its logs
    read from where they stand now (``Stack.log_since``)."""
    marks = {path.stem: len(shared.fleet.log(path.stem)) for path in shared.logs.glob("*.log")}
    return replace(shared, run="_" + uuid.uuid4().hex[:6], marks=marks)


@contextmanager
def running_stack(
    tmp_path: Path, mariadb: MariaDBServer, names: tuple[str, ...] = FAULT_FLEET, **env: str
) -> Iterator[Stack]:
    """Its own Redis (AOF on, as shipped), a fresh database, and the Procfile's processes."""
    redis_server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        with stack_on(tmp_path, mariadb, redis_server.url, redis_server, names, **env) as stack:
            yield stack
    finally:
        redis_server.stop()


@contextmanager
def stack_on(
    tmp_path: Path,
    mariadb: MariaDBServer,
    redis_url: str,
    server: RedisServer,
    names: tuple[str, ...] = FAULT_FLEET,
    **env: str,
) -> Iterator[Stack]:
    """The fault suite's fleet (receiver and three workers, or ``names``) on ``redis_url``
    (``server``'s address, or a proxy in front of it), with a fresh database; ``env``
    adds to or overrides ``FAULT_SETTINGS``."""
    database_url = mariadb.create_database()
    upgrade(Settings(database_url=database_url))
    with running_fleet(
        tmp_path, redis_url, database_url, names=names, **(FAULT_SETTINGS | env)
    ) as fleet:
        fleet.wait_for_worker("worker_high")
        engine = create_engine(database_url)
        try:
            yield Stack(fleet, server, mariadb, database_url, engine, fleet.logs)
        finally:
            engine.dispose()


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i:05d}" for i in range(n)]


def wait_for_accepted(ledger: Ledger, n: int, timeout_s: float = 60) -> None:
    wait_until(lambda: len(ledger.accepted) >= n, timeout_s, f"{n} accepted", interval=0.05)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pool_children(stack: Stack, name: str) -> list[int]:
    main = stack.fleet.running[name].pid
    out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


# --- Crashes ------------------------------------------------------------------------------


def test_kill_9_of_a_whole_worker_mid_stream(calm_stack: Stack) -> None:
    ledger = Ledger("kill -9 worker process group")
    finish = stream(calm_stack, ledger, ids(f"wk{calm_stack.run}", 1000))
    wait_for_accepted(ledger, 300)
    kill_group(calm_stack.fleet.running.pop("worker_high"))
    time.sleep(1)
    calm_stack.fleet.start("worker_high")
    finish()

    assert_exactly_once(settle_and_count(calm_stack, ledger))


def test_kill_9_of_one_pool_child_mid_stream(calm_stack: Stack) -> None:
    ledger = Ledger("kill -9 one pool child")
    finish = stream(calm_stack, ledger, ids(f"pc{calm_stack.run}", 600))
    wait_for_accepted(ledger, 300)
    wait_until(lambda: bool(pool_children(calm_stack, "worker_high")), 10, "pool children")
    os.kill(pool_children(calm_stack, "worker_high")[0], signal.SIGKILL)
    finish()

    assert_exactly_once(settle_and_count(calm_stack, ledger))


def test_kill_9_of_redis_mid_stream_and_restart(calm_stack: Stack) -> None:
    # On the module's fleet: Redis comes back on its port with its AOF, as in
    # test_leases' two-high-worker fleet, and the fleet's processes reconnect.
    ledger = Ledger("kill -9 redis (AOF), restart")
    finish = stream(calm_stack, ledger, ids(f"rd{calm_stack.run}", 600))
    wait_for_accepted(ledger, 300)
    assert calm_stack.redis.proc is not None
    calm_stack.redis.proc.kill()
    calm_stack.redis.proc.wait()
    time.sleep(2)  # providers meet 503s and connection errors meanwhile
    calm_stack.redis.start()  # same port, same AOF
    finish()

    row = settle_and_count(calm_stack, ledger)
    assert_exactly_once(row)
    assert row["answers"].get(503, 0) > 0  # the outage was real and answered 503


def test_mariadb_stopped_for_20_s_mid_stream(tmp_path: Path) -> None:
    own = MariaDBServer(tmp_path / "db").start()
    try:
        with running_stack(tmp_path, own) as stack:
            ledger = Ledger("MariaDB stopped 20 s")
            finish = stream(stack, ledger, ids("db", 600))
            wait_for_accepted(ledger, 150)
            own.stop()
            time.sleep(20)
            own.start()
            finish()

            row = settle_and_count(stack, ledger)
            with stack.engine.connect() as connection:
                dead = connection.scalar(
                    select(func.count()).where(WebhookEvent.status != EventStatus.PROCESSED)
                )
    finally:
        own.stop()
    assert_exactly_once(row)
    assert dead == 0


# --- Overload and refusals ------------------------------------------------------------------


def test_redis_at_maxmemory_answers_503_then_everything_lands(calm_stack: Stack) -> None:
    ledger = Ledger("redis at maxmemory")
    client = calm_stack.redis.client()
    client.config_set("maxmemory", 1)
    try:
        for call_id in ids(f"mm{calm_stack.run}", 20):
            raw = call_body(call_id)
            headers = {"x-retell-signature": retell.sign(SECRET, raw, int(time.time() * 1000))}
            status = request(calm_stack.fleet.base_url, "POST", "/webhooks/retell", raw, headers)[0]
            ledger.saw(call_id, status)
        assert ledger.answers == {503: 20}  # refused, not accepted and dropped
        finish = stream(calm_stack, ledger, ids(f"mm{calm_stack.run}", 20))
        time.sleep(1)
    finally:
        client.config_set("maxmemory", 0)
    finish()

    assert_exactly_once(settle_and_count(calm_stack, ledger))


def test_a_worker_started_while_redis_is_over_maxmemory_consumes_what_waits(
    calm_stack: Stack,
) -> None:
    """Redis full (``maxmemory``, ``noeviction``) with a backlog its worker was away
    for: the worker (re)started now consumes it, which is what frees the memory. It
    used to stop at once, "Unrecoverable error: OutOfMemoryError", on the writes of its
    queue declaration (found when the Redis-restart row's idle worker reconnected
    during the maxmemory row)."""
    ledger = Ledger("worker started on a full redis")
    assert calm_stack.fleet.stop("worker_high") == 0
    stream(calm_stack, ledger, ids(f"fr{calm_stack.run}", 200))()
    assert ledger.answers == {202: 200}
    client = calm_stack.redis.client()
    client.config_set("maxmemory", 1)
    try:
        worker = calm_stack.fleet.start("worker_high")
        wait_until(
            lambda: calm_stack.processed(ledger.accepted) == ledger.accepted or worker.poll(),
            60,
            "the backlog consumed while redis is full",
        )
        assert worker.poll() is None, calm_stack.log_since("worker_high")[-3000:]
    finally:
        client.config_set("maxmemory", 0)

    assert_exactly_once(settle_and_count(calm_stack, ledger))
    assert "consuming anyway" in calm_stack.log_since("worker_high")


def test_a_duplicate_storm_lands_each_event_once(calm_stack: Stack) -> None:
    ledger = Ledger("duplicate storm 50 x 20")
    storm = [call_id for call_id in ids(f"ds{calm_stack.run}", 50) for _ in range(20)]
    random.Random(7).shuffle(storm)
    stream(calm_stack, ledger, storm, threads=16)()

    row = settle_and_count(calm_stack, ledger)
    assert_exactly_once(row)
    assert row["answers"] == {202: 50, 200: 950}


def test_bad_requests_interleaved_with_good_ones(calm_stack: Stack) -> None:
    # 500 of each of the six kinds of bad request, 300 good deliveries among them.
    ledger = Ledger("3,000 bad requests + 300 good")
    rng = random.Random(11)
    bad_statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def bad(n: int) -> None:
        kind = n % 6
        raw = rng.randbytes(rng.randint(0, 300))
        headers: dict[str, str] = {}
        if kind == 1:
            raw = call_body(f"bad_{n}")
            headers = {"x-retell-signature": f"v={int(time.time() * 1000)},d={'0' * 64}"}
        elif kind == 2:
            raw = b'{"event": "call_ended"}'
            headers = {"x-retell-signature": retell.sign(SECRET, raw, int(time.time() * 1000))}
        elif kind == 3:
            headers = {"x-retell-signature": rng.choice(["", "v=,d=", "garbage", "v=1,d=zz"])}
        path = rng.choice(["/webhooks/retell", "/webhooks/retell", "/webhooks/nope", "/"])
        method = "GET" if kind == 4 else "POST"
        status = request(calm_stack.fleet.base_url, method, path, raw, headers)[0]
        with lock:
            bad_statuses[status] += 1

    good = ids(f"gd{calm_stack.run}", 300)
    jobs: list[Callable[[], Any]] = [lambda n=n: bad(n) for n in range(3_000)]
    jobs += [lambda c=c: deliver(calm_stack, ledger, c) for c in good]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()

    row = settle_and_count(calm_stack, ledger)
    assert_exactly_once(row)
    assert row["accepted"] == 300
    assert not [s for s in bad_statuses if s >= 500], bad_statuses


def test_clock_skew_just_inside_and_just_outside_the_tolerance(calm_stack: Stack) -> None:
    def post_at(offset_s: float, call_id: str) -> int:
        raw = call_body(call_id)
        at = int((time.time() + offset_s) * 1000)
        headers = {"x-retell-signature": retell.sign(SECRET, raw, at)}
        return request(calm_stack.fleet.base_url, "POST", "/webhooks/retell", raw, headers)[0]

    sk = f"sk{calm_stack.run}"
    assert [post_at(-290, f"{sk}_1"), post_at(290, f"{sk}_2")] == [202, 202]
    assert [post_at(-310, f"{sk}_3"), post_at(310, f"{sk}_4")] == [401, 401]


def test_a_slow_client_and_an_oversized_body_do_not_starve_the_receiver(calm_stack: Stack) -> None:
    host, port = calm_stack.fleet.base_url.removeprefix("http://").split(":")
    trickling = []
    for _ in range(2):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /webhooks/retell HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n{"
        )
        trickling.append(sock)
    oversized = socket.create_connection((host, int(port)), timeout=5)
    oversized.sendall(
        b"POST /webhooks/retell HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n"
    )
    started = time.monotonic()
    answer = oversized.recv(200)
    early = time.monotonic() - started

    ledger = Ledger("slow clients + oversized body")
    latencies = []
    for call_id in ids(f"sl{calm_stack.run}", 40):
        t0 = time.monotonic()
        deliver(calm_stack, ledger, call_id)
        latencies.append(time.monotonic() - t0)
        for sock in trickling:
            sock.sendall(b" ")
    for sock in [*trickling, oversized]:
        sock.close()

    assert answer.startswith(b"HTTP/1.1 413") and early < 2
    assert max(latencies) < 2, latencies
    assert_exactly_once(settle_and_count(calm_stack, ledger))


def test_a_flood_on_low_does_not_delay_high(calm_stack: Stack) -> None:
    # The module's fleet routes Standard Webhooks to hookfleet.low (SHARED_SETTINGS),
    # which no other row of it sends.
    stack = calm_stack
    flood = ThreadPoolExecutor(4)
    for n in range(3000):
        flood.submit(
            request,
            stack.fleet.base_url,
            "POST",
            "/webhooks/standard",
            {"type": "bulk.import", "n": n},
            {"webhook-id": f"bulk{stack.run}_{n}"},
        )
    time.sleep(2)
    ledger = Ledger("flood on hookfleet.low, high p99")
    high = ids(f"hi{stack.run}", 100)
    for call_id in high:
        deliver(stack, ledger, call_id)
    row = settle_and_count(stack, ledger, timeout_s=60)
    flood.shutdown(wait=True)
    with stack.engine.connect() as connection:
        waits = sorted(
            (processed - received).total_seconds()
            for received, processed in connection.execute(
                select(WebhookEvent.received_at, WebhookEvent.processed_at).where(
                    WebhookEvent.queue == Queue.HIGH,
                    WebhookEvent.event_id.in_([f"{call_id}:call_ended" for call_id in high]),
                )
            )
        )
    client = stack.redis.client()
    low_backlog = client.llen(Queue.LOW)
    # The module's next rows need not wait for the flood (its events were never
    # recorded: a worker records what it takes); a shared fleet is left as found.
    client.delete(Queue.LOW)
    p99 = waits[int(len(waits) * 0.99) - 1]
    row["high_p99_s"] = round(p99, 3)
    assert_exactly_once(row)
    row["low_backlog_after"] = low_backlog
    # The high events overtook the flood: when the last of them was processed, most of
    # the low events accepted before them were still waiting (2,700-2,800 of 3,000 in
    # every run so far). Their own wait is typically ~1 s; the bound leaves room for a
    # busy 2-core machine (one local run measured 2.25 s) and still fails if they had
    # queued behind the flood.
    assert low_backlog >= 1500, low_backlog
    assert p99 < 5.0, waits[-5:]


# --- Slow work, shutdown, poison --------------------------------------------------------------


@contextmanager
def call_row_locked(stack: Stack, call_id: str) -> Iterator[Callable[[], None]]:
    """Create the call's row and hold its lock from another connection; yields release()."""
    raw = call_body(call_id)
    ledger = Ledger("seed")
    deliver(stack, ledger, call_id, body=raw.replace(b"call_ended", b"call_started"))
    wait_until(lambda: stack.calls({call_id}) == {call_id}, 30, "the call row")
    blocker = stack.engine.connect()
    transaction = blocker.begin()
    blocker.execute(text("SELECT id FROM calls WHERE call_id = :c FOR UPDATE"), {"c": call_id})
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            transaction.commit()
            released.set()

    try:
        yield release
    finally:
        release()
        blocker.close()


def recorded(stack: Stack, call_id: str) -> bool:
    """The call's ``call_ended`` event is recorded (``received``) and its effect not yet
    applied: a worker has it in hand, e.g. waiting on the row lock of ``call_row_locked``."""
    with stack.engine.connect() as connection:
        status = connection.scalar(
            select(WebhookEvent.status).where(WebhookEvent.event_id == f"{call_id}:call_ended")
        )
    return status is EventStatus.RECEIVED


HELD_PAST_BOTH_S = 5 + max(
    int(FAULT_SETTINGS["HOOKFLEET_TASK_TIME_LIMIT_S"]),  # 10 s
    int(SHARED_SETTINGS["HOOKFLEET_VISIBILITY_TIMEOUT_S"]),  # 10 s
)
"""How long the slow-task row holds its lock: 5 s past the module fleet's time limit
and its visibility timeout, as 25 s was past 10 s and 20 s on the fleet before."""


def test_a_task_outliving_its_time_limit_and_the_visibility_timeout_takes_effect_once(
    calm_stack: Stack,
) -> None:
    call_id = f"slow{calm_stack.run}"
    calm_stack.mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 60")
    try:
        ledger = Ledger("task longer than visibility timeout")
        with call_row_locked(calm_stack, call_id) as release:
            assert deliver(calm_stack, ledger, call_id) == 202
            time.sleep(HELD_PAST_BOTH_S)
            release()
        row = settle_and_count(calm_stack, ledger, timeout_s=90)
    finally:
        calm_stack.mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 50")
    assert_exactly_once(row)
    # The database's lock wait (2 s in the workers' sessions) ended each try in time, and
    # the task was retried on fresh messages until the lock was gone.
    assert calm_stack.log_since("worker_high").count("transient failure, will retry") >= 2


def test_sigterm_to_a_worker_requeues_its_running_task_and_nothing_is_lost(
    calm_stack: Stack,
) -> None:
    ledger = Ledger("SIGTERM worker mid-task")
    call_id = f"term{calm_stack.run}"
    with call_row_locked(calm_stack, call_id) as release:
        assert deliver(calm_stack, ledger, call_id) == 202
        wait_until(
            lambda: recorded(calm_stack, call_id), 30, "the task running, waiting on the lock"
        )
        started = time.monotonic()
        calm_stack.fleet.stop("worker_high", signal.SIGTERM, timeout=30)
        stopped_in = time.monotonic() - started
        release()
    calm_stack.fleet.start("worker_high")

    row = settle_and_count(calm_stack, ledger, timeout_s=90)
    assert_exactly_once(row)
    assert stopped_in < 15  # soft shutdown of 3 s, then cancel and requeue


def test_sigterm_to_the_receiver_finishes_requests_in_flight(calm_stack: Stack) -> None:
    host, port = calm_stack.fleet.base_url.removeprefix("http://").split(":")
    call_id = f"inflight{calm_stack.run}"
    raw = call_body(call_id)
    sock = socket.create_connection((host, int(port)), timeout=30)
    signature = retell.sign(SECRET, raw, int(time.time() * 1000))
    sock.sendall(
        b"POST /webhooks/retell HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"x-retell-signature: {signature}\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
        + raw[:10]
    )
    time.sleep(0.5)
    os.kill(calm_stack.fleet.running["web"].pid, signal.SIGTERM)
    try:
        time.sleep(0.5)
        sock.sendall(raw[10:])
        answer = sock.recv(500)
        sock.close()
    finally:  # the module's next row gets its receiver back
        calm_stack.fleet.stop("web")
        calm_stack.fleet.start("web")
        calm_stack.fleet.wait_for_web()

    assert answer.startswith(b"HTTP/1.1 202"), answer
    ledger = Ledger("SIGTERM receiver mid-request")
    ledger.saw(call_id, 202)
    assert_exactly_once(settle_and_count(calm_stack, ledger, timeout_s=30))


def test_a_message_lost_by_redis_after_a_worker_recorded_it_is_swept_back(
    stack: Stack,
) -> None:
    """A failover to a replica that never saw the message: the worker had recorded the
    event (`received`) and was applying it when Redis lost everything. The sweep finds
    the row and queues it again; the effect lands once."""
    ledger = Ledger("redis loses a recorded message, sweep")
    with call_row_locked(stack, "lost_1") as release:
        assert deliver(stack, ledger, "lost_1") == 202
        wait_until(
            lambda: recorded(stack, "lost_1"),
            30,
            "the event recorded, its effect waiting on the lock",
        )
        kill_group(stack.fleet.running.pop("worker_high"))  # its message is in hand
        stack.redis.client().flushall()  # ...and the new primary never had it
        release()
    stack.fleet.start("worker_high")
    time.sleep(3)
    assert stack.processed({"lost_1"}) == set()  # nothing on Redis brings it back

    swept = subprocess.run(
        ["hookfleet", "sweep", "--older-than", "1s"],
        env=stack.fleet.env,
        capture_output=True,
        text=True,
    )
    assert swept.returncode == 0, swept.stderr
    assert "requeued 1" in swept.stdout, swept.stdout
    row = settle_and_count(stack, ledger, timeout_s=60)
    assert_exactly_once(row)


def test_a_poison_message_is_dead_lettered_then_replayed_once(
    tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    with running_stack(
        tmp_path,
        mariadb_server,
        HOOKFLEET_TASK_MAX_RETRIES="1",
        HOOKFLEET_DB_RETRY_ATTEMPTS="2",
    ) as stack:
        stack.mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 1")
        ledger = Ledger("poison: dead letter, then replay")
        env = {**stack.fleet.env}
        try:
            with call_row_locked(stack, "poison_1") as release:
                assert deliver(stack, ledger, "poison_1") == 202

                def dead() -> bool:
                    with stack.engine.connect() as connection:
                        return (
                            connection.scalar(
                                select(WebhookEvent.status).where(
                                    WebhookEvent.event_id == "poison_1:call_ended"
                                )
                            )
                            is EventStatus.DEAD
                        )

                wait_until(dead, 60, "the event to be dead", interval=0.5)
                listing = subprocess.run(
                    ["hookfleet", "dlq", "list"], env=env, capture_output=True, text=True
                )
                release()  # the cause is fixed
            replayed = subprocess.run(
                ["hookfleet", "replay", "--all-dead"], env=env, capture_output=True, text=True
            )
            row = settle_and_count(stack, ledger, timeout_s=60)
        finally:
            stack.mariadb.sql("SET GLOBAL innodb_lock_wait_timeout = 50")
        with stack.engine.connect() as connection:
            attempts = connection.scalar(
                select(WebhookEvent.attempts).where(WebhookEvent.event_id == "poison_1:call_ended")
            )
    assert "poison_1:call_ended" in listing.stdout and "Lock wait timeout" in listing.stdout
    assert "replayed 1 event(s) on hookfleet.low" in replayed.stdout, replayed
    assert_exactly_once(row)
    # Two failed attempts (the first and its one retry, HOOKFLEET_TASK_MAX_RETRIES=1),
    # each counted though its transaction rolled back, then the replay.
    assert attempts == 3

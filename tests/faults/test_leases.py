"""Ownership of a message is a lease of the live worker that took it.

Two parts. First, the database's half, forced deterministically: two copies of one
message, in two workers at once, waiting on the same row lock, apply once. Then the
fault rows (marker ``faults``, real processes, counted like tests/faults/test_faults.py): a
worker killed, frozen, or cut off loses its messages to the others within its lease; a
live worker keeps them however long it works.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ingest.providers import calcom
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from tests.faults.test_faults import (
    SECRET,
    Ledger,
    Stack,
    assert_exactly_once,
    call_row_locked,
    deliver,
    ids,
    kill_group,
    pool_children,
    running_stack,
    settle_and_count,
    stream,
    this_row,
    wait_for_accepted,
)
from tests.integration.test_events import incoming
from tests.processes import Processes, procfile, request, running_fleet
from tests.servers import MariaDBServer, wait_until
from workers.broker.leases import HELD_PREFIX
from workers.pipeline import record as events
from workers.pipeline.record import Outcome, record_batch


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Provider 'test' gets a handler whose effect is not idempotent, like a new
    booking: each call lists itself and appends '+' to the row's event type (in the
    same transaction), so an effect applied twice shows as '++'."""
    calls: list[str] = []

    def handler(session: Session, row: WebhookEvent) -> None:
        calls.append(row.event_id)
        row.event_type += "+"

    monkeypatch.setitem(events.HANDLERS, "test", handler)
    return calls


def _lock_waits(session: Session) -> int:
    """Transactions waiting on a lock in this session's database. Not the server's: the
    module's fleets keep running on databases of their own on the same server, and a
    lock wait of theirs kept the count from ever being exactly two (the row failed
    twice, 20 s each, in a full run)."""
    return int(
        session.scalar(
            text(
                "SELECT COUNT(*) FROM information_schema.innodb_trx AS trx"
                " JOIN information_schema.processlist AS p ON p.id = trx.trx_mysql_thread_id"
                " WHERE trx.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
            )
        )
        or 0
    )


@pytest.mark.several_connections
def test_two_copies_of_one_message_waiting_on_the_same_row_lock_apply_once(
    sessions: sessionmaker[Session], database_url: str, applied: list[str]
) -> None:
    """The issue's double apply: a frozen worker holds the event's row lock inside its
    transaction; its message went to another worker twice over (two pool processes),
    both of which already read the row as ``received`` and now wait on that lock. The
    frozen one rolls back. Exactly one copy may apply."""
    event = incoming("evt_twice", provider="test")
    record_batch(sessions, [incoming("evt_other", provider="test")])  # warm the schema
    with sessions() as session:  # the first delivery recorded the event, unfinished
        session.execute(
            events._insert_ignoring_duplicates(session), [events._row(event, EventStatus.RECEIVED)]
        )
        session.commit()
    engine = sessions.kw["bind"]
    mariadb = engine.dialect.name in ("mysql", "mariadb")

    arrived = threading.Semaphore(0)
    workers: set[int] = set()

    @sa_event.listens_for(engine, "before_cursor_execute")
    def at_the_claim(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() in workers and statement.lstrip().upper().startswith(
            "UPDATE WEBHOOK_EVENTS"
        ):
            arrived.release()

    frozen = sessions()  # the frozen worker's transaction, holding the row lock
    frozen.execute(
        update(WebhookEvent)
        .where(WebhookEvent.event_id == "evt_twice")
        .values(attempts=WebhookEvent.attempts + 1)
    )
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def copy() -> None:
        workers.add(threading.get_ident())
        try:
            outcomes.extend(record_batch(sessions, [event]))
        except SQLAlchemyError as error:  # asserted on below
            errors.append(error)

    threads = [threading.Thread(target=copy) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for _ in threads:  # both copies read the row and reached the claim...
            assert arrived.acquire(timeout=30)
        if mariadb:  # ...and both are waiting on the frozen worker's lock
            with sessions() as probe:
                wait_until(lambda: _lock_waits(probe) == 2, 20, "two lock waits")
        else:  # SQLite cannot show its waiters: give them time to start waiting
            time.sleep(1)
    finally:
        frozen.rollback()  # the thawed worker gives up its transaction
        frozen.close()
        for thread in threads:
            thread.join(60)
        sa_event.remove(engine, "before_cursor_execute", at_the_claim)

    assert not errors, errors
    assert sorted(outcomes) == [Outcome.ALREADY_DONE, Outcome.PROCESSED]
    assert applied.count("evt_twice") == 1
    with sessions() as session:
        row = session.scalars(
            select(WebhookEvent).where(WebhookEvent.event_id == "evt_twice")
        ).one()
    assert (row.status, row.event_type) == (EventStatus.PROCESSED, "invoice.paid+")


# --- Fault rows: real processes, the shipped lease or a short one -----------------------------

SHIPPED = Settings()

ROW_LEASE_S = 4.0
"""The lease of the module's one-high-worker fleet (``shared_lease_stack``): its rows
check recovery and a long task relative to the lease, not the shipped 8 s, so they wait
half as long (a lapsed lease is back within it plus one sweep, a fifth of it). Renewed
every 0.8 s, it still outlasts a loaded box's scheduling hiccups; the two-high-worker
fleet keeps the shipped lease, which a Redis restart (2 s down) must stay within."""

RECOVERY_MARGIN_S = 22
"""What a row allows past its fleet's lease for the held messages to be processed (the
restarted worker's start, the backlog before them): the 30 s bound of the shipped 8 s
lease, kept as a margin when the lease is shorter."""


@contextmanager
def lease_stack(
    tmp_path: Path, mariadb: MariaDBServer, *, second_high: bool, **env: str
) -> Iterator[Stack]:
    """test_faults' stack with the shipped lease (unless ``env`` sets
    ``HOOKFLEET_LEASE_S``), visibility timeout and time limit, and optionally a second
    ``hookfleet.high`` worker (``worker_high2``)."""
    with running_stack(
        tmp_path,
        mariadb,
        names=("web", "worker_high", "worker_default"),
        HOOKFLEET_VISIBILITY_TIMEOUT_S=str(SHIPPED.visibility_timeout_s),
        HOOKFLEET_TASK_TIME_LIMIT_S=str(SHIPPED.task_time_limit_s),
        **env,
    ) as stack:
        if second_high:
            start_as(stack.fleet, "worker_high2", "worker_high")
        yield stack


LEASE_FLEET = ("web", "worker_high", "worker_default")


@pytest.fixture(scope="module")
def shared_lease_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb_server: MariaDBServer
) -> Iterator[Stack]:
    """One ``lease_stack`` (no second high worker) for the rows that leave it whole: they
    restart the processes they kill or stop (one worker, one pool child, or the whole
    host), or release the lock they hold, or thaw the session's MariaDB they stopped.
    Each counts the leases of the worker it stops (by pid) and reads its logs from
    where its row began. Rows that need a second high worker, freeze a worker of
    theirs or kill the fleet's Redis build their own. Its lease is ``ROW_LEASE_S``."""
    tmp = tmp_path_factory.mktemp("leases-shared")
    lease = {"HOOKFLEET_LEASE_S": str(ROW_LEASE_S)}
    with lease_stack(tmp, mariadb_server, second_high=False, **lease) as built:
        yield built


@pytest.fixture
def lease_row_stack(shared_lease_stack: Stack) -> Stack:
    """The module's lease fleet, checked whole, with event ids of this attempt's own (a
    rerun or a later row must not meet an earlier attempt's ids as duplicates)."""
    fleet = shared_lease_stack.fleet
    exited = {n: p.returncode for n, p in fleet.running.items() if p.poll() is not None}
    assert not exited and set(fleet.running) == set(LEASE_FLEET), exited
    return this_row(shared_lease_stack)


TWO_HIGH_FLEET = (*LEASE_FLEET, "worker_high2")


@pytest.fixture(scope="module")
def shared_two_high_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb_server: MariaDBServer
) -> Iterator[Stack]:
    """A second module fleet, with a second ``hookfleet.high`` worker, for the rows that
    need one and leave it whole: they thaw the worker they freeze, or restart the Redis
    they kill (same port, its AOF). Each reads the leases of the worker it freezes (by
    pid) and its logs from where its row began. The shipped lease: the Redis restart
    must stay within it.
    Its rows are an xdist group of their own (``two_high``), so this fleet and
    ``shared_lease_stack`` may run on two xdist workers side by side."""
    tmp = tmp_path_factory.mktemp("leases-two-high")
    with lease_stack(tmp, mariadb_server, second_high=True) as built:
        yield built


@pytest.fixture
def two_high_row_stack(shared_two_high_stack: Stack) -> Stack:
    """The module's two-high-worker fleet, checked whole, for one row (``this_row``)."""
    fleet = shared_two_high_stack.fleet
    exited = {n: p.returncode for n, p in fleet.running.items() if p.poll() is not None}
    assert not exited and set(fleet.running) == set(TWO_HIGH_FLEET), exited
    return this_row(shared_two_high_stack)


two_high = pytest.mark.xdist_group("test_leases_two_high")


def start_as(fleet: Processes, alias: str, name: str) -> None:
    """Another process of the Procfile's ``name`` (its own node name and log)."""
    fleet.start(alias, procfile()[name].replace("-n high@", f"-n {alias}@"))
    fleet.wait_for_worker(alias)


def recovered_after(stack: Stack, held: set[str], fault_at: float, but: int = 0) -> float:
    """Seconds from the fault until the deliveries whose messages were held at the
    fault (``held``) are processed, all but ``but`` of them."""
    wait_until(
        lambda: len(held - stack.processed(held)) <= but,
        120,
        f"the {len(held)} held deliveries processed",
        interval=0.2,
    )
    return round(time.monotonic() - fault_at, 1)


def streaming(stack: Stack, ledger: Ledger, prefix: str, n: int) -> Callable[[], None]:
    """``n`` deliveries sent in the background, 300 of them accepted on return (the fault
    hits mid-stream); the returned function waits for the senders."""
    finish = stream(stack, ledger, ids(prefix, n))
    wait_for_accepted(ledger, 300)
    return finish


def settled_after_recovery(
    stack: Stack, ledger: Ledger, held: set[str], fault_at: float, finish: Callable[[], None]
) -> dict[str, Any]:
    """The counted row, with ``recovery_s`` (``recovered_after``) taken before the senders
    are waited for (``finish``) and everything settles."""
    recovery = recovered_after(stack, held, fault_at)
    finish()
    row = settle_and_count(stack, ledger)
    row["recovery_s"] = recovery
    return row


def held_call_ids(stack: Stack, pid: int | None = None) -> set[str]:
    """Call ids of the messages consumers (the one of ``pid``) hold under a lease now."""
    client = stack.redis.client()
    found = set()
    for key in client.scan_iter(f"{HELD_PREFIX}*:{pid}:*" if pid else f"{HELD_PREFIX}*"):
        for tag in client.hkeys(key):
            entry = client.hget("unacked", tag)
            if entry:
                message = json.loads(entry)[0]
                body = json.loads(base64.b64decode(message["body"]))
                kwargs = body["kwargs"] if isinstance(body, dict) else body[1]
                found.add(kwargs["event_id"].removesuffix(":call_ended"))
    return found


def restores_logged(stack: Stack) -> int:
    """Lapsed leases the workers restored since the row began."""
    return sum(
        stack.log_since(path.stem).count("lease lapsed") for path in stack.logs.glob("worker_*.log")
    )


def deliver_through_crashes(stack: Stack, ledger: Ledger, call_id: str) -> None:
    """As Retell would, also when the receiver dies mid-answer (a truncated reply)."""
    for _ in range(600):
        try:
            if deliver(stack, ledger, call_id) < 500:
                return
        except http.client.HTTPException:
            ledger.saw(call_id, 599)
        time.sleep(0.2)


faults = pytest.mark.faults


@faults
def test_kill_9_of_a_worker_group_is_recovered_within_the_lease(
    lease_row_stack: Stack,
) -> None:
    stack = lease_row_stack
    ledger = Ledger("lease: kill -9 worker group (shipped)")
    finish = streaming(stack, ledger, f"lk{stack.run}", 600)
    kill_group(stack.fleet.running.pop("worker_high"))
    killed_at = time.monotonic()
    held = held_call_ids(stack)
    time.sleep(1)
    stack.fleet.start("worker_high")
    row = settled_after_recovery(stack, ledger, held, killed_at, finish)
    assert_exactly_once(row)
    assert row["recovery_s"] < ROW_LEASE_S + RECOVERY_MARGIN_S, row


@faults
def test_kill_9_of_one_pool_child_is_recovered_at_once(
    lease_row_stack: Stack,
) -> None:
    stack = lease_row_stack
    ledger = Ledger("lease: kill -9 one pool child")
    finish = streaming(stack, ledger, f"lc{stack.run}", 600)
    wait_until(lambda: bool(pool_children(stack, "worker_high")), 10, "pool children")
    os.kill(pool_children(stack, "worker_high")[0], signal.SIGKILL)
    killed_at = time.monotonic()
    held = held_call_ids(stack)
    row = settled_after_recovery(stack, ledger, held, killed_at, finish)
    assert_exactly_once(row)
    assert row["recovery_s"] < 30, row


@faults
@two_high
def test_a_frozen_busy_worker_loses_its_messages_and_its_late_work_lands_once(
    two_high_row_stack: Stack,
) -> None:
    stack = two_high_row_stack
    ledger = Ledger("lease: SIGSTOP busy worker, SIGCONT")
    frozen = stack.fleet.running["worker_high"].pid
    # The database holds every batch at its first statement while the deliveries
    # pile up in the workers' hands: worker_high is busy for certain when frozen.
    hung = stack.engine.connect()
    hung.execute(text("LOCK TABLES webhook_events WRITE"))
    try:
        stream(stack, ledger, ids(f"fz{stack.run}", 600), threads=12)()
        wait_until(
            lambda: len(held_call_ids(stack, frozen)) > 2 * SHIPPED.batch_size,
            60,
            "worker_high holding its batches and more",
        )
        os.killpg(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        held = held_call_ids(stack, frozen)
    finally:
        hung.execute(text("UNLOCK TABLES"))
        hung.close()
    try:
        recovery = recovered_after(stack, held, frozen_at)
    finally:
        os.killpg(frozen, signal.SIGCONT)  # thawed: its late work and acks land now
    wait_until(
        lambda: "lease had lapsed" in stack.log_since("worker_high"),
        60,
        "the thawed worker's late acks, ignored",
    )
    row = settle_and_count(stack, ledger)
    row["recovery_s"] = recovery
    row["held_when_frozen"] = len(held)
    lapsed = restores_logged(stack)
    assert_exactly_once(row)
    assert lapsed >= 1
    assert recovery < 30, row


def booking_body(uid: str) -> bytes:
    """A Cal.com BOOKING_CREATED (hookfleet.default), as the tester's burst sent it."""
    return json.dumps(
        {
            "triggerEvent": "BOOKING_CREATED",
            "createdAt": "2026-11-23T09:00:00.000Z",
            "payload": {
                "uid": uid,
                "title": "Haircut",
                "startTime": "2026-12-01T09:00:00Z",
                "endTime": "2026-12-01T09:30:00Z",
                "attendees": [
                    {"name": "A", "email": f"{uid}@example.com", "timeZone": "Europe/Berlin"}
                ],
            },
        }
    ).encode()


def book(stack: Stack, uid: str) -> int:
    body = booking_body(uid)
    headers = {
        "X-Cal-Signature-256": calcom.sign(CALCOM_SECRET, body),
        "Content-Type": "application/json",
    }
    for _ in range(100):
        status = request(stack.fleet.base_url, "POST", "/webhooks/calcom", body, headers)[0]
        if status < 500:
            return status
        time.sleep(0.2)
    return status


CALCOM_SECRET = "calcom-faults-secret"


def bookings_processed(stack: Stack) -> int:
    with stack.engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count()).where(
                    WebhookEvent.provider == "calcom",
                    WebhookEvent.status == EventStatus.PROCESSED,
                )
            )
            or 0
        )


def _scalar(stack: Stack, sql: str, **params: Any) -> Any:
    with stack.engine.connect() as connection:
        return connection.scalar(text(sql), params)


@faults
def test_a_worker_frozen_inside_its_transaction_does_not_stall_the_other_queues(
    tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    """Issue 17, the tester's scenario: a ``hookfleet.default`` worker SIGSTOPped in the
    middle of a Cal.com burst, inside its apply transaction (its claimed rows locked),
    while Retell's call_ended stream goes to ``hookfleet.high`` with two healthy
    workers. Before: the frozen transaction's gap lock on the status index made every
    other worker's batch insert wait, fail, fall back and retry — nothing progressed
    for the whole freeze. The overlap is forced: the test holds the appointments
    table, so the default worker's batch stops after its claim; it is frozen there."""
    with lease_stack(
        tmp_path, mariadb_server, second_high=True, HOOKFLEET_CALCOM_SECRETS=CALCOM_SECRET
    ) as stack:
        ledger = Ledger("lease: default worker frozen in its transaction, high flowing")
        default = stack.fleet.running["worker_default"].pid
        held = stack.engine.connect()
        held.execute(text("LOCK TABLES appointments WRITE"))
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda n: book(stack, f"bk_fz_{n:04d}"), range(300)))
            assert set(answers) == {202}, answers
            waiting = (
                "SELECT id FROM information_schema.processlist"
                " WHERE state LIKE 'Waiting for table metadata lock'"
                " AND info LIKE '%appointments%' LIMIT 1"
            )
            wait_until(
                lambda: _scalar(stack, waiting) is not None,
                60,
                "the default worker's batch waiting inside its transaction",
                interval=0.1,
            )
            thread_id = _scalar(stack, waiting)
            os.killpg(default, signal.SIGSTOP)
        finally:
            held.execute(text("UNLOCK TABLES"))
            held.close()
        try:
            locks_held = "SELECT trx_rows_locked FROM information_schema.innodb_trx"
            locks_held += " WHERE trx_mysql_thread_id = :thread"
            assert (_scalar(stack, locks_held, thread=thread_id) or 0) > 0
            started = time.monotonic()
            calls = set(ids("fh", 300))
            stream(stack, ledger, sorted(calls))()
            wait_until(lambda: stack.processed(calls) == calls, 120, "high flowing", interval=0.2)
            high_s = round(time.monotonic() - started, 1)
            still_frozen = (_scalar(stack, locks_held, thread=thread_id) or 0) > 0
        finally:
            os.killpg(default, signal.SIGCONT)
        row = settle_and_count(stack, ledger)
        row["high_s"] = high_s
        wait_until(
            lambda: bookings_processed(stack) == 300,
            120,
            "the thawed default worker's bookings processed",
        )
        # A batch that meets a lock wait (3 s) is rolled back and settled one by one. (The
        # two healthy high workers may still race each other for a customer: RaceLost,
        # retried at once; that is not the frozen worker's doing.)
        batches_failed = sum(
            line.count('"lock_wait": true')
            for name in ("worker_high", "worker_high2")
            for line in stack.fleet.log(name).splitlines()
            if "batch failed" in line
        )
        row["high_batches_failed_on_a_lock"] = batches_failed
    assert_exactly_once(row)
    assert still_frozen, "the default worker's transaction ended before high was done"
    # Before: 6 of the high workers' batches failed on the frozen gap lock, 14 s for
    # what takes 3 s alone (and with a longer stream, nothing flowed at all).
    assert batches_failed == 0, row
    assert high_s < 30, row


@faults
def test_a_whole_host_killed_is_recovered_by_the_restarted_one(lease_row_stack: Stack) -> None:
    stack = lease_row_stack
    ledger = Ledger("lease: whole host kill -9")
    senders = ThreadPoolExecutor(8)
    sent = [
        senders.submit(deliver_through_crashes, stack, ledger, call_id)
        for call_id in ids(f"hk{stack.run}", 800)
    ]
    wait_for_accepted(ledger, 300)
    for name in LEASE_FLEET:
        os.killpg(stack.fleet.running[name].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    held = held_call_ids(stack)
    for name in LEASE_FLEET:
        stack.fleet.running.pop(name).wait()
    time.sleep(1)
    for name in LEASE_FLEET:  # the restarted host: the module's fleet whole again
        stack.fleet.start(name)
    stack.fleet.wait_for_web()

    def finish() -> None:
        for future in sent:
            future.result()
        senders.shutdown()

    row = settled_after_recovery(stack, ledger, held, killed_at, finish)
    assert_exactly_once(row)
    assert row["recovery_s"] < ROW_LEASE_S + RECOVERY_MARGIN_S, row


@faults
@two_high
def test_redis_restarted_while_leases_are_held_loses_and_repeats_nothing(
    two_high_row_stack: Stack,
) -> None:
    stack = two_high_row_stack
    ledger = Ledger("lease: Redis kill -9 + restart (AOF)")
    finish = streaming(stack, ledger, f"rr{stack.run}", 800)
    assert stack.redis.proc is not None
    held = held_call_ids(stack)
    stack.redis.proc.kill()
    stack.redis.proc.wait()
    killed_at = time.monotonic()
    time.sleep(2)
    stack.redis.start()
    row = settled_after_recovery(stack, ledger, held, killed_at, finish)
    lapsed = restores_logged(stack)
    assert_exactly_once(row)
    assert lapsed == 0  # back within the lease: nobody's messages were taken from them


@faults
def test_a_task_running_3x_the_lease_on_a_healthy_worker_runs_once(
    lease_row_stack: Stack,
) -> None:
    # On the short-lease fleet: a lease that lapsed under the running task would put
    # its message back for worker_high's other pool process (or after a restart) and
    # log the restore, counted below, whichever worker swept it.
    stack = lease_row_stack
    ledger = Ledger("lease: task 3x the lease, healthy worker")
    long_call = f"long{stack.run}"
    # A table lock, not a row lock: a row lock is waited for only a few seconds
    # (then the event is retried later); a table lock keeps the task running.
    blocker = stack.engine.connect()
    try:
        blocker.execute(text("LOCK TABLES calls WRITE"))
        assert deliver(stack, ledger, long_call) == 202
        time.sleep(3 * ROW_LEASE_S)
    finally:
        blocker.execute(text("UNLOCK TABLES"))
        blocker.close()
    released_at = time.monotonic()
    # Not a recovery: the time from the lock's release to the effect.
    recovery = recovered_after(stack, {long_call}, released_at)
    row = settle_and_count(stack, ledger, timeout_s=60)
    row["recovery_s"] = recovery
    processed = sum(
        1
        for p in stack.logs.glob("worker_*.log")
        for line in stack.log_since(p.stem).splitlines()
        if '"message": "processed"' in line and f"{long_call}:call_ended" in line
    )
    retried = sum(
        stack.log_since(p.stem).count("will retry") for p in stack.logs.glob("worker_*.log")
    )
    lapsed = restores_logged(stack)
    assert_exactly_once(row)
    assert lapsed == 0, "a live worker's message was restored"
    assert processed == 1
    assert retried == 0, "the task did not run the whole time"


@faults
def test_a_row_lock_held_by_a_stopped_transaction_costs_one_event_not_its_batch(
    lease_row_stack: Stack,
) -> None:
    """A frozen worker's transaction holds a row lock (here: a test connection holds
    it, so the overlap is certain). The batch that meets it gives up within the short
    lock wait, its other events commit, and only the contended one waits for a retry
    (transient: neither failed nor dead); once the lock goes it is applied, once."""
    stack = lease_row_stack
    ledger = Ledger("lease: row lock held by a stopped transaction")
    others = ids(f"rl{stack.run}", 300)
    locked = f"locked{stack.run}"
    with call_row_locked(stack, locked) as release:
        started = time.monotonic()
        # The contended one first, so it shares a batch with the others.
        stream(stack, ledger, [locked, *others])()
        wait_until(
            lambda: stack.processed(set(others)) == set(others),
            120,
            "every other delivery processed",
            interval=0.2,
        )
        others_s = round(time.monotonic() - started, 1)
        waiting = stack.processed({locked}) == set()
        with stack.engine.connect() as connection:
            status = connection.scalar(
                select(WebhookEvent.status).where(WebhookEvent.event_id == f"{locked}:call_ended")
            )
        release()
        released_at = time.monotonic()
    recovery = recovered_after(stack, {locked}, released_at)
    row = settle_and_count(stack, ledger, timeout_s=120)
    row.update(others_done_s=others_s, recovery_s=recovery)
    assert_exactly_once(row)
    assert waiting and status == EventStatus.RECEIVED, (waiting, status)
    # Before: the batch waited innodb_lock_wait_timeout (50 s) whole, then its events
    # one by one, each waiting again.
    assert others_s < 30, row
    assert recovery < 30, row


def held_by_leases(stack: Stack, pid: int) -> int:
    """Messages the consumer of ``pid`` holds under its lease now."""
    client = stack.redis.client()
    return sum(int(client.hlen(key)) for key in client.scan_iter(f"{HELD_PREFIX}*:{pid}:*"))


@faults
def test_sigterm_hands_back_reserved_messages_at_once_while_the_database_hangs(
    lease_row_stack: Stack,
) -> None:
    stack = lease_row_stack
    ledger = Ledger("lease: SIGTERM, database hung")
    worker = stack.fleet.running["worker_high"]  # the only consumer of hookfleet.high
    hung = stack.engine.connect()  # every batch waits on the table lock
    hung.execute(text("LOCK TABLES webhook_events WRITE"))
    try:
        stream(stack, ledger, ids(f"st{stack.run}", 400))()
        running = 2 * SHIPPED.batch_size  # two pool processes, one batch each
        wait_until(
            lambda: held_by_leases(stack, worker.pid) > running + 20, 60, "messages reserved"
        )
        stack.fleet.running.pop("worker_high")
        os.kill(worker.pid, signal.SIGTERM)
        termed_at = time.monotonic()
        wait_until(lambda: held_by_leases(stack, worker.pid) <= running, 30, "reserved handed back")
        handed_back_s = round(time.monotonic() - termed_at, 1)
        still_running = worker.poll() is None
    finally:
        hung.execute(text("UNLOCK TABLES"))  # the database answers again
        hung.close()
    worker.wait(60)
    stack.fleet.start("worker_high")
    row = settle_and_count(stack, ledger)
    row["recovery_s"] = handed_back_s
    assert_exactly_once(row)
    assert still_running, "the worker had exited: nothing showed the hand-back was early"
    assert handed_back_s < 5, row


@faults
def test_sigterm_while_mariadb_is_stopped_exits_within_the_soft_shutdown(
    lease_row_stack: Stack,
) -> None:
    """Issue 17: mariadbd SIGSTOPped under a busy worker, then SIGTERM. The reserved
    messages went back at once, but the process lived 284 s, until the task's soft time
    limit (Celery's warm shutdown waits for running tasks; its soft-shutdown timeout
    bounds only a cold one). Now the running batches' pool processes are ended when the
    soft shutdown period (3 s here) is over; nothing is lost or applied twice."""
    stack = lease_row_stack
    mariadbd = stack.mariadb.proc  # the session's server, which the shared fleet uses
    assert mariadbd is not None
    ledger = Ledger("lease: SIGTERM, mariadbd stopped")
    finish = stream(stack, ledger, ids(f"ms{stack.run}", 600))
    wait_for_accepted(ledger, 150)
    worker = stack.fleet.running.pop("worker_high")
    os.kill(mariadbd.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: held_by_leases(stack, worker.pid) > 0, 30, "messages held")
        time.sleep(1)  # the running batches are waiting on the stopped server
        os.kill(worker.pid, signal.SIGTERM)
        termed_at = time.monotonic()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            kill_group(worker)
        exited_s = round(time.monotonic() - termed_at, 1)
    finally:
        os.kill(mariadbd.pid, signal.SIGCONT)
    stack.fleet.start("worker_high")
    finish()
    row = settle_and_count(stack, ledger)
    row["exited_s"] = exited_s
    ended = "ending the pool's running batches" in stack.log_since("worker_high")
    assert_exactly_once(row)
    assert ended, "the worker exited before its soft shutdown was over: nothing was bounded"
    # 3 s of soft shutdown, then the pool ended; workers.broker.shutdown.EXIT_GRACE_S at most.
    assert exited_s < 3 + 10 + 5, row


@pytest.mark.e2e
def test_a_stock_celery_worker_still_consumes_hookfleets_queues(
    tmp_path: Path, redis_url: str, mariadb_url: str
) -> None:
    """Messages stay in kombu's format: a worker on kombu's own transport processes
    them (it recovers a crash only by the visibility timeout, and holds no lease)."""
    with running_fleet(
        tmp_path, redis_url, mariadb_url, names=("web",), HOOKFLEET_RETELL_SECRETS=SECRET
    ) as fleet:
        command = procfile()["worker_high"].replace("workers.celery_app", "tests.stock_worker")
        fleet.start("worker_stock", command.replace("-n high@", "-n stock@"))
        fleet.wait_for_worker("worker_stock")
        engine = create_engine(mariadb_url)
        try:
            stack = Stack(fleet, None, None, mariadb_url, engine, fleet.logs)
            ledger = Ledger("stock worker")
            stream(stack, ledger, ids("sw", 20))()
            wait_until(lambda: stack.processed(ledger.accepted) == ledger.accepted, 60, "all")
            # Only the stock worker's own: a worker of an earlier test may still be
            # exiting and renew its lease once more after this test's flush.
            stock_pid = fleet.running["worker_stock"].pid
            leases = [
                key
                for key in redis.Redis.from_url(redis_url).scan_iter("hookfleet.lease.*")
                if f":{stock_pid}:" in key.decode()
            ]
        finally:
            engine.dispose()
    assert len(ledger.accepted) == 20
    assert leases == []  # really kombu's transport: nobody took a lease

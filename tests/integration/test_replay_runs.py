"""Replays as runs: the estimate, each selected event enqueued once on the real Redis
queue whatever cuts a run short (Ctrl-C, a crash between the push and the cursor, a
second process resuming it), the rate cap, and what the command prints."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from models.contract import EventMessage, Queue
from models.events import EventStatus, WebhookEvent
from models.payload_search import parse_condition
from models.replays import ReplayRun, RunStatus
from tests.helpers import command_env, queued
from workers.broker.replay_push import NotReplicated, ReplayPush, mark_key
from workers.cli.main import main
from workers.recovery import replay_runs
from workers.recovery.selection import Selection

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def seed(
    sessions: sessionmaker[Session],
    n: int,
    *,
    provider: str = "stripe",
    event_type: str = "invoice.paid",
    status: EventStatus = EventStatus.DEAD,
    prefix: str = "evt",
) -> None:
    with sessions() as session:
        session.add_all(
            WebhookEvent(
                provider=provider,
                event_id=f"{prefix}_{i}",
                event_type=event_type,
                queue=Queue.DEFAULT,
                correlation_id=f"corr-{prefix}-{i}",
                status=status,
                headers={},
                payload=json.dumps({"data": {"object": {"n": i, "customer": f"cus_{i % 3}"}}}),
                received_at=T0 + timedelta(seconds=i),
                created_at=T0 + timedelta(seconds=i),
                updated_at=T0 + timedelta(seconds=i),
            )
            for i in range(n)
        )
        session.commit()


def replayed_ids(client: redis.Redis) -> Counter[str]:
    """Event ids of the replay messages on hookfleet.low, with how often each is there."""
    messages = [EventMessage.from_kwargs(m["decoded_body"][1]) for m in queued(client, Queue.LOW)]
    assert all(m.replay for m in messages)
    return Counter(m.event_id for m in messages)


def each_once(n: int) -> Counter[str]:
    """``replayed_ids`` when events evt_0..evt_{n-1} were each enqueued exactly once."""
    return Counter({f"evt_{i}": 1 for i in range(n)})


def at_chunk(n: int) -> None:
    """What a :class:`Pusher` does around a chunk by default: nothing."""


class Pusher:
    """Hands each chunk to ``inner``, calling ``before(n)`` and ``after(n)`` around the
    n-th push (counting from 1): where a test's process dies, races another or loses
    Redis."""

    def __init__(
        self,
        inner: ReplayPush,
        *,
        before: Callable[[int], None] = at_chunk,
        after: Callable[[int], None] = at_chunk,
    ) -> None:
        self.inner, self.before, self.after, self.calls = inner, before, after, 0

    def push(self, queue: str, messages: list[tuple[int, str]]) -> int:
        self.calls += 1
        self.before(self.calls)
        pushed = self.inner.push(queue, messages)
        self.after(self.calls)
        return pushed

    def forget(self) -> None:
        self.inner.forget()


def start(sessions: sessionmaker[Session], selection: Selection, rate: float = 0) -> ReplayRun:
    found = replay_runs.make_estimate(sessions, selection)
    return replay_runs.create_run(sessions, selection, found, rate)


def dead_run(sessions: sessionmaker[Session], n: int, rate: float = 0) -> ReplayRun:
    """``n`` dead events (evt_0...) and a run started over every dead event."""
    seed(sessions, n)
    return start(sessions, Selection(statuses=(EventStatus.DEAD,)), rate)


@pytest.fixture
def env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a ``hookfleet`` command runs in against the test's servers."""
    return command_env(database_url, redis_url, tmp_path)


def test_the_estimate_counts_by_provider_and_type_what_the_filters_select(
    sessions: sessionmaker[Session],
) -> None:
    seed(sessions, 5)
    seed(sessions, 3, provider="retell", event_type="call_ended", prefix="call")
    seed(sessions, 4, status=EventStatus.PROCESSED, prefix="done")

    dead = replay_runs.make_estimate(sessions, Selection(statuses=(EventStatus.DEAD,)))
    everything = replay_runs.make_estimate(sessions, Selection())
    searched = replay_runs.make_estimate(
        sessions,
        Selection(where=(parse_condition("data.object.customer=cus_1"),)),
    )

    assert dead.counts == {("stripe", "invoice.paid"): 5, ("retell", "call_ended"): 3}
    assert everything.total == 12
    # n % 3 == 1 for n in 0..4 (1, 4), 0..2 (1), 0..3 (1): four events.
    assert searched.counts == {
        ("stripe", "invoice.paid"): 3,
        ("retell", "call_ended"): 1,
    }


def test_a_run_cut_off_between_push_and_cursor_resumes_without_enqueuing_twice(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 50)
    pusher = ReplayPush(redis_client, run.token)

    def killed_after_the_third(n: int) -> None:
        if n == 3:  # the broker took the chunk; the cursor write never happens
            raise SystemExit("killed between the push and the cursor write")

    with pytest.raises(SystemExit):
        replay_runs.run(
            sessions, run.id, Pusher(pusher, after=killed_after_the_third), batch_size=7
        )
    with sessions() as session:
        cut = session.get_one(ReplayRun, run.id)
    assert (cut.replayed, cut.status) == (14, RunStatus.RUNNING)  # two chunks recorded
    assert sum(replayed_ids(redis_client).values()) == 21  # the third chunk is on the queue

    attempt = replay_runs.run(sessions, run.id, pusher, batch_size=5)

    assert attempt.finished and attempt.already_queued == 7
    assert attempt.pushed == 29
    assert replayed_ids(redis_client) == each_once(50)
    with sessions() as session:
        done = session.get_one(ReplayRun, run.id)
    assert (done.status, done.replayed, done.counts) == (
        RunStatus.FINISHED,
        50,
        {"stripe/invoice.paid": 50},
    )
    assert not redis_client.exists(mark_key(run.token))  # forgotten once finished


def test_a_stopped_run_is_interrupted_and_resumes_where_it_stopped(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 30)
    pusher = ReplayPush(redis_client, run.token)
    stop = threading.Event()
    chunks: list[int] = []

    def stop_after_two(n: int) -> None:
        chunks.append(n)
        if len(chunks) == 2:
            stop.set()

    first = replay_runs.run(
        sessions, run.id, pusher, batch_size=4, stop=stop, progress=stop_after_two
    )
    with sessions() as session:
        stopped = session.get_one(ReplayRun, run.id)
    # Events arriving after the start are not chased by the resumed run.
    seed(sessions, 5, prefix="late")
    second = replay_runs.run(sessions, run.id, pusher, batch_size=100)

    assert (first.finished, first.pushed) == (False, 8)
    assert (stopped.status, stopped.replayed) == (RunStatus.INTERRUPTED, 8)
    assert stopped.interrupted_at is not None
    assert (second.finished, second.pushed, second.already_queued) == (True, 22, 0)
    assert replayed_ids(redis_client) == each_once(30)
    with pytest.raises(replay_runs.RunNotResumable, match="finished"):
        replay_runs.run(sessions, run.id, pusher)


def test_a_second_process_resuming_the_same_run_stops_and_pushes_nothing_twice(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 20)
    other = ReplayPush(redis_client, run.token)

    def another_process_runs_it_all(n: int) -> None:
        if n == 1:  # after the first chunk
            replay_runs.run(sessions, run.id, other, batch_size=6)

    with pytest.raises(replay_runs.RunTakenOver):
        replay_runs.run(
            sessions, run.id, Pusher(other, after=another_process_runs_it_all), batch_size=6
        )

    assert replayed_ids(redis_client) == each_once(20)


def test_a_run_redis_stops_is_marked_interrupted_and_resumes(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 10)
    working = ReplayPush(redis_client, run.token)

    def redis_goes_away_after_the_first(n: int) -> None:
        if n > 1:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1")

    with pytest.raises(redis.ConnectionError):
        replay_runs.run(
            sessions, run.id, Pusher(working, before=redis_goes_away_after_the_first), batch_size=4
        )

    with sessions() as session:
        stopped = session.get_one(ReplayRun, run.id)
    assert (stopped.status, stopped.replayed) == (RunStatus.INTERRUPTED, 4)
    assert stopped.interrupted_at is not None
    assert replay_runs.run(sessions, run.id, working).finished
    assert replayed_ids(redis_client) == each_once(10)


def test_the_rate_cap_spreads_a_replay_over_time(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 300, rate=200)
    began = time.monotonic()

    replay_runs.run(
        sessions, run.id, ReplayPush(redis_client, run.token), batch_size=500, rate_per_s=200
    )
    took = time.monotonic() - began

    # 300 events at 200/s: the last chunk (40) may go at 1.3 s; a loaded box is slower.
    assert 1.2 <= took <= 20, took
    assert sum(replayed_ids(redis_client).values()) == 300


def test_replay_command_prints_the_estimate_replays_each_once_and_lists_its_run(
    sessions: sessionmaker[Session], redis_client: redis.Redis, env: dict[str, str]
) -> None:
    seed(sessions, 6)
    seed(sessions, 2, provider="retell", event_type="call_ended", prefix="call")
    seed(sessions, 3, status=EventStatus.PROCESSED, prefix="done")
    runner = CliRunner()

    dry = runner.invoke(main, ["replay", "--all-dead", "--dry-run"], env=env)
    nothing_said = runner.invoke(main, ["replay"], env=env)
    assert redis_client.llen(Queue.LOW) == 0
    done = runner.invoke(
        main,
        ["replay", "--status", "dead", "--where", "data.object.customer=cus_1", "--rate", "0"],
        env=env,
    )
    listed = runner.invoke(main, ["replay", "runs"], env=env)
    as_json = runner.invoke(main, ["replay", "runs", "--json"], env=env)
    again = runner.invoke(main, ["replay", "--resume", "1"], env=env)

    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("dry run: 8 event(s) would be replayed (retell: 2, stripe: 6).")
    assert "        6  stripe/invoice.paid" in dry.stdout
    assert nothing_said.exit_code == 2 and "say what to replay" in nothing_said.stderr
    assert done.exit_code == 0, done.output
    # cus_1: n % 3 == 1: stripe 1 and 4, retell 1.
    assert "3 event(s) match (retell: 1, stripe: 2)." in done.stdout
    assert "replayed 3 event(s) on hookfleet.low (retell: 1, stripe: 2)." in done.stdout
    assert "replay run 1 finished." in done.stdout
    assert replayed_ids(redis_client) == Counter({"evt_1": 1, "evt_4": 1, "call_1": 1})
    assert "finished" in listed.stdout and "3/3" in listed.stdout
    assert "where data.object.customer=cus_1" in listed.stdout
    assert again.exit_code == 1 and "replay run 1 finished" in again.stderr
    [run] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (run["id"], run["status"], run["replayed"], run["estimated"]) == (1, "finished", 3, 3)
    assert run["selection"]["where"] == ["data.object.customer=cus_1"]
    assert run["finished_at"] is not None and run["interrupted_at"] is None


def test_a_chunk_no_replica_confirmed_stops_the_run_and_is_not_enqueued_again(
    sessions: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    run = dead_run(sessions, 10)
    unreplicated = ReplayPush(redis_client, run.token, min_replicas=1, wait_ms=50)

    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        replay_runs.run(sessions, run.id, unreplicated, batch_size=4)
    resumed = replay_runs.run(sessions, run.id, ReplayPush(redis_client, run.token))

    # The unconfirmed chunk stayed on the primary with its mark: not sent twice.
    assert (resumed.already_queued, resumed.pushed) == (4, 6)
    assert replayed_ids(redis_client) == each_once(10)


@pytest.mark.slow
# The prompt does not depend on the database: SQLite only (the same replays run on both
# backends in test_replay_command_prints_the_estimate_replays_each_once_and_lists_its_run).
@pytest.mark.parametrize("backend", ["sqlite"])
def test_replay_on_a_terminal_asks_first_and_a_no_enqueues_nothing(
    sessions: sessionmaker[Session], redis_client: redis.Redis, env: dict[str, str]
) -> None:
    seed(sessions, 3)
    hookfleet = str(Path(sys.executable).parent / "hookfleet")

    def on_a_terminal(*args: str, answer: bytes) -> subprocess.CompletedProcess[str]:
        controller, terminal = pty.openpty()
        os.write(controller, answer)
        try:
            return subprocess.run(
                [hookfleet, "replay", *args],
                env=env,
                stdin=terminal,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(controller)
            os.close(terminal)

    refused = on_a_terminal("--all-dead", answer=b"n\n")
    assert redis_client.llen(Queue.LOW) == 0
    agreed = on_a_terminal("--all-dead", "--rate", "100", answer=b"y\n")
    without_asking = on_a_terminal("--provider", "stripe", "--yes", answer=b"")

    assert refused.returncode == 1, refused
    assert "replay 3 event(s) on hookfleet.low (500/s)? [y/N]" in refused.stdout
    assert "Aborted" in refused.stderr
    assert agreed.returncode == 0, agreed
    assert "replay 3 event(s) on hookfleet.low (100/s)? [y/N]" in agreed.stdout
    assert without_asking.returncode == 0 and "[y/N]" not in without_asking.stdout
    assert replayed_ids(redis_client) == Counter({"evt_0": 2, "evt_1": 2, "evt_2": 2})


@pytest.mark.slow
def test_sigterm_stops_a_replay_after_its_chunk_and_the_resume_finishes_it(
    sessions: sessionmaker[Session], redis_client: redis.Redis, env: dict[str, str]
) -> None:
    seed(sessions, 400)
    hookfleet = [str(Path(sys.executable).parent / "hookfleet"), "replay"]
    first = subprocess.Popen(
        [*hookfleet, "--all-dead", "--rate", "100"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while redis_client.llen(Queue.LOW) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    said, _ = first.communicate(timeout=30)
    stopped_at = int(redis_client.llen(Queue.LOW))
    resumed = subprocess.run(
        [*hookfleet, "--resume", "1", "--rate", "0"], env=env, capture_output=True, text=True
    )

    assert first.returncode == 128 + signal.SIGTERM, said
    assert 0 < stopped_at < 400 and "resume with: hookfleet replay --resume 1" in said
    assert resumed.returncode == 0, resumed.stderr
    assert "replayed 400 event(s) on hookfleet.low (stripe: 400)." in resumed.stdout
    assert replayed_ids(redis_client) == each_once(400)

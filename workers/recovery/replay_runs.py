"""Replays as runs: estimated first, paced, interruptible, resumable, each event once.

A run (``models.replays.ReplayRun``) walks the selected ``webhook_events`` rows by
ascending id up to the highest id when it started. For each chunk it

1. reads the rows after its cursor (payloads included, one short session);
2. waits for its rate (:class:`Pacer`), unless asked to stop;
3. pushes their replay messages onto :data:`REPLAY_QUEUE` through
   :class:`workers.broker.replay_push.ReplayPush`, which skips what the run already
   pushed (its mark in Redis, written atomically with the pushes);
4. moves the cursor and the counts in one UPDATE that only applies if the cursor is
   still where this process read it (a second process resuming the same run stops).

A crash between 3 and 4 leaves the cursor behind the mark: the resumed run reads the
chunk again and step 3 pushes none of it. Replays bypass the receiver's dedup on
purpose and are idempotent downstream (``record_event`` with ``replay=True``); the mark
makes each selected event *enqueued* once per run as well.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.broker.envelope import build_event_message
from models.events import WebhookEvent
from models.replays import ReplayRun, RunStatus
from workers.recovery.deadletters import REPLAY_QUEUE, event_message
from workers.recovery.selection import Selection, estimate, highest_id


class Pusher(Protocol):
    def push(self, queue: str, messages: list[tuple[int, str]]) -> int: ...
    def forget(self) -> None: ...


class RunNotResumable(Exception):
    """No such run, or it finished."""


class RunTakenOver(Exception):
    """Another process moved this run's cursor: it is being resumed elsewhere."""


@dataclass(frozen=True)
class Estimate:
    """What a selection matches now, by ``(provider, event_type)``."""

    counts: dict[tuple[str, str], int]
    up_to_id: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def make_estimate(sessions: sessionmaker[Session], selection: Selection) -> Estimate:
    """Count what ``selection`` matches among the events recorded so far (the run that
    follows goes no further than the highest id seen here)."""
    with sessions() as session:
        up_to = highest_id(session)
        counts = estimate(session, replace(selection, up_to_id=up_to))
    return Estimate(counts, up_to)


def create_run(
    sessions: sessionmaker[Session], selection: Selection, found: Estimate, rate_per_s: float
) -> ReplayRun:
    """Record a new run of ``selection`` bounded by ``found.up_to_id``."""
    run = ReplayRun(
        token=uuid.uuid4().hex,
        selection=replace(selection, up_to_id=found.up_to_id).to_json(),
        up_to_id=found.up_to_id,
        cursor=0,
        rate_per_s=rate_per_s,
        status=RunStatus.RUNNING,
        estimated=found.total,
        replayed=0,
        counts={},
    )
    with sessions() as session:
        session.add(run)
        session.commit()
    return run


def load_run(
    sessions: sessionmaker[Session], run_id: int, *, finished_too: bool = False
) -> ReplayRun:
    """The run to resume (or, ``finished_too``, any run); raises :class:`RunNotResumable`."""
    with sessions() as session:
        run = session.get(ReplayRun, run_id)
    if run is None:
        raise RunNotResumable(f"no replay run {run_id} (hookfleet replay runs lists them)")
    if run.status == RunStatus.FINISHED and not finished_too:
        raise RunNotResumable(f"replay run {run_id} finished at {run.finished_at}")
    return run


def list_runs(sessions: sessionmaker[Session], limit: int = 20) -> list[ReplayRun]:
    """The latest runs, newest first."""
    with sessions() as session:
        return list(session.scalars(select(ReplayRun).order_by(ReplayRun.id.desc()).limit(limit)))


class Pacer:
    """Holds a run to ``rate_per_s`` events a second on average (0: no limit): before
    sending ``n`` more it waits until the events sent so far fit the rate. Chunks are
    at most a fifth of a second's worth, so the queue sees no bursts past that."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self._clock = clock
        self._started = clock()
        self._sent = 0

    def chunk(self, batch_size: int) -> int:
        if self.rate <= 0:
            return batch_size
        return max(1, min(batch_size, int(self.rate / 5)))

    def wait(self, n: int, stop: threading.Event) -> bool:
        """Wait for room to send ``n``; False when ``stop`` was set meanwhile."""
        if self.rate > 0:
            due = self._started + self._sent / self.rate
            delay = due - self._clock()
            if delay > 0 and stop.wait(delay):
                return False
        self._sent += n
        return not stop.is_set()


@dataclass
class Attempt:
    """What one invocation did for a run. ``already_queued``: events its chunks held
    that an earlier, cut-off attempt had pushed (not pushed again)."""

    run_id: int
    pushed: int = 0
    already_queued: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    finished: bool = False


def run(
    sessions: sessionmaker[Session],
    run_id: int,
    pusher: Pusher,
    *,
    batch_size: int = 500,
    rate_per_s: float = 0.0,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> Attempt:
    """Replay run ``run_id`` from its cursor until done or ``stop`` is set; marks the run
    finished or interrupted (interrupted too when Redis or the database fails, as far as
    the database still answers). ``progress(n)`` after each chunk of ``n``. Raises
    :class:`RunTakenOver`, ``redis.RedisError`` or a database error (the run stays
    resumable; nothing is enqueued twice)."""
    stop = stop or threading.Event()
    loaded = load_run(sessions, run_id)
    pacer = Pacer(rate_per_s)
    attempt = Attempt(run_id)
    _set_status(sessions, run_id, RunStatus.RUNNING)
    try:
        finished = _push_chunks(
            sessions, loaded, pusher, attempt, batch_size, pacer, stop, progress
        )
    except RunTakenOver:
        raise  # the run is another process's now: its status is that process's to set
    except Exception:
        # Redis or the database failed mid-run: the run stops here, resumable.
        _mark_interrupted_if_possible(sessions, run_id)
        raise
    if finished:
        _finish(sessions, run_id)
        pusher.forget()
        attempt.finished = True
    else:
        _set_status(sessions, run_id, RunStatus.INTERRUPTED)
    return attempt


def _push_chunks(
    sessions: sessionmaker[Session],
    loaded: ReplayRun,
    pusher: Pusher,
    attempt: Attempt,
    batch_size: int,
    pacer: Pacer,
    stop: threading.Event,
    progress: Callable[[int], None] | None,
) -> bool:
    """Push the run's chunks from its cursor; True when none is left, False when
    ``stop`` was set first."""
    selection = Selection.from_json(loaded.selection)
    run_id, cursor, replayed, counts = (
        loaded.id,
        loaded.cursor,
        loaded.replayed,
        Counter(loaded.counts),
    )
    while not stop.is_set():
        chunk = _read_chunk(sessions, selection, cursor, pacer.chunk(batch_size))
        if not chunk:
            return True
        if not pacer.wait(len(chunk), stop):
            return False
        pushed = pusher.push(REPLAY_QUEUE, [(pk, message) for pk, _, message in chunk])
        kinds = Counter(kind for _, kind, _ in chunk)
        counts += kinds
        _advance(sessions, run_id, cursor, chunk[-1][0], replayed + len(chunk), counts)
        cursor, replayed = chunk[-1][0], replayed + len(chunk)
        attempt.pushed += pushed
        attempt.already_queued += len(chunk) - pushed
        attempt.counts += kinds
        if progress is not None:
            progress(len(chunk))
    return False


def _mark_interrupted_if_possible(sessions: sessionmaker[Session], run_id: int) -> None:
    try:
        _set_status(sessions, run_id, RunStatus.INTERRUPTED)
    except SQLAlchemyError:
        pass  # the database is what failed: `replay runs` shows it running, resumable


def _read_chunk(
    sessions: sessionmaker[Session], selection: Selection, cursor: int, size: int
) -> list[tuple[int, str, str]]:
    """``(id, "provider/event_type", message)`` for the next ``size`` selected rows (plain
    rows, not ORM objects: a replay reads every column of many rows once)."""
    statement = selection.apply(select(*MESSAGE_COLUMNS).where(WebhookEvent.id > cursor))
    with sessions() as session:
        rows = session.execute(statement.order_by(WebhookEvent.id).limit(size)).all()
    return [(row.id, f"{row.provider}/{row.event_type}", _replay_message(row)) for row in rows]


MESSAGE_COLUMNS = (
    WebhookEvent.id,
    WebhookEvent.provider,
    WebhookEvent.event_id,
    WebhookEvent.event_type,
    WebhookEvent.correlation_id,
    WebhookEvent.received_at,
    WebhookEvent.headers,
    WebhookEvent.payload,
)


def _replay_message(row: Any) -> str:
    """The Celery message that replays ``row`` (a row of :data:`MESSAGE_COLUMNS`) on
    :data:`REPLAY_QUEUE`."""
    event = event_message(row, queue=REPLAY_QUEUE, replay=True)
    from workers.pipeline.tracing import publish_span

    with publish_span(event):  # linked to the event's first trace (tracing on)
        return build_event_message(event)[1]


def _advance(
    sessions: sessionmaker[Session],
    run_id: int,
    cursor: int,
    new_cursor: int,
    replayed: int,
    counts: Counter[str],
) -> None:
    with sessions() as session:
        moved = cast(
            CursorResult[Any],
            session.execute(
                update(ReplayRun)
                .where(ReplayRun.id == run_id, ReplayRun.cursor == cursor)
                .values(
                    cursor=new_cursor, replayed=replayed, counts=dict(counts), updated_at=utcnow()
                )
            ),
        )
        session.commit()
    if moved.rowcount != 1:
        raise RunTakenOver(
            f"replay run {run_id} moved on elsewhere: another `hookfleet replay --resume "
            f"{run_id}` is running"
        )


def _set_status(sessions: sessionmaker[Session], run_id: int, status: RunStatus) -> None:
    now = utcnow()
    values: dict[str, object] = {"status": status, "updated_at": now}
    if status == RunStatus.INTERRUPTED:
        values["interrupted_at"] = now
    with sessions() as session:
        session.execute(update(ReplayRun).where(ReplayRun.id == run_id).values(**values))
        session.commit()


def _finish(sessions: sessionmaker[Session], run_id: int) -> None:
    now = utcnow()
    with sessions() as session:
        session.execute(
            update(ReplayRun)
            .where(ReplayRun.id == run_id)
            .values(status=RunStatus.FINISHED, finished_at=now, updated_at=now)
        )
        session.commit()

"""How far behind the fleet is: queue lengths, reserved messages, age, dead letters.

Read at the moment someone asks (a Prometheus scrape, ``GET /stats``,
``hookfleet stats``), never stored: the numbers are Redis's and the database's own.
Used by the receiver and the ``hookfleet`` command, hence here in ``models``.

**Waiting** is every Redis list of the queue: kombu keeps one list per priority step
(``<queue>``, ``<queue>\\x06\\x163`` …), so plain ``LLEN <queue>`` can miss some.
**Unacked** are messages a worker has taken but not finished (kombu's ``unacked`` hash,
``[message, exchange, routing_key]`` per delivery tag): with ``task_acks_late`` and a
prefetch they are neither on the list nor done, and an autoscaler reading only the list
under-counts by up to prefetch x processes. **Oldest age** comes from the message at the
tail of the list (the next one out): Celery's envelope carries no timestamp, but our
task's keyword arguments carry ``received_at``, so we decode that one message.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine, func, select

from models.broker.lua import lua
from models.events import EventStatus, WebhookEvent

# kombu's Redis transport (kombu/transport/redis.py): priority lists and unacked keys.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # step 0 is the bare queue name
UNACKED_KEY = "unacked"
# Look at this many messages from the tail for one that carries ``received_at`` (a
# beat task queued between events carries none).
AGE_PROBE = 3

# Only the tail of each unacked entry travels: it ends with the routing key (the queue).
_UNACKED_TAILS = lua("models.broker", "unacked_tails")
_ROUTING_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*\]\s*$')


@dataclass(frozen=True)
class QueueBacklog:
    queue: str
    waiting: int
    unacked: int
    oldest_age_s: float | None  # None: empty, or no message tells its age


@dataclass(frozen=True)
class Backlog:
    """One reading. A part that could not be read is None, with the reason in errors."""

    taken_at: float
    queues: tuple[QueueBacklog, ...] = ()
    dead_letters: int | None = None
    recorded_last_minute: dict[str, int] | None = None
    recorded_last_5_minutes: dict[str, int] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["queues"] = {
            q.queue: {k: v for k, v in asdict(q).items() if k != "queue"} for q in self.queues
        }
        return data


def queue_keys(queue: str) -> list[str]:
    """Every Redis list kombu may keep for ``queue``."""
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]


def read_queues(
    client: redis.Redis, queues: Sequence[str], now: float | None = None
) -> tuple[QueueBacklog, ...]:
    """Waiting, unacked and oldest age of each queue. Raises ``redis.RedisError``."""
    now = time.time() if now is None else now
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    unacked = _unacked_by_queue(client)
    found = []
    width = 1 + len(PRIORITY_STEPS)
    for index, queue in enumerate(queues):
        per_key = lengths[index * width : (index + 1) * width]
        found.append(
            QueueBacklog(
                queue=queue,
                waiting=sum(int(n) for n in per_key),
                unacked=unacked.get(queue, 0),
                oldest_age_s=_oldest_age(client, queue, now) if any(per_key) else None,
            )
        )
    return tuple(found)


def _unacked_by_queue(client: redis.Redis) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tail in client.eval(_UNACKED_TAILS, 1, UNACKED_KEY):
        text = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else str(tail)
        match = _ROUTING_KEY.search(text)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _oldest_age(client: redis.Redis, queue: str, now: float) -> float | None:
    """Age of the next message out (BRPOP takes from the right), from its received_at."""
    for raw in reversed(client.lrange(queue, -AGE_PROBE, -1)):
        received = _received_at(raw)
        if received is not None:
            return max(0.0, now - received)
    return None


def _received_at(raw: bytes | str) -> float | None:
    try:
        envelope = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        return datetime.fromisoformat(kwargs["received_at"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


def count_dead_letters(engine: Engine) -> int:
    """Rows with status ``dead`` (an index range on (status, created_at))."""
    with engine.connect() as connection:
        query = select(func.count()).where(WebhookEvent.status == EventStatus.DEAD)
        return int(connection.scalar(query) or 0)


def recorded_since(engine: Engine, since: datetime) -> dict[str, int]:
    """Rows created since ``since``, per status: one index range per status."""
    counts = {}
    with engine.connect() as connection:
        for status in EventStatus:
            query = select(func.count()).where(
                WebhookEvent.status == status, WebhookEvent.created_at >= since
            )
            counts[status.value] = int(connection.scalar(query) or 0)
    return counts


def read_backlog(
    client: redis.Redis | None,
    engine: Engine | None,
    queues: Sequence[str],
    *,
    rates: bool = True,
) -> Backlog:
    """Everything at once; a server that fails is named in ``errors``, never raised.
    ``rates=False`` skips the per-status counts of recent rows (a metrics scrape has
    its own counters)."""
    now = time.time()
    errors: dict[str, str] = {}
    queue_state: tuple[QueueBacklog, ...] = ()
    dead = last_minute = last_5 = None
    if client is not None:
        try:
            queue_state = read_queues(client, queues, now)
        except redis.RedisError as error:
            errors["redis"] = f"{type(error).__name__}: {error}"
    if engine is not None:
        try:
            dead = count_dead_letters(engine)
            if rates:
                when = datetime.fromtimestamp(now, UTC)
                last_minute = recorded_since(engine, when - timedelta(minutes=1))
                last_5 = recorded_since(engine, when - timedelta(minutes=5))
        except Exception as error:  # noqa: BLE001 (any driver error means "unreadable")
            errors["database"] = f"{type(error).__name__}: {error}"
    return Backlog(
        taken_at=now,
        queues=queue_state,
        dead_letters=dead,
        recorded_last_minute=last_minute,
        recorded_last_5_minutes=last_5,
        errors=errors,
    )

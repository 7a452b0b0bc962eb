"""Enqueue a replay run's messages exactly once, whatever interrupts the run.

A replay run (``models.replays.ReplayRun``) moves its cursor in the database only after
the broker took a batch. A crash between the two would send the batch again on resume.
So the broker keeps its own mark: the highest ``webhook_events.id`` of the run that is
on the queue, written by the same Lua script that pushes, atomically with the pushes
(Redis runs a script whole; once a script has written, Redis 7 lets it finish even past
``maxmemory``). The script skips every message at or below the mark, so a batch sent
again is a no-op, and two processes resuming one run at once cannot both push an event.

The mark is keyed by the run's random token, not its id: a database restored from a
backup (ids reused) cannot meet an old run's mark. It expires :data:`MARK_TTL_S` after
the run's last batch and is deleted when the run finishes.

Messages go straight onto the queue's list, as kombu's Redis transport does for a
queue bound to the default exchange (``LPUSH <queue>``; ``models.broker.envelope`` builds
them byte for byte as Celery's producer would), the same way the receiver enqueues.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from models.broker.lua import lua

MARK_PREFIX = "hookfleet:replay:"
MARK_TTL_S = 30 * 86400  # a month to resume an interrupted replay


def mark_key(token: str) -> str:
    return f"{MARK_PREFIX}{token}"


class NotReplicated(redis.RedisError):
    """Fewer replicas than ``HOOKFLEET_REDIS_MIN_REPLICAS`` confirmed a chunk in time. The
    chunk and its mark stay together (a failover keeps both or loses both), so a resume
    neither loses nor repeats it; the run stops so its cursor does not move past it."""


class ReplayPush:
    """Pushes ``(webhook_events.id, message)`` pairs, in ascending id, for one run. With
    ``min_replicas``, a chunk counts as taken only once that many replicas hold it
    (Redis ``WAIT``, as the receiver does for a delivery)."""

    def __init__(
        self, client: redis.Redis, token: str, *, min_replicas: int = 0, wait_ms: int = 200
    ) -> None:
        self._client = client
        self._key = mark_key(token)
        self._script = client.register_script(lua("workers.broker", "replay_push"))
        self._min_replicas = min_replicas
        self._wait_ms = wait_ms

    def push(self, queue: str, messages: Sequence[tuple[int, str]]) -> int:
        """Push every message whose id is above the run's mark, move the mark to the
        highest id, and return how many were pushed (the others were on the queue
        already). Raises ``redis.RedisError`` (or :class:`NotReplicated`): then either
        all of them or none were pushed, and a retry pushes each at most once."""
        args: list[str | int] = [MARK_TTL_S]
        for event_pk, message in messages:
            args += [event_pk, message]
        pushed = int(self._script(keys=[self._key, queue], args=args))
        if self._min_replicas:
            confirmed = int(self._client.wait(self._min_replicas, self._wait_ms))
            if confirmed < self._min_replicas:
                raise NotReplicated(
                    f"{confirmed} of {self._min_replicas} replicas confirmed the chunk "
                    f"within {self._wait_ms} ms"
                )
        return pushed

    def mark(self) -> int:
        """The highest id on the queue for this run (0: none yet, or forgotten)."""
        return int(self._client.get(self._key) or 0)

    def forget(self) -> None:
        """Drop the mark of a finished run."""
        self._client.delete(self._key)

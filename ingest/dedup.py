"""The dedup gate: claim an idempotency key and enqueue its job as one step.

With the dedup store and the broker on one Redis (the default), a single Lua script
checks the key, pushes the Celery message and sets the key, atomically: there is no
moment at which the key exists and the job does not. The push runs *before* the SET, so
even a script cut short by an error (OOM) can only leave a job without its key — a
harmless duplicate the database's unique constraint absorbs — never a key without its
job.

On two different Redis servers no script can span both; then the gate claims, publishes,
and releases the claim when the publish fails (see :meth:`DedupGate._claim_then_publish`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

# KEYS: dedup key, queue. ARGV: claim, ttl, message, shed depth (0: never shed).
# Returns false (accepted), the prior claim (duplicate) or 0 (shed: the queue is full).
_CLAIM_AND_ENQUEUE = """
local prior = redis.call('GET', KEYS[1])
if prior then return prior end
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('LLEN', KEYS[2]) >= limit then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

KEY_PREFIX = "hookfleet:dedup:"


def dedup_key(provider: str, event_id: str) -> str:
    """A compact key: 16 bytes of BLAKE2b over the event id, whatever its length."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()
    return f"{KEY_PREFIX}{provider}:{digest}"


@dataclass(frozen=True)
class Admission:
    """What the gate decided. ``prior_claim`` is set for a duplicate: the value the
    first delivery stored (its correlation id). ``shed``: refused because the queue is
    at its limit; nothing was claimed or queued."""

    accepted: bool
    prior_claim: str | None = None
    shed: bool = False


class DedupGate:
    """Claims idempotency keys and enqueues jobs. Raises ``redis.RedisError`` when it
    cannot do both; then nothing is left behind and the caller answers 503."""

    def __init__(self, dedup: redis.Redis, broker: redis.Redis, *, same_server: bool) -> None:
        self._dedup = dedup
        self._broker = broker
        self._same_server = same_server
        self._script = dedup.register_script(_CLAIM_AND_ENQUEUE)

    @property
    def atomic(self) -> bool:
        return self._same_server

    def admit(
        self, key: str, claim: str, ttl_s: int, queue: str, message: str, shed_depth: int = 0
    ) -> Admission:
        """Claim ``key`` for ``ttl_s`` seconds and push ``message`` onto ``queue``.

        Accepted: the message is on the queue and the key is set. Duplicate: nothing
        was pushed. Shed: ``queue`` already holds ``shed_depth`` messages (0: no limit),
        so nothing was claimed or pushed and a retry later is a fresh delivery — the
        duplicate check comes first, so a duplicate is still answered as one.
        Idempotent by construction: calling it again for the same key is a duplicate
        until the TTL ends.
        """
        if self._same_server:
            prior = self._script(keys=[key, queue], args=[claim, ttl_s, message, shed_depth])
        else:
            prior = self._claim_then_publish(key, claim, ttl_s, queue, message, shed_depth)
        if prior is None:
            return Admission(accepted=True)
        if isinstance(prior, int):
            return Admission(accepted=False, shed=True)
        return Admission(accepted=False, prior_claim=_text(prior))

    def _claim_then_publish(
        self, key: str, claim: str, ttl_s: int, queue: str, message: str, shed_depth: int
    ) -> bytes | str | int | None:
        prior = self._dedup.get(key)
        if prior is not None:
            return prior
        if shed_depth and self._broker.llen(queue) >= shed_depth:
            return 0
        if not self._dedup.set(key, claim, nx=True, ex=ttl_s):
            return self._dedup.get(key) or b""
        try:
            self._broker.lpush(queue, message)
        except redis.RedisError:
            # Give the key back so the provider's retry is not mistaken for a duplicate.
            # If the dedup store fails too, the claim lapses with its TTL: the one window
            # where this (non-atomic) setup can drop a retry — the README says so.
            self._dedup.delete(key)
            raise
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

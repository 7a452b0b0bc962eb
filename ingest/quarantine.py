"""Refused deliveries, kept in Redis so they can be let in once the cause is fixed.

A delivery refused for its signature (``missing_signature``, ``malformed_signature``,
``invalid_signature``, ``timestamp_out_of_tolerance``) or because its provider has no
secret (``provider_not_configured``) is kept as it came: raw body, every header (what
re-verifying needs), arrival time (unix seconds), reason, correlation id.
``hookfleet quarantine release`` re-verifies them with the secrets configured then
(:mod:`ingest.quarantine_release`).

Two lanes per provider (:func:`lane_of`), each bounded on its own, so a flood of junk
(no signature of the provider's scheme: ``missing_signature``, ``malformed_signature``)
cannot evict or out-rate what a real sender with a wrong secret sent (``signed``); the
``unsigned`` lane gets a quarter of each cap. A forged signature of the right shape
cannot be told from a real one: it competes in the signed lane (README, *Quarantine*).

Bounded per provider and lane, all within the one Lua step (``quarantine_keep.lua``)
that keeps an entry: at most ``HOOKFLEET_QUARANTINE_MAX_DELIVERIES`` entries and
``HOOKFLEET_QUARANTINE_MAX_BYTES`` bytes (the oldest go first), none older than
``HOOKFLEET_QUARANTINE_DAYS`` (trimmed at each write; keys untouched that long expire), at
most ``HOOKFLEET_QUARANTINE_RATE`` kept per second, and a body larger than
``Settings.quarantine_body_cap`` (``HOOKFLEET_QUARANTINE_MAX_BODY_BYTES``, at most an
eighth of the byte cap) is not kept (its headers and reason are). Each
receiver process also counts its own refusals per second and does not ask Redis past
the rate: a flood of junk costs Redis at most the rate times the processes.

Only the refusal path writes, one round trip with a short timeout; when Redis cannot
be written the refusal is answered as ever and the drop is counted
(``hookfleet_quarantine_dropped_total{cause="unavailable"}``), and the process leaves
Redis alone for :data:`PAUSE_AFTER_FAILURE_S`.

Redis layout, per provider ``p`` (signed lane; the unsigned lane's keys start
``hookfleet:quarantine:p:unsigned`` instead):

- ``hookfleet:quarantine:p`` — a stream, one entry per kept delivery (id from Redis's
  clock, ms): ``arrived``, ``reason``, ``correlation_id``, ``body_bytes``, ``body_kept``,
  ``size``;
- ``hookfleet:quarantine:p:kept`` — a hash: ``<id>:headers`` (JSON) and ``<id>:body``;
- ``hookfleet:quarantine:p:state`` — a hash: ``bytes`` kept, the rate window;
- ``hookfleet:quarantine:p:claim:<entry id>`` — a release's claim (:meth:`Quarantine.claim`).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ingest.errors import ErrorCode
from ingest.providers.base import Delivery
from models.broker.lua import lua
from models.settings import Settings

log = logging.getLogger("hookfleet.ingest.quarantine")

#: Why a delivery is kept: the refusals a fixed secret can turn around.
REASONS = (
    ErrorCode.MISSING_SIGNATURE,
    ErrorCode.MALFORMED_SIGNATURE,
    ErrorCode.INVALID_SIGNATURE,
    ErrorCode.TIMESTAMP_OUT_OF_TOLERANCE,
    ErrorCode.PROVIDER_NOT_CONFIGURED,
)
#: Why a refused delivery is not kept, or no longer: over the rate, the count or the
#: bytes cap (an older one made room, or this one did not fit), Redis not writable.
DROP_CAUSES = ("rate", "count", "bytes", "unavailable")
#: The two lanes, each with its own caps, so junk cannot evict what a real sender sent.
#: ``signed``: what a real sender with a wrong or rotated secret, a skewed clock, or a
#: provider not configured yet produces (a signature header of the provider's scheme).
#: ``unsigned``: no signature header, or one that is not of the scheme: what probes,
#: scanners and junk produce (no real sender of these providers omits it).
SIGNED, UNSIGNED = "signed", "unsigned"
LANES = (SIGNED, UNSIGNED)
_UNSIGNED_REASONS = frozenset({ErrorCode.MISSING_SIGNATURE, ErrorCode.MALFORMED_SIGNATURE})
#: The unsigned lane's caps (count, bytes, rate) are this fraction of the signed one's.
UNSIGNED_SHARE = 4
#: Bytes an entry costs besides its headers and body (its fields, ids, hash slots).
ENTRY_OVERHEAD = 200
#: The refusal path's Redis timeout: the answer waits for the write at most this long.
TIMEOUT_S = 0.25
#: After a failed write, the process skips Redis (counting drops) for this long, so a
#: flood of refusals during an outage does not wait on timeouts one by one.
PAUSE_AFTER_FAILURE_S = 1.0
PAGE = 500
#: How long a release's claim on an entry lasts (seconds) unless renewed: a running
#: release renews what it holds every third of it (:meth:`Quarantine.hold`), however long
#: it runs; a release that died leaves its entries to the next one after this.
CLAIM_S = 300
#: How long an entry stays marked as judged by a release that ended (seconds): a release
#: that was running then and reaches the entry later, even hours later (a large
#: quarantine released at a low ``--rate``), leaves it to the one that judged it.
JUDGED_S = 86_400

_KEEP = lua("ingest", "quarantine_keep")
_FORGET = lua("ingest", "quarantine_forget")
# KEYS: claim keys; ARGV: token, the release's start (Redis time), TTL (s). Takes a key
# that is free, or marked "done:<end>" by a release that ended before this one began.
_CLAIM = """
local held = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  local free = not value
  if value and string.sub(value, 1, 5) == 'done:' then
    free = tonumber(string.sub(value, 6)) < tonumber(ARGV[2])
  end
  if free then redis.call('SET', key, ARGV[1], 'EX', ARGV[3]) end
  held[i] = free and 1 or 0
end
return held
"""
PREFIX = "hookfleet:quarantine:"


def lane_of(reason: str) -> str:
    """The lane a refusal ``reason`` (an error code) is kept in."""
    return UNSIGNED if reason in _UNSIGNED_REASONS else SIGNED


def keys(provider: str, lane: str = SIGNED) -> list[str]:
    """The stream, the headers-and-bodies hash and the state hash of ``provider``'s
    ``lane``."""
    base = f"{PREFIX}{provider}" if lane == SIGNED else f"{PREFIX}{provider}:{lane}"
    return [base, f"{base}:kept", f"{base}:state"]


@dataclass(frozen=True)
class Kept:
    """What :meth:`Quarantine.keep` did: ``entry_id`` when kept, and the drops it
    caused or met, by cause (an older entry evicted for the count or bytes cap, or this
    one not kept)."""

    entry_id: str | None
    dropped: dict[str, int] = field(default_factory=dict)
    lane: str = SIGNED


@dataclass(frozen=True)
class Entry:
    """One kept delivery, without its headers and body. ``id`` is ``provider:stream id``
    for the signed lane and ``provider:u<stream id>`` for the unsigned one (what
    ``hookfleet quarantine show`` takes); ``arrived`` unix seconds."""

    provider: str
    entry_id: str
    arrived: float
    reason: str
    correlation_id: str
    body_bytes: int
    body_kept: bool
    size: int
    lane: str = SIGNED

    @property
    def id(self) -> str:
        marker = "u" if self.lane == UNSIGNED else ""
        return f"{self.provider}:{marker}{self.entry_id}"


@dataclass(frozen=True)
class KeptDelivery:
    """An entry with its headers (lower-case names, as received) and body (``b""``
    when it was not kept)."""

    entry: Entry
    headers: dict[str, str]
    body: bytes

    def delivery(self) -> Delivery:
        """The delivery as the receiver read it, arrival time included."""
        return Delivery(body=self.body, headers=self.headers, received_at=self.entry.arrived)


class _LocalRate:
    """This process's refusals per provider per whole second: past the rate, Redis
    would refuse to keep one anyway (its count covers every process)."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def allow(self, provider: str, rate: int | None = None) -> bool:
        """One more refusal of ``provider`` (any key: a provider's lane) this second;
        False past ``rate`` (default: the one given at construction)."""
        second = int(time.time())
        with self._lock:
            started, taken = self._windows.get(provider, (second, 0))
            if started != second:
                taken = 0
            self._windows[provider] = (second, taken + 1)
        return taken < (self._rate if rate is None else rate)


class Quarantine:
    """The kept deliveries in Redis, for the receiver (:meth:`keep`) and the operator
    (:meth:`entries`, :meth:`fetch`, :meth:`find`, :meth:`forget`, :meth:`sizes`)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._keep = client.register_script(_KEEP)
        self._forget = client.register_script(_FORGET)
        self._claim = client.register_script(_CLAIM)
        self._local = _LocalRate(settings.quarantine_rate)
        self._quiet_until = 0.0

    def keep(self, provider: str, delivery: Delivery, reason: str, correlation_id: str) -> Kept:
        """Keep a refused delivery in its lane (:func:`lane_of`) if that lane's caps
        allow; never raises for Redis."""
        lane = lane_of(reason)
        max_n, max_bytes, rate = self._caps(lane)
        if not self._local.allow(f"{provider}:{lane}", rate):
            return Kept(None, {"rate": 1}, lane)
        if time.monotonic() < self._quiet_until:
            return Kept(None, {"unavailable": 1}, lane)
        settings = self._settings
        body = delivery.body if len(delivery.body) <= settings.quarantine_body_cap else b""
        headers = json.dumps(dict(delivery.headers), separators=(",", ":"))
        size = len(headers) + len(body) + ENTRY_OVERHEAD
        try:
            reply = self._keep(
                keys(provider, lane),
                [
                    max_n,
                    max_bytes,
                    settings.quarantine_days * 86_400_000,
                    rate,
                    reason,
                    f"{delivery.received_at:.6f}",
                    correlation_id,
                    headers,
                    body,
                    len(delivery.body),
                    "1" if body or not delivery.body else "0",
                    size,
                ],
            )
        except redis.RedisError as error:
            self._quiet_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
            log.warning(
                "could not keep a refused delivery",
                extra={"provider": provider, "error": type(error).__name__},
            )
            return Kept(None, {"unavailable": 1}, lane)
        if _text(reply[0]) == "dropped":
            return Kept(None, {_text(reply[1]): 1}, lane)
        evicted = {"count": int(reply[2]), "bytes": int(reply[3])}
        return Kept(_text(reply[1]), {cause: n for cause, n in evicted.items() if n}, lane)

    def _caps(self, lane: str) -> tuple[int, int, int]:
        """``(max deliveries, max bytes, rate per second)`` of ``lane``, per provider."""
        settings = self._settings
        caps = (
            settings.quarantine_max_deliveries,
            settings.quarantine_max_bytes,
            settings.quarantine_rate,
        )
        if lane == SIGNED:
            return caps
        n, size, rate = (max(1, cap // UNSIGNED_SHARE) for cap in caps)
        return n, size, rate

    def entries(self, provider: str) -> Iterator[Entry]:
        """``provider``'s kept deliveries (both lanes), oldest first, in pages (no
        bodies read)."""
        lanes = [self._lane_entries(provider, lane) for lane in LANES]
        return heapq.merge(*lanes, key=lambda entry: entry.arrived)

    def _lane_entries(self, provider: str, lane: str) -> Iterator[Entry]:
        stream = keys(provider, lane)[0]
        start = "-"
        while True:
            page = _range(self._client, stream, start, "+", PAGE)
            for entry_id, fields in page:
                yield _entry(provider, entry_id, fields, lane)
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0]

    def fetch(self, entries: Sequence[Entry]) -> list[KeptDelivery]:
        """Headers and bodies of ``entries`` (one round trip); an entry forgotten in
        the meantime is left out."""
        with self._client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hmget(
                    keys(entry.provider, entry.lane)[1],
                    f"{entry.entry_id}:headers",
                    f"{entry.entry_id}:body",
                )
            replies = pipe.execute()
        found = []
        for entry, (headers, body) in zip(entries, replies, strict=True):
            if headers is not None:
                found.append(KeptDelivery(entry, json.loads(headers), body or b""))
        return found

    def find(self, entry_id: str) -> KeptDelivery | None:
        """The entry ``provider:stream id`` (``provider:u<stream id>``: unsigned lane),
        or None."""
        provider, _, stream_id = entry_id.partition(":")
        lane = UNSIGNED if stream_id.startswith("u") else SIGNED
        stream_id = stream_id.removeprefix("u")
        try:
            page = _range(self._client, keys(provider, lane)[0], stream_id, stream_id, 1)
        except redis.ResponseError:  # not a stream id
            return None
        if not page:
            return None
        found = self.fetch([_entry(provider, stream_id, page[0][1], lane)])
        return found[0] if found else None

    def clock(self) -> float:
        """Redis's time (seconds): what :meth:`claim` and :meth:`unclaim` compare."""
        seconds, micros = self._client.time()
        return seconds + micros / 1e6

    def claim(self, entries: Sequence[Entry], token: str, started: float = 0.0) -> list[Entry]:
        """Those of ``entries`` this caller now holds (for :data:`CLAIM_S`): free, or
        let go by a release that ended before this one ``started`` (:meth:`clock`).
        Two releases running at once each admit and count an entry only if they hold
        it, so their printed counts add up. Give them back with :meth:`unclaim`."""
        keys = [_claim_key(entry) for entry in entries]
        if not keys:
            return []
        replies = self._claim(keys=keys, args=[token, started, CLAIM_S])
        return [entry for entry, held in zip(entries, replies, strict=True) if held]

    def hold(self, entries: Sequence[Entry]) -> None:
        """Renew the claims on ``entries`` (taken by :meth:`claim`) for another
        :data:`CLAIM_S`."""
        with self._client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.expire(_claim_key(entry), CLAIM_S)
            pipe.execute()

    def unclaim(self, entries: Sequence[Entry], ended: float | None = None) -> None:
        """Let go of claims taken by :meth:`claim` (forgotten or not); with ``ended``
        (:meth:`clock`) they stay marked as judged then, for releases that were
        running at that time (for :data:`JUDGED_S`)."""
        if not entries:
            return
        if ended is None:
            self._client.delete(*(_claim_key(entry) for entry in entries))
            return
        with self._client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.set(_claim_key(entry), f"done:{ended}", ex=JUDGED_S)
            pipe.execute()

    def forget(self, entries: Sequence[Entry]) -> int:
        """Remove ``entries`` (released ones); returns how many were still kept."""
        gone = 0
        by_lane: dict[tuple[str, str], list[str]] = {}
        for entry in entries:
            by_lane.setdefault((entry.provider, entry.lane), []).append(entry.entry_id)
        for (provider, lane), ids in by_lane.items():
            gone += int(self._forget(keys(provider, lane), ids))
        return gone

    def sizes(self, providers: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``(deliveries, bytes)`` kept per provider (both lanes), in one round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            for provider in providers:
                for lane in LANES:
                    stream, _, state = keys(provider, lane)
                    pipe.xlen(stream)
                    pipe.hget(state, "bytes")
            replies = iter(pipe.execute())
        sizes = {}
        for provider in providers:
            total_count = total_bytes = 0
            for _lane in LANES:
                count, used = int(next(replies)), int(next(replies) or 0)
                total_count += count
                total_bytes += used if count else 0
            sizes[provider] = (total_count, total_bytes)
        return sizes


def _claim_key(entry: Entry) -> str:
    return f"{PREFIX}{entry.provider}:claim:{entry.id}"


def _range(
    client: redis.Redis, stream: str, start: str, end: str, count: int
) -> list[tuple[str, dict[Any, Any]]]:
    """``XRANGE``'s entries as ``(id, fields)``."""
    return [
        (_text(entry_id), dict(fields))
        for entry_id, fields in client.xrange(stream, start, end, count=count) or ()
        if entry_id is not None and fields is not None
    ]


def _entry(provider: str, entry_id: str, fields: dict[Any, Any], lane: str = SIGNED) -> Entry:
    values = {_text(k): _text(v) for k, v in fields.items()}
    return Entry(
        provider=provider,
        entry_id=entry_id,
        arrived=float(values.get("arrived", 0)),
        reason=values.get("reason", ""),
        correlation_id=values.get("correlation_id", ""),
        body_bytes=int(values.get("body_bytes", 0)),
        body_kept=values.get("body_kept") == "1",
        size=int(values.get("size", 0)),
        lane=lane,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def quarantine_for(settings: Settings) -> Quarantine | None:
    """The receiver's quarantine on the dedup Redis, with the refusal path's short
    timeout; None when a cap of 0 turns it off. Opens no connection."""
    if not settings.quarantine_on:
        return None
    from models.broker.redis_links import redis_client

    timeout_s = min(TIMEOUT_S, settings.redis_timeout_s)
    return Quarantine(redis_client(settings.redis_url, timeout_s=timeout_s), settings)

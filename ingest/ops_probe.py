"""The operator endpoints' view of Redis and the database (:class:`Probe`): the
readiness checks, the backlog ``/metrics`` and ``/stats`` show, each answered within
about half a second whatever those servers do (ingest/ops_readings.py).

A reading is each worker process's own: with Redis frozen, a scrape shows the last good
reading of the worker that answers it (none yet: no queue gauges, and
``hookfleet_dependency_up`` 0 all the same).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from ingest.ops_readings import FIRST_WAIT_S, SCRAPE_WAIT_S, BoundedReading, Reading, read_all
from ingest.providers import REGISTRY
from ingest.quarantine import Quarantine
from ingest.spool import census
from models.broker.backlog import (
    Backlog,
    QueueBacklog,
    count_dead_letters,
    read_queues,
    recorded_since,
)
from models.broker.redis_links import FailoverReply, redis_client
from models.contract import QUEUES
from models.engine import make_engine
from models.metrics import BREAKER_NAMES, BREAKER_STATES, breaker_state_key
from models.perprocess import PerProcess
from models.settings import Settings

# The probe clients' timeouts (connect, each command): a reading nobody waits for any
# more ends by then, and frees its thread.
CHECK_TIMEOUT_S = 1.0
# /readyz waits this long for its checks, run at the same time: a dependency that does
# not answer within it is not ready (and the probe gets its answer in well under 1 s).
READY_WAIT_S = 0.4


@dataclass(frozen=True)
class _Recent:
    """The database's part of a backlog reading (``recorded_*``: None without rates)."""

    dead_letters: int
    recorded_last_minute: dict[str, int] | None = None
    recorded_last_5_minutes: dict[str, int] | None = None


@dataclass(frozen=True)
class _Links:
    """A process's connections and threads for the operator endpoints, and its
    bounded readings (ingest/ops_readings.py)."""

    broker: redis.Redis
    dedup: redis.Redis | None
    engine: Engine
    threads: ThreadPoolExecutor
    queues: BoundedReading[tuple[QueueBacklog, ...]]
    recent: BoundedReading[_Recent]
    dead_letters: BoundedReading[_Recent]
    breakers: BoundedReading[dict[str, str]]
    quarantine: BoundedReading[dict[str, tuple[int, int]]]


class Probe:
    """The receiver's short-timeout view of Redis and the database, for the operator
    endpoints. Its connections are its own, built after the fork, never the gate's.
    Every answer comes within about half a second whatever Redis or the database do:
    ``/readyz`` waits :data:`READY_WAIT_S` for its checks, ``/metrics`` and ``/stats``
    :data:`~ingest.ops_readings.SCRAPE_WAIT_S` for their readings, then answer with the
    last good ones, marked stale (a frozen Redis made a scrape take ~3 s)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._links = PerProcess(self._connect)
        self._checked = False  # whether /readyz ran in this process (its links dialled)
        self._stats: tuple[float, Backlog] | None = None  # (time.monotonic(), reading)

    def _connect(self) -> _Links:
        broker = _short_timeout_client(self.settings.broker_url)
        dedup = (
            None
            if self.settings.dedup_on_broker
            else _short_timeout_client(self.settings.redis_url)
        )
        engine = make_engine(self.settings, io_timeout_s=int(CHECK_TIMEOUT_S))
        # A reading a frozen server holds keeps one thread each until its 1 s timeout;
        # the checks of /readyz need theirs meanwhile.
        threads = ThreadPoolExecutor(8, thread_name_prefix="hookfleet-probe")
        reader = dedup or broker

        def recent() -> _Recent:
            return _recent(engine, rates=True)

        return _Links(
            broker=broker,
            dedup=dedup,
            engine=engine,
            threads=threads,
            queues=BoundedReading(lambda: read_queues(broker, QUEUES), threads, ()),
            recent=BoundedReading(recent, threads, _Recent(-1)),
            dead_letters=BoundedReading(lambda: _recent(engine, rates=False), threads, _Recent(-1)),
            breakers=BoundedReading(lambda: _breakers(reader), threads, {}),
            quarantine=BoundedReading(
                lambda: Quarantine(reader, self.settings).sizes(list(REGISTRY)), threads, {}
            ),
        )

    def links(self) -> _Links:
        return self._links.get()

    def checks(self) -> dict[str, dict[str, Any]]:
        """Ask Redis (dedup store and broker) for its role and the database for a row,
        in parallel, all within :data:`READY_WAIT_S`."""
        links = self.links()
        probes: dict[str, Callable[[], object]] = {
            "redis": lambda: _writable_primary(links.broker),
            "database": lambda: _select_one(links.engine),
        }
        if links.dedup is not None:
            dedup = links.dedup
            probes["dedup_redis"] = lambda: _writable_primary(dedup)
        # The first check dials the connections (several round trips): the bound of before.
        wait_s = READY_WAIT_S if self._checked else FIRST_WAIT_S
        self._checked = True
        deadline = time.monotonic() + wait_s
        futures = {name: links.threads.submit(probe) for name, probe in probes.items()}
        results: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                results[name] = {"ok": True}
            except FutureTimeout:
                results[name] = {"ok": False, "error": f"no answer within {wait_s} s"}
            except Exception as error:  # noqa: BLE001 (every failure means "not ready")
                results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return results

    def stats(self, max_age_s: float) -> Backlog:
        """``/stats``' reading: at most ``max_age_s`` old when Redis and the database
        answer (a busy dashboard costs them one reading per interval), else the last
        good parts, each named stale in ``errors``."""
        cached = self._stats
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        links = self.links()
        queues, recent = read_all([links.queues, links.recent])
        errors = {
            name: _stale_error(reading)
            for name, reading in (("redis", queues), ("database", recent))
            if not reading.fresh
        }
        reading = Backlog(
            taken_at=time.time(),
            queues=queues.value,
            dead_letters=None if recent.age_s is None else recent.value.dead_letters,
            recorded_last_minute=recent.value.recorded_last_minute,
            recorded_last_5_minutes=recent.value.recorded_last_5_minutes,
            errors=errors,
        )
        if not errors:
            self._stats = (time.monotonic(), reading)
        return reading


def _stale_error(reading: Reading[Any]) -> str:
    if reading.age_s is None:
        return f"no answer within {SCRAPE_WAIT_S} s, and no earlier reading"
    return f"no answer within {SCRAPE_WAIT_S} s: shown as read {reading.age_s:.1f} s ago"


def _recent(engine: Engine, *, rates: bool) -> _Recent:
    """Dead letters, and with ``rates`` the rows recorded in the last 1 and 5 minutes."""
    dead = count_dead_letters(engine)
    if not rates:
        return _Recent(dead)
    now = datetime.now(UTC)
    return _Recent(
        dead,
        recorded_since(engine, now - timedelta(minutes=1)),
        recorded_since(engine, now - timedelta(minutes=5)),
    )


def _breakers(reader: redis.Redis) -> dict[str, str]:
    """Each circuit breaker's state as every worker sees it (shared in Redis)."""
    values = reader.mget([breaker_state_key(name) for name in BREAKER_NAMES])
    return {
        name: (value.decode() if isinstance(value, bytes) else value) or "closed"
        for name, value in zip(BREAKER_NAMES, values, strict=True)
    }


def _short_timeout_client(url: str) -> redis.Redis:
    # A failover reply drops the connection, so the probe and the queue-depth reading
    # follow the new primary (or what Sentinel names) at their next try.
    return redis_client(url, timeout_s=CHECK_TIMEOUT_S)


def _writable_primary(client: redis.Redis) -> None:
    """Raise unless ``client`` reaches a primary. A demoted node still answers PING, so
    a plain ping would call the receiver ready while every delivery would be refused:
    ask for the role, and drop the connections to a replica so the next check dials
    again (reaching the new primary where the address has moved)."""
    role = client.execute_command("ROLE")[0]
    if role not in (b"master", "master"):
        client.connection_pool.disconnect()
        raise FailoverReply("READONLY", f"the node is a {_text(role)}, not the primary")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


class BacklogCollector(Collector):
    """Queue depth, unacked, oldest age, dead letters, breakers and the quarantine, read
    when Prometheus asks, within :data:`~ingest.ops_readings.SCRAPE_WAIT_S` (a reading
    not back by then shows its last good value; ``hookfleet_reading_age_seconds`` says
    how old, and ``hookfleet_dependency_up`` is 0)."""

    def __init__(self, probe: Probe) -> None:
        self._probe = probe

    def collect(self) -> Any:
        links = self._probe.links()
        queues, recent, breakers, kept = read_all(
            [links.queues, links.dead_letters, links.breakers, links.quarantine]
        )
        up = GaugeMetricFamily(
            "hookfleet_dependency_up",
            "1 when this scrape read the dependency in time.",
            labels=["dependency"],
        )
        up.add_metric(["redis"], 1.0 if queues.fresh else 0.0)
        up.add_metric(["database"], 1.0 if recent.fresh else 0.0)
        yield up
        age = GaugeMetricFamily(
            "hookfleet_reading_age_seconds",
            "How old the values shown of a reading are: 0 when read by this scrape; "
            "else they are the last good reading's (no sample: none yet).",
            labels=["reading"],
        )
        readings = (
            ("queues", queues),
            ("dead_letters", recent),
            ("breakers", breakers),
            ("quarantine", kept),
        )
        for name, reading in readings:
            if reading.age_s is not None:
                age.add_metric([name], reading.age_s)
        yield age
        yield from _queue_gauges(queues.value)
        states = GaugeMetricFamily(
            "hookfleet_breaker_state",
            "Circuit breaker state shared by all workers: 0 closed, 1 half-open, 2 open.",
            labels=["name"],
        )
        for name, state in breakers.value.items():
            states.add_metric([name], BREAKER_STATES.get(state, 0))
        yield states
        if recent.age_s is not None:
            yield GaugeMetricFamily(
                "hookfleet_dead_letters",
                "webhook_events rows with status dead, waiting for a replay.",
                value=recent.value.dead_letters,
            )
        yield from _quarantine_gauges(kept.value)


class SpoolCollector(Collector):
    """The answered inbound calls' records on this host's disk (ingest/spool.py),
    counted when Prometheus asks: by whose they are, the ``.bad`` ones, and how old the
    oldest is. A record normally leaves the spool within seconds of Redis or the
    database answering again; one that stays means both are still away, or its
    receiver is gone and none adopts it (another host, another spelling of the URL)."""

    def __init__(self, var_dir: str, database_url: str) -> None:
        self._var_dir, self._database_url = var_dir, database_url

    def collect(self) -> Any:
        try:
            counted = census(self._var_dir, self._database_url, time.time())
        except OSError:
            counted = None  # an unreadable spool: no samples (the receiver logs it)
        records = GaugeMetricFamily(
            "hookfleet_spool_records",
            "Answered inbound calls' records on this host's disk, waiting for Redis or "
            "the database: held by receivers running here, left by receivers gone, or "
            "left for another spelling of the database URL.",
            labels=["owner"],
        )
        bad = GaugeMetricFamily(
            "hookfleet_spool_bad_records",
            "Spool files set aside as .bad (not a record): a call answered whose record "
            "needs an operator.",
        )
        oldest = GaugeMetricFamily(
            "hookfleet_spool_oldest_record_age_seconds",
            "Age of the oldest record in this host's spool (0 when it is empty).",
        )
        if counted is not None:
            for owner in ("running", "gone", "other_url"):
                records.add_metric([owner], getattr(counted, owner))
            bad.add_metric([], counted.bad)
            oldest.add_metric([], counted.oldest_age_s or 0.0)
        yield from (records, bad, oldest)


def _queue_gauges(queues: tuple[QueueBacklog, ...]) -> Any:
    depth = GaugeMetricFamily(
        "hookfleet_queue_depth", "Messages waiting on the queue.", labels=["queue"]
    )
    unacked = GaugeMetricFamily(
        "hookfleet_queue_unacked",
        "Messages reserved by a worker but not finished (not on the list).",
        labels=["queue"],
    )
    age = GaugeMetricFamily(
        "hookfleet_queue_oldest_age_seconds",
        "Age of the next message out of the queue (since the receiver took it).",
        labels=["queue"],
    )
    for queue in queues:
        depth.add_metric([queue.queue], queue.waiting)
        unacked.add_metric([queue.queue], queue.unacked)
        if queue.oldest_age_s is not None or queue.waiting == 0:
            # Empty: nothing is waiting, so nothing is late. Waiting but no message
            # tells its age (not one of ours): no sample rather than a wrong one.
            age.add_metric([queue.queue], queue.oldest_age_s or 0.0)
    yield depth
    yield unacked
    yield age


def _quarantine_gauges(sizes: dict[str, tuple[int, int]]) -> Any:
    kept = GaugeMetricFamily(
        "hookfleet_quarantine_kept",
        "Refused deliveries kept for `hookfleet quarantine release`.",
        labels=["provider"],
    )
    used = GaugeMetricFamily(
        "hookfleet_quarantine_bytes",
        "Redis bytes the kept refused deliveries count against HOOKFLEET_QUARANTINE_MAX_BYTES.",
        labels=["provider"],
    )
    for provider, (count, size) in sizes.items():
        kept.add_metric([provider], count)
        used.add_metric([provider], size)
    yield kept
    yield used

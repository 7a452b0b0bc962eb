"""Hookfleet's configuration: one frozen object, built from ``HOOKFLEET_*`` variables.

It lives in ``models`` because that is the one package both the receiver and the
workers may import; it imports nothing of either. Nothing here reads the environment at
import time: callers build a :class:`Settings` with :meth:`Settings.from_env` (tests
pass their own mapping), once per process (``workers.runtime``, the ``hookfleet``
command's context, ``ingest.create_app``).

Each knob is declared once, as a field with :func:`models.knobs.knob`: its variable,
default, parser and README line. ``from_env`` and the README's configuration table
(:func:`configuration_table`, ``python -m models.settings``) are derived from those.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from models import url_knobs
from models.knobs import (
    ConfigError,
    Knob,
    base_url,
    items,
    knob,
    knobs,
    positive,
    rate,
    read,
    read_fields,
    table_rows,
    text,
    upper,
    upper_items,
)

__all__ = ["ConfigError", "OutboundSettings", "ProviderSettings", "Settings"]

from models.contract import QUEUES
from models.perprocess import PerProcess

# Body limits: a provider's largest real delivery, with margin (README, "Body limits").
# Retell: a two-hour call_analyzed (Retell's longest call) with transcript, per-word
# transcript_object and transcript_with_tool_calls measures 2.1 MiB, 3.1 MiB with PII
# scrubbing's third copy (tests/long_calls.py); 6 MiB leaves 2-3x, and a call's row
# (the body and its transcript, each escaped: up to 4x the body) stays under the
# 32 MiB max_allowed_packet of deploy/mariadb.cnf. Everything else sends a few KB.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Where the receiver serves /metrics, /readyz and /stats unless HOOKFLEET_OPS_BIND says
# otherwise: loopback, so nothing of it reaches the internet by default.
DEFAULT_OPS_BIND = "127.0.0.1:9807"
#: ``HOOKFLEET_VAR_DIR`` unset: relative to the working directory.
DEFAULT_VAR_DIR = "var"
PROVIDER_MAX_BODY_BYTES = MappingProxyType({"retell": 6 * 1024 * 1024})
# A rate limit's default bucket holds this many seconds of the rate: a sender that was
# quiet may catch up at once (Stripe retries a backlog together), while its average
# stays the rate.
RATE_BURST_SECONDS = 10
# Tried in order for a phone number written without a country code (models.phones).
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("DE", "AT", "CH")
# The most processes per Celery worker (`HOOKFLEET_WORKER_CONCURRENCY`, `hookfleet up
# --concurrency`) and per receiver (`WEB_CONCURRENCY`), and threads per receiver process:
# each holds its own connections and files, and 100000 only ended in EMFILE.
MAX_WORKER_CONCURRENCY = 64
MAX_WEB_THREADS = 256
# The longest TTL a knob may give Redis (ten years, in seconds): EXPIRE in ms past it
# can overflow, and every write would then fail instead of startup.
MAX_TTL_S = 3650 * 86_400


@dataclass(frozen=True)
class ProviderSettings:
    """What one provider may configure: ``HOOKFLEET_<PROVIDER>_*``."""

    secrets: tuple[str, ...] = knob(
        (),
        "HOOKFLEET_{provider}_SECRETS",
        "Comma-separated signing secrets (several at once while rotating).",
        parse=items,
        repr=False,
    )
    verify: bool = knob(
        True,
        "HOOKFLEET_{provider}_VERIFY",
        "`off` accepts unsigned deliveries (local trials and tests only).",
    )
    tolerance_s: int = knob(
        300, "HOOKFLEET_{provider}_TOLERANCE_S", "Accepted clock difference for signed timestamps."
    )
    dedup_ttl_s: int = knob(
        24 * 3600,
        "HOOKFLEET_{provider}_DEDUP_TTL_S",
        "How long Redis remembers an idempotency key.",
        at_most=MAX_TTL_S,
    )
    # None: see Settings.body_limit().
    max_body_bytes: int | None = knob(
        None,
        "HOOKFLEET_{provider}_MAX_BODY_BYTES",
        "This provider's body limit; wins over `HOOKFLEET_MAX_BODY_BYTES`.",
        parse=positive,
        shown=f"Retell `{PROVIDER_MAX_BODY_BYTES['retell']}`, others `{DEFAULT_MAX_BODY_BYTES}`",
    )
    # Off by default: a sender over its rate is answered 429 with Retry-After (README,
    # "Rate limits"); Retell's inbound call never is.
    rate_limit: float = knob(
        0.0,
        "HOOKFLEET_{provider}_RATE_LIMIT",
        "Deliveries per second this provider may send, on average, before 429 "
        "`rate_limited` (*Rate limits*); `0`: no limit.",
        parse=rate,
        shown="`0` (off)",
    )
    # None: RATE_BURST_SECONDS of the rate (see ProviderSettings.rate_bucket).
    rate_burst: int | None = knob(
        None,
        "HOOKFLEET_{provider}_RATE_BURST",
        "Deliveries that may arrive at once (the bucket's size), with a rate set.",
        parse=positive,
        shown=f"{RATE_BURST_SECONDS} s of the rate, at least 1",
    )

    @property
    def rate_bucket(self) -> tuple[float, int] | None:
        """``(deliveries per second, burst)`` when this provider is rate limited."""
        if not self.rate_limit:
            return None
        burst = self.rate_burst or max(1, math.ceil(self.rate_limit * RATE_BURST_SECONDS))
        return self.rate_limit, burst


def _first_retell_secret(env: Mapping[str, str]) -> str | None:
    # Retell signs webhooks with the API key, so the first webhook secret is the default.
    secrets = items("", env.get("HOOKFLEET_RETELL_SECRETS", ""))
    return secrets[0] if secrets else None


@dataclass(frozen=True)
class OutboundSettings:
    """Calling out to Retell and Cal.com when provisioning (workers.outbound)."""

    retell_api_url: str = knob(
        "https://api.retellai.com",
        "HOOKFLEET_RETELL_API_URL",
        "Retell's API, for provisioning agents (tests point it at a stand-in).",
        parse=base_url,
    )
    retell_api_key: str = knob(
        "",
        "HOOKFLEET_RETELL_API_KEY",
        "Retell API key (Retell signs webhooks with it, hence the default).",
        fallback=_first_retell_secret,
        shown="first of `HOOKFLEET_RETELL_SECRETS`",
        repr=False,
    )
    retell_voice_id: str = knob(
        "11labs-Adrian", "HOOKFLEET_RETELL_VOICE_ID", "Voice of provisioned agents."
    )
    retell_webhook_url: str = knob(
        "",
        "HOOKFLEET_RETELL_WEBHOOK_URL",
        "`webhook_url` of provisioned agents, e.g. `https://<host>/webhooks/retell`.",
    )
    calcom_api_url: str = knob(
        "https://api.cal.com",
        "HOOKFLEET_CALCOM_API_URL",
        "Cal.com's API (v2), for checking event types.",
        parse=base_url,
    )
    calcom_api_key: str = knob("", "HOOKFLEET_CALCOM_API_KEY", "Cal.com API key.", repr=False)
    timeout_s: float = knob(
        10.0,
        "HOOKFLEET_OUTBOUND_TIMEOUT_S",
        "Timeout of every call to Retell/Cal.com (connect, and each read).",
    )
    retries: int = knob(
        3,
        "HOOKFLEET_OUTBOUND_RETRIES",
        "Attempts per call for 5xx, 408, 429 (and a 413 with Retry-After), timeouts and "
        "connection errors; no other 4xx.",
        at_least=1,
    )
    backoff_s: float = knob(
        0.5,
        "HOOKFLEET_OUTBOUND_BACKOFF_S",
        "First retry wait; doubles, capped at 8 times it, plus jitter.",
    )
    breaker_fail_max: int = knob(
        5,
        "HOOKFLEET_BREAKER_FAIL_MAX",
        "Failed attempts in a row (any process) that open a service's breaker.",
        at_least=1,
    )
    breaker_reset_s: int = knob(
        60,
        "HOOKFLEET_BREAKER_RESET_S",
        "How long an open breaker refuses before letting one trial call through.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OutboundSettings:
        return cls(**read_fields(cls, env))


def _redis_url(env: Mapping[str, str]) -> str | None:
    return read(_knob(Settings, "redis_url"), "HOOKFLEET_REDIS_URL", env)


@dataclass(frozen=True)
class Settings:
    """Every knob Hookfleet has, each declared once: the field's :func:`knob` holds its
    variable, default, parser and README line (``tests/unit/test_settings.py`` holds the
    README's configuration table to :func:`configuration_table`)."""

    redis_url: str = knob(
        "redis://127.0.0.1:6379/0",
        "HOOKFLEET_REDIS_URL",
        "Dedup store (and broker unless set below). "
        "`redis+sentinel://host:26379[,host:26379]/<service>[/<db>]` (or `sentinel://`) "
        'for Sentinel (see *Guarantees*, "Failovers").',
        parse=url_knobs.redis_url,
        shown="`redis://127.0.0.1:6379/0` (`hookfleet up`: a private Redis)",
    )
    broker_url: str = knob(
        "redis://127.0.0.1:6379/0",
        "HOOKFLEET_BROKER_URL",
        "Celery broker (Redis). Keep it equal for atomic claim+enqueue.",
        parse=url_knobs.redis_url,
        fallback=_redis_url,
        shown="= `HOOKFLEET_REDIS_URL`",
    )
    database_url: str = knob(
        "sqlite:///var/hookfleet.db",
        "HOOKFLEET_DATABASE_URL",
        "SQLAlchemy URL, e.g. `mysql+pymysql://user:pw@host:3306/hookfleet`.",
        parse=url_knobs.database_url,
    )

    db_pool_size: int = knob(5, "HOOKFLEET_DB_POOL_SIZE", "Connections kept per process.")
    db_max_overflow: int = knob(
        10, "HOOKFLEET_DB_MAX_OVERFLOW", "Extra connections allowed under load."
    )
    db_pool_timeout_s: float = knob(
        10.0,
        "HOOKFLEET_DB_POOL_TIMEOUT_S",
        "Wait for a free connection before failing (retried as transient).",
    )
    db_pool_recycle_s: int = knob(
        1800,
        "HOOKFLEET_DB_POOL_RECYCLE_S",
        "Reconnect connections older than this (below MariaDB's `wait_timeout`).",
    )
    db_pool_pre_ping: bool = knob(
        True,
        "HOOKFLEET_DB_POOL_PRE_PING",
        "Test a connection before use, so a restarted database costs no failed task.",
    )

    # One limit for every provider without its own variable; None (unset): each
    # provider's default (PROVIDER_MAX_BODY_BYTES, else 1 MiB).
    max_body_bytes: int | None = knob(
        None,
        "HOOKFLEET_MAX_BODY_BYTES",
        "One body limit (bytes) for every provider without its own; larger bodies get 413. "
        "Unset: each provider's default (*Body limits*: Retell 6 MiB, the others 1 MiB).",
        parse=positive,
        shown="— (per provider)",
    )
    redis_timeout_s: float = knob(
        2.0,
        "HOOKFLEET_REDIS_TIMEOUT_S",
        "Receiver's Redis connect/read timeout; past it the answer is 503.",
    )
    # With a replicated Redis: answer 202 only once this many replicas confirm the
    # write (Redis WAIT), so a failover cannot lose an accepted delivery. 0: off.
    redis_min_replicas: int = knob(
        0,
        "HOOKFLEET_REDIS_MIN_REPLICAS",
        "With a replicated Redis: answer 202 only once this many replicas hold the "
        "delivery (Redis `WAIT`), else 503 `not_replicated`. "
        'See *Guarantees*, "Redis failover".',
        shown="`0` (off)",
    )
    # A healthy replica confirms within a network round trip (WAIT asks it at once), so
    # 200 ms rides out a replica's fork or fsync stall and Redis's timer tick (100 ms at
    # hz 10) while keeping a lagging replica's cost per delivery to a fifth of a second,
    # far inside any provider's delivery timeout.
    redis_replica_wait_ms: int = knob(
        200,
        "HOOKFLEET_REDIS_REPLICA_WAIT_MS",
        "How long `WAIT` may take. At least 1, and below half of "
        "`HOOKFLEET_REDIS_TIMEOUT_S` (checked at startup).",
    )
    retry_after_s: int = knob(5, "HOOKFLEET_RETRY_AFTER_S", "`Retry-After` on 503 answers.")
    # Providers retry later instead of Redis growing without bound.
    shed_queue_depth: int = knob(
        100_000,
        "HOOKFLEET_SHED_QUEUE_DEPTH",
        "Waiting messages at which a queue answers new deliveries 503 (0: never).",
    )

    # A consuming worker process holds a lease in Redis for this long, renewed five
    # times per period while it lives; the messages of a worker whose lease lapsed
    # (killed, frozen, cut off) go back to their queues within about lease_s plus one
    # sweep (lease_s / 5). A live worker keeps its messages however long tasks run.
    lease_s: float = knob(
        8.0,
        "HOOKFLEET_LEASE_S",
        "How long a worker's lease on the messages it took outlives its last renewal "
        "(renewed every fifth of it). A killed or frozen worker's messages are back on "
        "their queues about this long after it stopped; a live worker keeps them however "
        'long it works. At least 1. See *Guarantees*, "Leases".',
    )
    # Not tied to the task time limit any more.
    visibility_timeout_s: int = knob(
        3 * 3600,
        "HOOKFLEET_VISIBILITY_TIMEOUT_S",
        "The last resort, for messages no lease covers (taken by a stock kombu consumer): "
        "back on their queue after this long unacknowledged. Never applied to a message a "
        "live worker holds.",
    )
    task_time_limit_s: int = knob(
        300,
        "HOOKFLEET_TASK_TIME_LIMIT_S",
        "Hard limit per task (independent of the visibility timeout).",
    )
    # Two commits per batch instead of one per event.
    batch_size: int = knob(
        50,
        "HOOKFLEET_BATCH_SIZE",
        "Deliveries a worker records and applies together (two commits per batch).",
        at_least=1,
    )
    batch_wait_ms: int = knob(
        10,
        "HOOKFLEET_BATCH_WAIT_MS",
        "How long a worker waits for a batch to fill before running what it has.",
    )
    # What a pool process decodes and applies at once, so what its memory follows.
    batch_bytes: int = knob(
        8 * 1024 * 1024,
        "HOOKFLEET_BATCH_BYTES",
        "Message bytes a batch may hold besides its count (one larger message goes "
        "alone); `0`: count only. See *Body limits*, worker memory.",
    )
    # Celery's worker_max_memory_per_child (billiard reads ru_maxrss): CPython keeps the
    # peak of a batch of long calls otherwise. The figure counts the pages a child
    # shares with the main process from its fork, so it must stay well above the main
    # process's size, or children are replaced after every batch.
    worker_max_memory_mb: int = knob(
        1024,
        "HOOKFLEET_WORKER_MAX_MEMORY_MB",
        "A pool process whose peak resident size passed this after a batch is replaced "
        "(Celery's `worker_max_memory_per_child`); `0`: never. Keep it well above the "
        "main process's size (see *Body limits*, worker memory).",
    )
    # Twice the batch size by default, so one batch fills while the last one runs.
    worker_prefetch_multiplier: int = knob(
        0,
        "HOOKFLEET_WORKER_PREFETCH",
        "Messages each worker process reserves ahead; `0` = twice the batch size.",
    )
    # The retry budget for transient failures: quick tries inside the task, then Celery
    # retries with growing countdowns. Spent, the event is dead (a dead letter).
    db_retry_attempts: int = knob(
        4,
        "HOOKFLEET_DB_RETRY_ATTEMPTS",
        "Quick tries inside a task for a transient database failure.",
        at_least=1,
    )
    task_max_retries: int = knob(
        8,
        "HOOKFLEET_TASK_MAX_RETRIES",
        "Celery retries after those; spent, the event is dead.",
    )
    worker_soft_shutdown_s: float = knob(
        20.0,
        "HOOKFLEET_WORKER_SOFT_SHUTDOWN_S",
        "On any shutdown (SIGTERM too), time running batches get before their pool "
        "processes are ended (their messages come back by lease, their transactions roll back).",
    )
    # A received row untouched this long lost its message (workers.recovery.sweeper).
    stuck_after_s: int = knob(
        1800,
        "HOOKFLEET_STUCK_AFTER_S",
        "A `received` row untouched this long is requeued by beat's sweep (`0`: off); "
        "must exceed `HOOKFLEET_TASK_TIME_LIMIT_S` + `HOOKFLEET_LEASE_S` (checked at "
        "startup). See *Guarantees*.",
    )

    # Retell's inbound call waits on us while the phone rings: answer within this, or
    # answer without an override.
    inbound_budget_ms: int = knob(
        300,
        "HOOKFLEET_INBOUND_BUDGET_MS",
        "Time the Retell inbound answer may spend looking up the dialled number.",
    )
    inbound_cache_ttl_s: int = knob(
        60,
        "HOOKFLEET_INBOUND_CACHE_TTL_S",
        "How long a found number→branch answer is cached in Redis.",
        at_most=MAX_TTL_S,
    )
    phone_regions: tuple[str, ...] = knob(
        DEFAULT_PHONE_REGIONS,
        "HOOKFLEET_PHONE_REGIONS",
        "Regions tried, in order, for phone numbers written without a country code: "
        "comma-separated ISO 3166 codes `phonenumbers` knows (`DE`, `AT`, ...).",
        parse=lambda name, raw: _phone_regions(name, raw),
    )

    log_level: str = knob(
        "INFO", "HOOKFLEET_LOG_LEVEL", "Log level for Hookfleet's log lines.", parse=upper
    )
    log_format: str = knob(
        "auto",
        "HOOKFLEET_LOG_FORMAT",
        "`json` (one JSON object per line), `console` (one short coloured line per event; "
        "`NO_COLOR` drops the colour) or `auto`: console when the log stream is a "
        "terminal, else JSON. `hookfleet up` decides once and passes it to its processes.",
        parse=lambda name, raw: _log_format(name, raw),
    )
    var_dir: str = knob(
        DEFAULT_VAR_DIR,
        "HOOKFLEET_VAR_DIR",
        "Beat's schedule file; the receiver's spool (`spool/`: answered calls' records "
        "neither Redis nor the database took in time, queued by its next start on this "
        "host; keep it across restarts); `hookfleet up` keeps SQLite and Redis data here.",
    )
    routes: Mapping[str, str] = knob(
        MappingProxyType({}),
        "HOOKFLEET_ROUTES",
        "Routing overrides, see *Routing*.",
        parse=lambda _name, raw: MappingProxyType(_routes(raw)),
    )
    admin_token: str = knob(
        "",
        "HOOKFLEET_ADMIN_TOKEN",
        "When set, `GET /stats` wants `Authorization: Bearer <token>`.",
        repr=False,
    )
    retention_days: int = knob(
        30,
        "HOOKFLEET_RETENTION_DAYS",
        "Beat's daily run deletes `processed` rows older than this (`0`: never).",
    )
    # Replays share hookfleet.low and the database with live work: a cap keeps a bulk
    # replay from crowding them out (a million events take about half an hour).
    replay_rate_per_s: float = knob(
        500.0,
        "HOOKFLEET_REPLAY_RATE",
        "Events per second `hookfleet replay` enqueues unless `--rate` says (`0`: no cap).",
        parse=rate,
    )
    # A worker running apart from a receiver serves its own metrics.
    worker_metrics_port: int = knob(
        0,
        "HOOKFLEET_WORKER_METRICS_PORT",
        "A worker serves `/metrics` on this port from its main process; only for workers "
        "that share no host with a receiver (one per container).",
        shown="`0` (off)",
    )
    ops_bind: str = knob(
        DEFAULT_OPS_BIND,
        "HOOKFLEET_OPS_BIND",
        "The receiver's internal listener (`host:port`) for `/metrics`, `/readyz` and "
        "`/stats`; the public one (`PORT`) answers only `/webhooks/*` and `/healthz`.",
        parse=lambda name, raw: _bind_address(name, raw),
    )
    # Read by gunicorn's config module (ingest/gunicorn_conf.py) and the Procfile, and
    # declared here so that every entry point refuses a bad one before starting.
    port: int = knob(
        8000,
        "PORT",
        "The receiver's public port (gunicorn binds `0.0.0.0:$PORT`).",
        parse=lambda name, raw: _port(name, raw),
    )
    bind: str = knob(
        "",
        "HOOKFLEET_BIND",
        "gunicorn's full public bind address (`host:port`, `[::1]:port` or `unix:PATH`), "
        "when a port alone is not enough (e.g. `127.0.0.1:8000`).",
        parse=lambda name, raw: _bind_address(name, raw),
        shown="`0.0.0.0:$PORT`",
    )
    web_concurrency: int = knob(
        2,
        "WEB_CONCURRENCY",
        f"Receiver (gunicorn) processes, 1-{MAX_WORKER_CONCURRENCY}.",
        parse=positive,
        at_most=MAX_WORKER_CONCURRENCY,
    )
    web_threads: int = knob(
        4,
        "HOOKFLEET_WEB_THREADS",
        f"Threads per receiver process, 1-{MAX_WEB_THREADS}.",
        parse=positive,
        at_most=MAX_WEB_THREADS,
    )
    worker_concurrency: int = knob(
        2,
        "HOOKFLEET_WORKER_CONCURRENCY",
        f"Processes per Celery worker in the `Procfile`, 1-{MAX_WORKER_CONCURRENCY} "
        "(`hookfleet up --concurrency` sets it).",
        parse=positive,
        at_most=MAX_WORKER_CONCURRENCY,
    )
    # Refused deliveries kept for `hookfleet quarantine release` (ingest.quarantine):
    # every cap is per provider, and a cap of 0 keeps nothing.
    quarantine_max_deliveries: int = knob(
        10_000,
        "HOOKFLEET_QUARANTINE_MAX_DELIVERIES",
        "Refused deliveries kept per provider for `hookfleet quarantine release`; past it "
        "the oldest go (`0`: keep none). Those without a signature get a quarter of this "
        "and of the two caps below. See *Quarantine*.",
        at_most=10_000_000,
    )
    quarantine_max_bytes: int = knob(
        32 * 1024 * 1024,
        "HOOKFLEET_QUARANTINE_MAX_BYTES",
        "Redis bytes (bodies, headers, bookkeeping) the quarantine keeps per provider; past "
        "it the oldest go (`0`: keep none).",
        at_most=64 * 1024**3,
    )
    quarantine_max_body_bytes: int = knob(
        1024 * 1024,
        "HOOKFLEET_QUARANTINE_MAX_BODY_BYTES",
        "A refused delivery with a larger body is kept without it (headers and reason "
        "only; it cannot be released; `0`: no bodies). An eighth of "
        "`HOOKFLEET_QUARANTINE_MAX_BYTES` at most, whatever this says: a few large "
        "bodies must not take the whole budget.",
    )
    quarantine_days: int = knob(
        7,
        "HOOKFLEET_QUARANTINE_DAYS",
        "Refused deliveries older than this are dropped (`0`: keep none).",
        at_most=MAX_TTL_S // 86_400,
    )
    quarantine_rate: int = knob(
        500,
        "HOOKFLEET_QUARANTINE_RATE",
        "Refused deliveries kept per provider per second (a quarter of it for those "
        "without a signature); more are counted and dropped (`0`: keep none). A kept "
        "refusal costs Redis about 85 µs.",
        at_most=100_000,
    )
    # HOOKFLEET_<PROVIDER>_* (see _providers) and the outbound knobs.
    providers: Mapping[str, ProviderSettings] = field(default_factory=lambda: MappingProxyType({}))
    outbound: OutboundSettings = field(default_factory=OutboundSettings)

    def provider(self, name: str) -> ProviderSettings:
        """Settings for ``name``; defaults when nothing was configured for it."""
        return self.providers.get(name, _DEFAULT_PROVIDER)

    def body_limit(self, name: str) -> int:
        """Largest body (bytes) accepted for provider ``name``: its own
        ``HOOKFLEET_<PROVIDER>_MAX_BODY_BYTES``, else ``HOOKFLEET_MAX_BODY_BYTES``, else
        its default (PROVIDER_MAX_BODY_BYTES, else DEFAULT_MAX_BODY_BYTES)."""
        own = self.provider(name).max_body_bytes
        if own is not None:
            return own
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return PROVIDER_MAX_BODY_BYTES.get(name, DEFAULT_MAX_BODY_BYTES)

    @property
    def largest_body_limit(self) -> int:
        """The largest body any provider may send: what a worker and the database must
        hold (MariaDB's max_allowed_packet should be 4x this + 1 MiB, see README)."""
        names = {*PROVIDER_MAX_BODY_BYTES, *self.providers}
        return max([self.body_limit(name) for name in names] + [self.body_limit("")])

    @property
    def quarantine_on(self) -> bool:
        """True when refused deliveries are kept (no quarantine cap is 0)."""
        return all(
            (
                self.quarantine_max_deliveries,
                self.quarantine_max_bytes,
                self.quarantine_days,
                self.quarantine_rate,
            )
        )

    @property
    def quarantine_body_cap(self) -> int:
        """The largest body kept with a refused delivery (bytes): the body cap, and at
        most an eighth of the byte budget, so eight large bodies cannot evict it all."""
        return min(self.quarantine_max_body_bytes, self.quarantine_max_bytes // 8)

    @property
    def ops_port(self) -> str:
        """The ops listener as ingest/listeners.py names a listener: its TCP port, or
        ``unix:PATH`` for a unix socket (``HOOKFLEET_OPS_BIND=unix:PATH``)."""
        if self.ops_bind.startswith("unix:"):
            return self.ops_bind
        return self.ops_bind.rpartition(":")[2]

    @property
    def lease_renew_s(self) -> float:
        """How often a worker renews its lease and sweeps for lapsed ones (seconds)."""
        return max(0.2, self.lease_s / 5)

    @property
    def prefetch_multiplier(self) -> int:
        return self.worker_prefetch_multiplier or 2 * self.batch_size

    @property
    def dedup_on_broker(self) -> bool:
        """True when dedup keys and the queues share one Redis: claim+enqueue is atomic."""
        return _redis_identity(self.redis_url) == _redis_identity(self.broker_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env`` (usually ``os.environ``), every field as declared;
        raises ConfigError for a value that cannot be parsed or breaks an invariant."""
        settings = cls(
            **read_fields(cls, env),
            providers=MappingProxyType(_providers(env)),
            outbound=OutboundSettings.from_env(env),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """The invariants between knobs that no single parser sees; raises ConfigError."""
        if self.lease_s < 1:
            raise ConfigError(
                "HOOKFLEET_LEASE_S must be at least 1: a shorter lease lapses under an "
                "ordinary scheduling hiccup and moves messages that are in good hands"
            )
        if 0 < self.stuck_after_s <= self.task_time_limit_s + self.lease_s:
            raise ConfigError(
                "HOOKFLEET_STUCK_AFTER_S must be above HOOKFLEET_TASK_TIME_LIMIT_S plus "
                "HOOKFLEET_LEASE_S (or 0, off): a message held by a live worker is "
                "running, one held by a dead worker is back within the lease, so "
                "requeueing sooner only duplicates work"
            )
        if self.redis_min_replicas:
            _check_replica_wait(self)


def _check_replica_wait(settings: Settings) -> None:
    # WAIT 0 blocks until enough replicas answer, however long that takes. And the
    # wait must end well inside the socket's read timeout (WAIT may end a timer tick
    # late): a read timing out first is re-sent by redis-py and reported as Redis down.
    wait_ms = settings.redis_replica_wait_ms
    if wait_ms == 0:
        raise ConfigError(
            "HOOKFLEET_REDIS_REPLICA_WAIT_MS must be at least 1 when "
            "HOOKFLEET_REDIS_MIN_REPLICAS is set (0 would wait forever)"
        )
    if wait_ms >= settings.redis_timeout_s * 1000 / 2:
        raise ConfigError(
            f"HOOKFLEET_REDIS_REPLICA_WAIT_MS ({wait_ms}) must be below half of "
            f"HOOKFLEET_REDIS_TIMEOUT_S ({settings.redis_timeout_s} s), or the read times "
            "out before the replicas' answer"
        )


_DEFAULT_PROVIDER = ProviderSettings()


def _knob(cls: type, name: str) -> Knob:
    return dict(knobs(cls))[name]


def _providers(env: Mapping[str, str]) -> dict[str, ProviderSettings]:
    """``HOOKFLEET_<PROVIDER>_<KNOB>`` for every provider named in ``env``: the knobs
    of :class:`ProviderSettings`, read per provider (a provider's name has no ``_``)."""
    prefix = "HOOKFLEET_{provider}_"
    declared = {k.env.removeprefix(prefix): (n, k) for n, k in knobs(ProviderSettings)}
    pattern = re.compile(rf"^HOOKFLEET_([A-Z0-9]+)_({'|'.join(map(re.escape, declared))})$")
    found: dict[str, dict[str, Any]] = {}
    for var in env:
        match = pattern.match(var)
        if match is None:
            continue
        name, declared_knob = declared[match.group(2)]
        value = read(declared_knob, var, env)
        if value is not None:
            found.setdefault(match.group(1).lower(), {})[name] = value
    return {name: ProviderSettings(**values) for name, values in found.items()}


def _phone_regions(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated regions, each one of ``phonenumbers.SUPPORTED_REGIONS`` (case
    and blanks ignored): a region it does not know (``XX``, ``AUT``, ``AT;DE``) reads
    no national number, so every call would be stored without its branch."""
    import phonenumbers

    regions = upper_items(name, raw)
    for region in regions:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"{name} entry {region!r} is not a region phonenumbers knows "
                "(comma-separated ISO 3166 codes, e.g. DE,AT,CH)"
            )
    return regions


def _port(name: str, raw: str) -> int:
    """A TCP port, 1-65535 (0 would be a random port nobody is told about)."""
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port, 1-65535, got {raw!r}")
    return int(raw)


def _bind_address(name: str, raw: str) -> str:
    """A listening address as gunicorn's ``bind`` takes it (gunicorn/util.py
    ``parse_address``): ``host:port``, ``[ipv6]:port`` or ``unix:PATH``; the port
    required (gunicorn would take ``abc`` as host ``abc``, port 8000) and 1-65535."""
    if raw.startswith("unix:") and len(raw) > len("unix:"):
        return raw
    host, sep, port = raw.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if not sep or not host or (":" in host and not bracketed):
        raise ConfigError(
            f"{name} must be host:port, [ipv6]:port or unix:PATH, got {raw!r} (e.g. 127.0.0.1:9807)"
        )
    _port(name, port)
    return raw


LOG_FORMATS = ("auto", "json", "console")


def _log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return value


def _routes(raw: str) -> dict[str, str]:
    """``provider[:event_type]=queue`` pairs, comma-separated."""
    routes = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, queue = entry.partition("=")
        if not sep or not key.strip() or queue.strip() not in QUEUES:
            raise ConfigError(
                f"HOOKFLEET_ROUTES entry {entry!r} must be provider[:event_type]=queue "
                f"with queue one of {', '.join(QUEUES)}"
            )
        routes[key.strip()] = queue.strip()
    return routes


# Read by others than Settings (gunicorn's config module, the Procfile, prometheus_client)
# but listed in the same table, so the README names every variable there is.
PROCESS_VARIABLES = (
    Knob(
        "`PROMETHEUS_MULTIPROC_DIR`",
        "Where every process of this host writes its samples. Set before the process "
        "starts; emptied only when the whole fleet starts (`hookfleet up`, "
        "`hookfleet-metrics.service`).",
        text,
        shown="`$HOOKFLEET_VAR_DIR/metrics`",
    ),
)


def configuration_table() -> str:
    """The README's configuration table (markdown), from the declarations above."""
    rows = [*table_rows(Settings), *table_rows(ProviderSettings), *table_rows(OutboundSettings)]
    rows += [(k.env, k.shown or "—", k.doc) for k in PROCESS_VARIABLES]
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    return "\n".join(lines + [f"| {var} | {default} | {doc} |" for var, default, doc in rows])


def _redis_identity(url: str) -> tuple[str, str, str]:
    """Where a redis://, unix:// or Sentinel URL points (server or Sentinel service, and
    database), for comparison."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("redis+sentinel", "sentinel"):
        # One Sentinel service is one primary, whichever Sentinels are asked about it.
        path = [p for p in parts.path.split("/") if p]
        db = parse_qs(parts.query).get("db", [path[1] if len(path) > 1 else "0"])[0]
        return ("sentinel", path[0] if path else "", db)
    if parts.scheme == "unix":
        return (parts.path, "unix", parse_qs(parts.query).get("db", ["0"])[0])
    return (parts.hostname or "localhost", str(parts.port or 6379), parts.path.lstrip("/") or "0")


def process_settings() -> Settings:
    """This process's settings, from ``HOOKFLEET_*`` in ``os.environ``: read on first
    use, once per process (a forked child reads its own) and again after
    :func:`forget_process_settings`; raises ConfigError. For code with no settings
    handed to it: the workers' runtime, and the phone rule the models apply on every
    write (``HOOKFLEET_PHONE_REGIONS``)."""
    return _process_settings.get()


def forget_process_settings() -> None:
    """Read the environment again on the next :func:`process_settings` (a test that
    changed it, a worker process ending)."""
    _process_settings.forget()


_process_settings: PerProcess[Settings] = PerProcess(lambda: Settings.from_env(os.environ))


if __name__ == "__main__":
    print(configuration_table())

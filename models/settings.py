"""Hookfleet's configuration: one frozen object, built from ``HOOKFLEET_*`` variables.

It lives in ``models`` because that is the one package both the receiver and the
workers may import; it imports nothing of either. Nothing here reads the environment at
import time: callers build a :class:`Settings` with :meth:`Settings.from_env` (tests
pass their own mapping).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

QUEUES = ("hookfleet.high", "hookfleet.default", "hookfleet.low", "hookfleet.provisioning")

_PROVIDER_VAR = re.compile(
    r"^HOOKFLEET_([A-Z0-9]+)_(VERIFY|SECRETS|TOLERANCE_S|DEDUP_TTL_S|MAX_BODY_BYTES)$"
)
_FALSY = {"0", "off", "false", "no"}
_TRUTHY = {"1", "on", "true", "yes"}


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
PROVIDER_MAX_BODY_BYTES = MappingProxyType({"retell": 6 * 1024 * 1024})


class ConfigError(ValueError):
    """A ``HOOKFLEET_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class ProviderSettings:
    """What one provider may configure: ``HOOKFLEET_<PROVIDER>_*``."""

    verify: bool = True
    secrets: tuple[str, ...] = ()
    tolerance_s: int = 300
    dedup_ttl_s: int = 24 * 3600
    # HOOKFLEET_<PROVIDER>_MAX_BODY_BYTES; None: see Settings.body_limit().
    max_body_bytes: int | None = None


@dataclass(frozen=True)
class OutboundSettings:
    """Calling out to Retell and Cal.com when provisioning (workers.outbound)."""

    retell_api_url: str = "https://api.retellai.com"
    # Retell signs webhooks with the API key, so the first webhook secret is the default.
    retell_api_key: str = ""
    retell_voice_id: str = "11labs-Adrian"
    retell_webhook_url: str = ""
    calcom_api_url: str = "https://api.cal.com"
    calcom_api_key: str = ""
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    breaker_fail_max: int = 5
    breaker_reset_s: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OutboundSettings:
        retell_secrets = [
            s.strip() for s in env.get("HOOKFLEET_RETELL_SECRETS", "").split(",") if s.strip()
        ]
        return cls(
            retell_api_url=(env.get("HOOKFLEET_RETELL_API_URL") or cls.retell_api_url).rstrip("/"),
            retell_api_key=env.get("HOOKFLEET_RETELL_API_KEY")
            or (retell_secrets[0] if retell_secrets else ""),
            retell_voice_id=env.get("HOOKFLEET_RETELL_VOICE_ID") or cls.retell_voice_id,
            retell_webhook_url=env.get("HOOKFLEET_RETELL_WEBHOOK_URL", ""),
            calcom_api_url=(env.get("HOOKFLEET_CALCOM_API_URL") or cls.calcom_api_url).rstrip("/"),
            calcom_api_key=env.get("HOOKFLEET_CALCOM_API_KEY", ""),
            timeout_s=_float(env, "HOOKFLEET_OUTBOUND_TIMEOUT_S", cls.timeout_s),
            retries=max(1, _int(env, "HOOKFLEET_OUTBOUND_RETRIES", cls.retries)),
            backoff_s=_float(env, "HOOKFLEET_OUTBOUND_BACKOFF_S", cls.backoff_s),
            breaker_fail_max=max(1, _int(env, "HOOKFLEET_BREAKER_FAIL_MAX", cls.breaker_fail_max)),
            breaker_reset_s=_int(env, "HOOKFLEET_BREAKER_RESET_S", cls.breaker_reset_s),
        )


@dataclass(frozen=True)
class Settings:
    """Every knob Hookfleet has. See the README's configuration table."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///var/hookfleet.db"

    db_pool_size: int = 5
    db_max_overflow: int = 10
    db_pool_timeout_s: float = 10.0
    db_pool_recycle_s: int = 1800
    db_pool_pre_ping: bool = True

    # HOOKFLEET_MAX_BODY_BYTES: one limit for every provider without its own variable;
    # None (unset): each provider's default (PROVIDER_MAX_BODY_BYTES, else 1 MiB).
    max_body_bytes: int | None = None
    redis_timeout_s: float = 2.0
    # With a replicated Redis: answer 202 only once this many replicas confirm the
    # write (Redis WAIT), so a failover cannot lose an accepted delivery. 0: off.
    redis_min_replicas: int = 0
    # How long WAIT may take. A healthy replica confirms within a network round trip
    # (WAIT asks it at once), so 200 ms rides out a replica's fork or fsync stall and
    # Redis's timer tick (100 ms at hz 10) while keeping a lagging replica's cost per
    # delivery to a fifth of a second, far inside any provider's delivery timeout.
    redis_replica_wait_ms: int = 200
    retry_after_s: int = 5
    # Past this many waiting messages a queue refuses new asynchronous deliveries (503):
    # providers retry later instead of Redis growing without bound. 0 disables it.
    shed_queue_depth: int = 100_000

    # A consuming worker process holds a lease in Redis for this long, renewed five
    # times per period while it lives; the messages of a worker whose lease lapsed
    # (killed, frozen, cut off) go back to their queues within about lease_s plus one
    # sweep (lease_s / 5). A live worker keeps its messages however long tasks run.
    lease_s: float = 8.0
    # The last resort for messages no lease covers (taken by a stock kombu consumer):
    # back after this long unacknowledged. Not tied to the task time limit any more.
    visibility_timeout_s: int = 3 * 3600
    task_time_limit_s: int = 300
    # Workers record and apply deliveries in batches of up to batch_size (or what came
    # within batch_wait_ms of the first): two commits per batch instead of one per event.
    batch_size: int = 50
    batch_wait_ms: int = 10
    # ...and of at most batch_bytes of messages (a single larger one goes alone): what a
    # pool process decodes and applies at once, so what its memory follows. 0: no bound.
    batch_bytes: int = 8 * 1024 * 1024
    # A pool process whose peak resident memory passed this after a batch is replaced by
    # a fresh one (Celery's worker_max_memory_per_child; billiard reads ru_maxrss):
    # CPython keeps the peak of a batch of long calls otherwise. The figure counts the
    # pages a child shares with the main process from its fork, so it must stay well
    # above the main process's size, or children are replaced after every batch.
    # 0: never replaced.
    worker_max_memory_mb: int = 1024
    # Messages each worker process reserves ahead; 0: twice the batch size, so one
    # batch fills while the last one runs.
    worker_prefetch_multiplier: int = 0
    # The retry budget for transient failures: quick tries inside the task, then Celery
    # retries with growing countdowns. Spent, the event is dead (a dead letter).
    db_retry_attempts: int = 4
    task_max_retries: int = 8
    # SIGTERM gives running tasks this long before they are cancelled and requeued.
    worker_soft_shutdown_s: float = 20.0
    # A ``received`` row untouched this long lost its message: beat requeues it
    # (workers.sweeper). Must exceed the task time limit; 0 turns the sweep off.
    stuck_after_s: int = 1800

    # Retell's inbound call waits on us while the phone rings: answer within this, or
    # answer without an override.
    inbound_budget_ms: int = 300
    inbound_cache_ttl_s: int = 60
    phone_regions: tuple[str, ...] = ("DE", "AT", "CH")

    log_level: str = "INFO"
    var_dir: str = "var"
    # Operations: GET /stats wants this bearer token when set; processed webhook_events
    # older than retention_days are pruned daily (0: never); a worker running apart from
    # a receiver serves its metrics on worker_metrics_port (0: off).
    admin_token: str = field(default="", repr=False)
    retention_days: int = 30
    worker_metrics_port: int = 0
    # The receiver's internal listener for /metrics, /readyz and /stats (``host:port``;
    # loopback by default). The public one (PORT) answers only /webhooks/* and /healthz.
    ops_bind: str = DEFAULT_OPS_BIND
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
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
    def ops_port(self) -> str:
        """The ops listener's port, as a WSGI server reports it in ``SERVER_PORT``."""
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
        """Build settings from ``env`` (usually ``os.environ``); raises ConfigError."""
        redis_url = env.get("HOOKFLEET_REDIS_URL") or cls.redis_url
        settings = cls(
            redis_url=redis_url,
            broker_url=env.get("HOOKFLEET_BROKER_URL") or redis_url,
            database_url=env.get("HOOKFLEET_DATABASE_URL") or cls.database_url,
            db_pool_size=_int(env, "HOOKFLEET_DB_POOL_SIZE", cls.db_pool_size),
            db_max_overflow=_int(env, "HOOKFLEET_DB_MAX_OVERFLOW", cls.db_max_overflow),
            db_pool_timeout_s=_float(env, "HOOKFLEET_DB_POOL_TIMEOUT_S", cls.db_pool_timeout_s),
            db_pool_recycle_s=_int(env, "HOOKFLEET_DB_POOL_RECYCLE_S", cls.db_pool_recycle_s),
            db_pool_pre_ping=_bool(env, "HOOKFLEET_DB_POOL_PRE_PING", cls.db_pool_pre_ping),
            max_body_bytes=_optional_int(env, "HOOKFLEET_MAX_BODY_BYTES"),
            redis_timeout_s=_float(env, "HOOKFLEET_REDIS_TIMEOUT_S", cls.redis_timeout_s),
            redis_min_replicas=_int(env, "HOOKFLEET_REDIS_MIN_REPLICAS", cls.redis_min_replicas),
            redis_replica_wait_ms=_int(
                env, "HOOKFLEET_REDIS_REPLICA_WAIT_MS", cls.redis_replica_wait_ms
            ),
            retry_after_s=_int(env, "HOOKFLEET_RETRY_AFTER_S", cls.retry_after_s),
            shed_queue_depth=_int(env, "HOOKFLEET_SHED_QUEUE_DEPTH", cls.shed_queue_depth),
            lease_s=_float(env, "HOOKFLEET_LEASE_S", cls.lease_s),
            visibility_timeout_s=_int(
                env, "HOOKFLEET_VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s
            ),
            task_time_limit_s=_int(env, "HOOKFLEET_TASK_TIME_LIMIT_S", cls.task_time_limit_s),
            db_retry_attempts=max(
                1, _int(env, "HOOKFLEET_DB_RETRY_ATTEMPTS", cls.db_retry_attempts)
            ),
            task_max_retries=_int(env, "HOOKFLEET_TASK_MAX_RETRIES", cls.task_max_retries),
            worker_soft_shutdown_s=_float(
                env, "HOOKFLEET_WORKER_SOFT_SHUTDOWN_S", cls.worker_soft_shutdown_s
            ),
            batch_size=max(1, _int(env, "HOOKFLEET_BATCH_SIZE", cls.batch_size)),
            batch_wait_ms=max(0, _int(env, "HOOKFLEET_BATCH_WAIT_MS", cls.batch_wait_ms)),
            batch_bytes=max(0, _int(env, "HOOKFLEET_BATCH_BYTES", cls.batch_bytes)),
            worker_max_memory_mb=max(
                0, _int(env, "HOOKFLEET_WORKER_MAX_MEMORY_MB", cls.worker_max_memory_mb)
            ),
            worker_prefetch_multiplier=_int(
                env, "HOOKFLEET_WORKER_PREFETCH", cls.worker_prefetch_multiplier
            ),
            stuck_after_s=_int(env, "HOOKFLEET_STUCK_AFTER_S", cls.stuck_after_s),
            inbound_budget_ms=_int(env, "HOOKFLEET_INBOUND_BUDGET_MS", cls.inbound_budget_ms),
            inbound_cache_ttl_s=_int(env, "HOOKFLEET_INBOUND_CACHE_TTL_S", cls.inbound_cache_ttl_s),
            phone_regions=tuple(
                r.strip().upper()
                for r in (env.get("HOOKFLEET_PHONE_REGIONS") or "DE,AT,CH").split(",")
                if r.strip()
            ),
            log_level=(env.get("HOOKFLEET_LOG_LEVEL") or cls.log_level).upper(),
            var_dir=env.get("HOOKFLEET_VAR_DIR") or cls.var_dir,
            admin_token=env.get("HOOKFLEET_ADMIN_TOKEN", "").strip(),
            retention_days=_int(env, "HOOKFLEET_RETENTION_DAYS", cls.retention_days),
            worker_metrics_port=_int(env, "HOOKFLEET_WORKER_METRICS_PORT", 0),
            ops_bind=env.get("HOOKFLEET_OPS_BIND") or DEFAULT_OPS_BIND,
            routes=MappingProxyType(_routes(env.get("HOOKFLEET_ROUTES", ""))),
            providers=MappingProxyType(_providers(env)),
            outbound=OutboundSettings.from_env(env),
        )
        if settings.lease_s < 1:
            raise ConfigError(
                "HOOKFLEET_LEASE_S must be at least 1: a shorter lease lapses under an "
                "ordinary scheduling hiccup and moves messages that are in good hands"
            )
        if 0 < settings.stuck_after_s <= settings.task_time_limit_s + settings.lease_s:
            raise ConfigError(
                "HOOKFLEET_STUCK_AFTER_S must be above HOOKFLEET_TASK_TIME_LIMIT_S plus "
                "HOOKFLEET_LEASE_S (or 0, off): a message held by a live worker is "
                "running, one held by a dead worker is back within the lease, so "
                "requeueing sooner only duplicates work"
            )
        if settings.redis_min_replicas:
            _check_replica_wait(settings)
        return settings


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


def _providers(env: Mapping[str, str]) -> dict[str, ProviderSettings]:
    found: dict[str, dict[str, object]] = {}
    for var, raw in env.items():
        match = _PROVIDER_VAR.match(var)
        if match is None:
            continue
        name, knob = match.group(1).lower(), match.group(2)
        values = found.setdefault(name, {})
        if knob == "VERIFY":
            values["verify"] = _bool(env, var, True)
        elif knob == "SECRETS":
            values["secrets"] = tuple(s.strip() for s in raw.split(",") if s.strip())
        elif knob == "TOLERANCE_S":
            values["tolerance_s"] = _int(env, var, 300)
        elif knob == "MAX_BODY_BYTES":
            values["max_body_bytes"] = _optional_int(env, var)
        else:
            values["dedup_ttl_s"] = _int(env, var, 24 * 3600)
    return {name: ProviderSettings(**values) for name, values in found.items()}  # type: ignore[arg-type]


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


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    """A whole number of at least 1 when set; None when unset or empty."""
    if not env.get(name, "").strip():
        return None
    value = _int(env, name, 0)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUTHY:
        return True
    if raw in _FALSY:
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


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

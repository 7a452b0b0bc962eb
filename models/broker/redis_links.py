"""Redis clients that survive a failover, a restart and a silently dropped connection.

Every Redis client of the receiver and the operator tools is built by
:func:`redis_client`. Its connections add three things to redis-py's:

- **A failover reply drops the connection.** A primary demoted in place (``REPLICAOF``,
  what Sentinel and managed Redis do) keeps its clients' sockets open and answers every
  write with ``-READONLY``; a replica cut off from its primary answers ``-MASTERDOWN``, a
  node still loading its dataset ``-LOADING``, a client blocked while the node changed
  role ``-UNBLOCKED``. These are error replies on healthy sockets, so a client that
  redials only on a *closed* connection keeps asking the old node forever. Here such a
  reply disconnects the connection and raises :class:`FailoverReply`, a
  ``redis.ConnectionError``: redis-py's retry (and the receiver's lane) dials again,
  reaching the new primary (a moved DNS name or proxy, or whatever Sentinel now names).
- **Sentinel URLs.** ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
  (``sentinel://`` too) asks the Sentinels for the primary of ``service`` on every dial,
  through redis-py's :class:`redis.sentinel.Sentinel`.
- **Half-open connections are noticed.** A connection idle for
  :data:`HEALTH_CHECK_S` is pinged before use (a read with the socket timeout), and TCP
  keepalive with short intervals plus ``TCP_USER_TIMEOUT`` makes the kernel give up on a
  peer that vanished without FIN or RST (a NAT or load balancer forgetting the flow).

Error codes: redis-py's ``_parsers/base.py`` (``EXCEPTION_CLASSES``); Redis's own texts:
``src/server.c`` (``READONLY You can't write against a read only replica.``,
``MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.``,
``LOADING Redis is loading the dataset in memory``) and ``src/blocked.c``
(``UNBLOCKED force unblock from blocking operation, instance state changed (master ->
replica?)``).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import BusyLoadingError, MasterDownError, ReadOnlyError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

log = logging.getLogger("hookfleet.redis")

#: An idle connection is pinged before its next command after this many seconds.
HEALTH_CHECK_S = 5
#: TCP keepalive: first probe after this many idle seconds, then every interval, given
#: up after the count; and unacknowledged data is given up on after the user timeout.
#: A peer that vanished is noticed within about 5 + 2 x 3 = 11 s.
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000

SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
#: Error codes that mean "this node is not (or no longer) the writable primary".
FAILOVER_CODES = ("READONLY", "MASTERDOWN", "LOADING", "UNBLOCKED")


class FailoverReply(redis.ConnectionError):
    """The node answered like a demoted, cut-off or loading one; the connection was
    dropped, and a new dial may reach the current primary. ``code`` is Redis's error
    code (``READONLY``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}".strip())
        self.code = code


def failover_code(error: BaseException) -> str | None:
    """The failover error code ``error`` carries (``READONLY``, ``MASTERDOWN``,
    ``LOADING``, ``UNBLOCKED``), or None for any other error: an out-of-memory or a
    ``NOREPLICAS`` reply comes from the right node, and dialling again would not help."""
    if isinstance(error, FailoverReply):
        return error.code
    if isinstance(error, ReadOnlyError):
        return "READONLY"
    if isinstance(error, MasterDownError):
        return "MASTERDOWN"
    if isinstance(error, BusyLoadingError):
        return "LOADING"
    if isinstance(error, ResponseError):
        code = str(error).split(" ", 1)[0]
        return code if code in FAILOVER_CODES else None
    return None


class _FailoverAware(AbstractConnection):
    """Mixed into a redis-py connection class: a failover reply drops the connection."""

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        return super().read_response(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._read(*args, **kwargs)
        except (ResponseError, BusyLoadingError) as error:
            code = failover_code(error)
            if code is None:
                raise
            self.disconnect()
            address = f"{getattr(self, 'host', '?')}:{getattr(self, 'port', '?')}"
            log.warning(
                "redis failover reply: connection dropped, dialling again",
                extra={"code": code, "address": address},
            )
            raise FailoverReply(code, str(error)) from None


class FailoverAwareConnection(_FailoverAware, redis.Connection):
    pass


class FailoverAwareSSLConnection(_FailoverAware, redis.SSLConnection):
    pass


class FailoverAwareUnixConnection(_FailoverAware, redis.UnixDomainSocketConnection):
    pass


class FailoverAwareSentinelConnection(_FailoverAware, SentinelManagedConnection):
    def _connect(self) -> Any:
        # redis-py asks the Sentinels only in connect(); a command sent on a dropped
        # connection (a retry after a failover reply) dials the last address it knew,
        # the demoted node. Every dial asks for the primary here.
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        # Past redis-py's own Sentinel handling, which turns READONLY into a plain
        # ConnectionError: as a FailoverReply it is retried at once, like the others.
        # Dialling again asks the Sentinels for the primary (its connect()).
        return redis.Connection.read_response(self, *args, **kwargs)


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed Sentinel URL: where the Sentinels are, which service, which database."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``redis+sentinel://[[user]:password@]h1:26379[,h2:26379]/service[/db]``; the
    database may also be given as ``?db=N``. Raises ValueError on anything else."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: scheme {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host_port in filter(None, hosts.split(",")):
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "")
        sentinels.append((host or host_port, int(port or 26379)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ValueError("a Sentinel URL names at least one host:port and the service name")
    db = parse_qs(parts.query).get("db", [path[1] if len(path) > 1 else "0"])[0]
    return SentinelAddress(
        sentinels=tuple(sentinels),
        service=path[0],
        db=int(db),
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def keepalive_options() -> dict[int, int]:
    """TCP keepalive and user timeout options for this platform (Linux has all)."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE_S,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": USER_TIMEOUT_MS,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def retry_after_failover(patience_s: float = 0.0) -> Retry:
    """Dial again after a failover reply: the node refused the command, so sending it to
    the new primary cannot apply it twice. Never after a timeout or a broken read, where
    the first send may have been applied.

    ``patience_s`` 0: once, at once (a request with a budget). Otherwise retries with
    growing pauses (0.2, 0.4, 0.8, 1, ... s) until about ``patience_s`` has passed, riding
    out the moment in which the address still names the demoted node."""
    if patience_s <= 0:
        return Retry(NoBackoff(), 1, supported_errors=(FailoverReply,))
    retries, waited = 0, 0.0
    while waited < patience_s:
        waited += min(1.0, 0.1 * 2 ** (retries + 1))  # redis-py counts failures from 1
        retries += 1
    backoff = ExponentialBackoff(cap=1.0, base=0.1)
    return Retry(backoff, retries, supported_errors=(FailoverReply,))


def redis_client(url: str, *, timeout_s: float, decode_responses: bool = False) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://`` or a Sentinel URL)
    whose every command and connect gives up after ``timeout_s`` seconds, and whose
    connections are dropped on a failover reply (see the module docstring). Opens no
    connection until first used."""
    options: dict[str, Any] = {
        "retry": retry_after_failover(),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": HEALTH_CHECK_S,
        "decode_responses": decode_responses,
    }
    scheme = urlsplit(url).scheme
    if scheme != "unix":
        options["socket_keepalive"] = True
        options["socket_keepalive_options"] = keepalive_options()
    if scheme in SENTINEL_SCHEMES:
        address = parse_sentinel_url(url)
        sentinel = Sentinel(
            list(address.sentinels),
            sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
        )
        return sentinel.master_for(
            address.service,
            connection_class=FailoverAwareSentinelConnection,
            db=address.db,
            username=address.username,
            password=address.password,
            **options,
        )
    connection_class = {
        "rediss": FailoverAwareSSLConnection,
        "unix": FailoverAwareUnixConnection,
    }.get(scheme, FailoverAwareConnection)
    return redis.Redis.from_url(url, connection_class=connection_class, **options)

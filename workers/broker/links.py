"""Hookfleet's broker transport as the workers dial it: following a Redis failover.

:mod:`workers.broker.transport` decides how messages are taken and settled; this module only
changes which redis-py connection classes kombu dials with, so the workers survive what
the receiver survives (:mod:`models.broker.redis_links`):

- **A failover reply is a lost connection.** A primary demoted in place answers the
  pop script and the acks with ``-READONLY`` (and a blocked wait with ``-UNBLOCKED``) on
  sockets that stay open. Stock kombu raises those as ``ResponseError``, which Celery
  takes for an unrecoverable error: the worker exits ("Unrecoverable error:
  ReadOnlyError"). Raised as :class:`models.broker.redis_links.FailoverReply`, a
  ``redis.ConnectionError``, they are among kombu's connection errors: Celery logs one
  warning, dials again and reaches the new primary.
- **Sentinel.** kombu serves ``sentinel://`` with its own ``SentinelChannel``
  (kombu/transport/redis.py), which asks the Sentinels for the primary on every dial;
  :class:`SentinelTransport` puts it over Hookfleet's channel.

Selected by :func:`workers.celery_app.kombu_broker`.
"""

from __future__ import annotations

from typing import Any, cast

from kombu.transport import redis as kredis
from redis.sentinel import SentinelManagedConnection

from models.broker.redis_links import (
    FailoverAwareConnection,
    FailoverAwareSentinelConnection,
    FailoverAwareSSLConnection,
    retry_after_failover,
)
from workers.broker import transport as hookfleet

#: How long an ack or publish refused by a demoted node is retried (with growing pauses)
#: while the address still names it: the main loop waits, the message stays settled.
FAILOVER_PATIENCE_S = 3.0


class _RetriesAfterFailover(kredis.Channel):
    """kombu's connection parameters plus retries after a failover reply: an ack or a
    publish the demoted node refused is sent again, to the new primary, instead of
    failing ("Couldn't ack", CRITICAL) and leaving the message to come back later."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        params["retry"] = retry_after_failover(patience_s=FAILOVER_PATIENCE_S)
        return params


class Channel(_RetriesAfterFailover, hookfleet.Channel):
    connection_class = FailoverAwareConnection
    connection_class_ssl = FailoverAwareSSLConnection


class Transport(hookfleet.Transport):
    Channel = Channel


class _SentinelSSLConnection(FailoverAwareSentinelConnection, kredis.SentinelManagedSSLConnection):
    pass


class SentinelChannel(_RetriesAfterFailover, kredis.SentinelChannel, hookfleet.Channel):
    """kombu's Sentinel pool over Hookfleet's channel, with failover-aware connections."""

    # (cast: both are SentinelManaged* subclasses; mypy does not match them against
    # the two bases' differing declarations of these attributes)
    connection_class = cast(type[SentinelManagedConnection], FailoverAwareSentinelConnection)
    connection_class_ssl = cast(type[kredis.SentinelManagedSSLConnection], _SentinelSSLConnection)


class SentinelTransport(hookfleet.Transport):
    # kombu_broker always writes each Sentinel's port, so the default port (Redis's)
    # is never used for a Sentinel.
    Channel = SentinelChannel

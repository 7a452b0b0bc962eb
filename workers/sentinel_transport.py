"""Hookfleet's Redis transport behind Redis Sentinel.

kombu serves ``sentinel://`` URLs with its own ``SentinelChannel``, a subclass of its
plain Redis channel that asks the Sentinels for the current primary on every dial
(kombu/transport/redis.py). Hookfleet consumes with its own channel
(:mod:`workers.transport`); this module puts the two together, Sentinel's connection
handling on top of Hookfleet's consuming, so a failover changes where the workers dial
and nothing about how they take and settle messages. Selected by
:func:`workers.celery_app.kombu_broker` for a ``redis+sentinel://`` broker URL.
"""

from __future__ import annotations

from kombu.transport import redis as kredis

from workers import transport as hookfleet


class Channel(kredis.SentinelChannel, hookfleet.Channel):
    """kombu's Sentinel pool and connection classes over Hookfleet's channel."""


class Transport(hookfleet.Transport):
    # kombu_broker always writes each Sentinel's port, so the default port (Redis's)
    # is never used for a Sentinel.
    Channel = Channel

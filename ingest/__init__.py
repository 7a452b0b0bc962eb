"""The HTTP edge: verify, claim, enqueue, answer. ``create_app()`` is the entry point.

Never imports worker code: jobs are queued by task name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import redis
from flask import Flask

from models.settings import Settings


def create_app(settings: Settings | Mapping[str, str] | None = None) -> Flask:
    """Build the receiver. ``settings`` defaults to ``Settings.from_env(os.environ)``;
    a mapping is read as environment variables. Opens no connection."""
    from ingest.dedup import DedupGate
    from ingest.errors import register_error_handlers
    from ingest.fastpath import ReceiverApp
    from ingest.host_header import init_app as init_host_header
    from ingest.inbound import InboundDirectory, cache_client
    from ingest.inbound_record import InboundRecorder
    from ingest.metrics import init_app as init_metrics
    from ingest.providers import REGISTRY
    from ingest.quarantine import quarantine_for
    from ingest.routing import Router
    from ingest.views import bp
    from models import tracing
    from models.broker.redis_links import redis_client
    from models.logs import configure_logging

    if settings is None:
        settings = Settings.from_env(os.environ)
    elif not isinstance(settings, Settings):
        settings = Settings.from_env(settings)
    for provider in REGISTRY.values():
        provider.check_settings(settings.provider(provider.name))

    configure_logging(settings.log_level, settings.log_format)
    tracing.start("hookfleet-receiver")
    app: Flask = ReceiverApp("hookfleet")
    # werkzeug would answer /webhooks//stripe with a 308 HTML redirect (Flask passes
    # routing redirects through its error handlers untouched); a path is matched as
    # written, so a doubled slash is a JSON 404 like any unknown path.
    app.url_map.merge_slashes = False
    # No automatic OPTIONS answer (a 200 with an Allow header): a route answers its own
    # methods, anything else is a JSON 405 (README *Routing*).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["HOOKFLEET_SETTINGS"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def client(url: str) -> redis.Redis:
        # Dropped and dialled again on a failover reply; Sentinel URLs too.
        return redis_client(url, timeout_s=settings.redis_timeout_s)

    dedup = client(settings.redis_url)
    broker = dedup if settings.dedup_on_broker else client(settings.broker_url)
    app.extensions["hookfleet_gate"] = DedupGate(
        dedup,
        broker,
        same_server=settings.dedup_on_broker,
        min_replicas=settings.redis_min_replicas,
        replica_wait_ms=settings.redis_replica_wait_ms,
    )
    app.extensions["hookfleet_router"] = Router(settings.routes)
    directory = InboundDirectory(settings, cache_client(settings))
    app.extensions["hookfleet_inbound"] = directory
    # An inline answer's record, durable before the answer: Redis or the database.
    app.extensions["hookfleet_inbound_record"] = InboundRecorder(
        settings, directory.redis, app.extensions["hookfleet_gate"]
    )
    app.extensions["hookfleet_quarantine"] = quarantine_for(settings)
    register_error_handlers(app)
    app.register_blueprint(bp)
    init_host_header(app)  # after bp's correlation id, before the listeners' 404s
    init_metrics(app, settings)
    return app

"""The two comparison receivers, run by the same gunicorn settings as Hookfleet:
``gunicorn -c python:ingest.gunicorn_conf 'tests.bench.apps:ceiling_app()'``.

- :func:`ceiling_app` does no work at all: the most any Flask receiver can answer on
  this machine with these gunicorn settings.
- :func:`usual_recipe_app` is what most teams write, and what Hookfleet is compared
  with: verify the signature, ``SET NX`` the idempotency key, ``send_task`` one Celery
  message, answer. It verifies with the same function as Hookfleet, so the comparison
  is about everything after verification.
- :func:`without_claim_app` is a diagnostic, not a mode Hookfleet has: the shipped
  receiver with the Redis claim replaced by an answer of "accepted" (nothing is queued).
  Against the real receiver in the same run it shows what the one Redis round trip
  per delivery costs, and against the ceiling what everything else costs.
- :func:`flask_route_app` is a diagnostic too: the shipped receiver with its
  deliveries served by Flask's route instead of the fast path (ingest/fastpath.py),
  as before that existed; against the real receiver in the same run it shows what
  Flask's request machinery costs per delivery.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from flask import Flask, Response, jsonify, request

from ingest import create_app
from ingest.dedup import Admission
from ingest.fastpath import ReceiverApp
from ingest.providers.base import Delivery, VerificationError
from ingest.providers.standard import verify_standard_signature
from models.contract import PROCESS_EVENT
from models.settings import Settings

USUAL_QUEUE = "bench.usual"


class _NoClaim:
    """A dedup gate that admits everything and touches nothing (diagnostic only)."""

    def admit(self, *_args: object, **_kwargs: object) -> Admission:
        return Admission(accepted=True)


def ceiling_app() -> Flask:
    """202 for any POST to /webhooks/<provider>, after reading the body."""
    app = Flask("bench-ceiling")

    @app.post("/webhooks/<provider>")
    def receive(provider: str) -> tuple[str, int]:
        request.get_data()
        return "", 202

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def usual_recipe_app() -> Flask:
    """Standard Webhooks only: verify, ``SET key 1 NX EX ttl``, ``send_task``, 202."""
    settings = Settings.from_env(os.environ)
    standard = settings.provider("standard")
    cache = redis.Redis.from_url(settings.redis_url)
    celery = Celery("usual-recipe", broker=settings.broker_url, set_as_current=False)
    celery.conf.update(
        task_ignore_result=True,
        task_default_queue=USUAL_QUEUE,
        broker_connection_retry_on_startup=True,
    )
    app = Flask("bench-usual-recipe")

    @app.post("/webhooks/standard")
    def receive() -> tuple[Response, int]:
        body = request.get_data()
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            verify_standard_signature(
                Delivery(body, headers, time.time()), standard.secrets, standard.tolerance_s
            )
        except VerificationError as error:
            return jsonify(status=error.code), 401
        event = request.get_json()
        webhook_id = headers["webhook-id"]
        if not cache.set(f"webhook:{webhook_id}", 1, nx=True, ex=standard.dedup_ttl_s):
            return jsonify(status="duplicate", event_id=webhook_id), 200
        celery.send_task(
            PROCESS_EVENT,
            kwargs={
                "provider": "standard",
                "event_id": webhook_id,
                "event_type": event.get("type", ""),
                "payload": body.decode(),
            },
            queue=USUAL_QUEUE,
        )
        return jsonify(status="accepted", event_id=webhook_id), 202

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def without_claim_app() -> Flask:
    """The shipped receiver minus its Redis round trip: every delivery is "accepted"
    and nothing is queued. For the benchmark's breakdown only."""
    app = create_app()
    app.extensions["hookfleet_gate"] = _NoClaim()
    return app


def flask_route_app() -> Flask:
    """The shipped receiver with every delivery going through Flask's route (the same
    answers; Flask's request context, routing and hooks around them)."""
    app = create_app()
    assert isinstance(app, ReceiverApp)
    app.fast_path = False
    return app

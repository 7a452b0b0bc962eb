"""Hookfleet's Celery app on kombu's stock Redis transport: what a plain
``celery worker`` without workers.broker.transport is (no single-step pop, no leases).

``celery -A tests.stock_worker worker -Q hookfleet.high`` (tests/faults/test_leases.py).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.celery_app import app

__all__ = ["app"]


@app.on_after_configure.connect
def _stock_transport(sender: Celery, **_: Any) -> None:
    sender.conf.broker_transport = "redis"

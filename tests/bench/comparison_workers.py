"""The two comparison workers, run by the same ``celery worker`` settings as Hookfleet's
(``workers.celery_app.celery_config``: acks late, prefetch, pool, concurrency).

Both register the task *name* the receiver queues (``hookfleet.process_event``), so they
drain exactly the messages Hookfleet's worker would:

- ``noop_app``: the task does nothing. What a Celery worker costs per message on this
  machine: the ceiling any Celery-based worker can reach.
- ``naive_app``: what most teams write: one task per event, one INSERT and one commit
  per event (a duplicate's unique-key error is rolled back and ignored).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.contract import PROCESS_EVENT
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import Settings
from workers.celery_app import celery_config

noop_app = Celery("bench-noop", set_as_current=False)
naive_app = Celery("bench-naive", set_as_current=False)


@noop_app.on_configure.connect
@naive_app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(Settings.from_env(os.environ)))


@noop_app.task(name=PROCESS_EVENT, shared=False)
def noop(**_: Any) -> None:
    """Nothing: the cost of one Celery message and nothing else."""


_sessions: tuple[int, sessionmaker[Session]] | None = None


def _session_factory() -> sessionmaker[Session]:
    global _sessions
    if _sessions is None or _sessions[0] != os.getpid():
        _sessions = (os.getpid(), make_sessionmaker(make_engine(Settings.from_env(os.environ))))
    return _sessions[1]


@naive_app.task(name=PROCESS_EVENT, shared=False)
def naive_insert(**kwargs: Any) -> None:
    """One row, one commit."""
    with _session_factory()() as session:
        session.add(
            WebhookEvent(
                provider=kwargs["provider"],
                event_id=kwargs["event_id"],
                event_type=kwargs.get("event_type", ""),
                queue=kwargs.get("queue", ""),
                correlation_id=kwargs.get("correlation_id", ""),
                status=EventStatus.PROCESSED,
                attempts=1,
                headers=dict(kwargs.get("headers") or {}),
                payload=kwargs["payload"],
                received_at=datetime.fromisoformat(kwargs["received_at"]),
                processed_at=utcnow(),
            )
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()

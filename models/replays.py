"""``replay_runs``: one row per ``hookfleet replay``, so an interrupted one can resume.

A run replays the events its selection matched among ``webhook_events`` rows with
``id <= up_to_id`` (the highest id when it started: events arriving later are not
chased), in ascending id order. ``cursor`` is the highest ``webhook_events.id`` whose
replay is on the queue; it only moves after the broker took the batch, and the broker
keeps its own copy of it (``token``, see ``workers.broker.replay_push``), so a batch
sent again after a crash is not enqueued twice.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, EventId, PortableJSON, UTCDateTime, status_column, utcnow


class RunStatus(enum.StrEnum):
    RUNNING = "running"  # or its process died: a resume continues it
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM
    FINISHED = "finished"


class ReplayRun(Base):
    """A replay: what it selects (``selection``, as ``Selection.to_json`` writes it),
    how far it got and what it replayed. ``counts`` maps ``"provider/event_type"`` to
    events replayed; ``estimated`` is what matched when the run started."""

    __tablename__ = "replay_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    selection: Mapped[dict[str, Any]] = mapped_column(PortableJSON())
    up_to_id: Mapped[int] = mapped_column(EventId)
    cursor: Mapped[int] = mapped_column(EventId, default=0)
    rate_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[RunStatus] = mapped_column(status_column(RunStatus), default=RunStatus.RUNNING)
    estimated: Mapped[int] = mapped_column(Integer, default=0)
    replayed: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, int]] = mapped_column(PortableJSON(), default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    interrupted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    def __repr__(self) -> str:
        return f"<ReplayRun {self.id} {self.status.value} cursor={self.cursor}>"

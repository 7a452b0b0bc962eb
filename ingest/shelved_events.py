"""An answered inbound call's record kept in the database while Redis cannot take it.

The row is what a worker would have written on taking the message
(workers/pipeline/record.py ``record_batch``, step 1): a ``webhook_events`` row,
``received``, with the payload, queue, headers and correlation id of the queued message.
What brings it to a worker is whichever comes first:

- the late record itself, once Redis takes it (ingest/late_records.py): the worker finds
  the row ``received``, claims it and applies it, once;
- the stuck-work sweep (workers/recovery/sweeper.py): a ``received`` row untouched for
  ``HOOKFLEET_STUCK_AFTER_S`` is published again from its row, on its own queue.

Idempotent: UNIQUE ``(provider, event_id)`` decides; a row already there (a worker took
the message after all, or an earlier try wrote it) is left as it is.
"""

from __future__ import annotations

import base64
import json

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import tracing
from models.base import utcnow
from models.contract import EventMessage
from models.engine import make_engine
from models.events import EventStatus, WebhookEvent
from models.perprocess import PerProcessMap
from models.settings import Settings

# Each statement's connect, read and write bound (seconds): a stopped database costs an
# exiting receiver this, not its graceful window.
IO_TIMEOUT_S = 2
#: Whose connections a write uses: the calls' writers before their answers
#: (ingest/inbound_record.py), or the late records and an exit's last writes
#: (ingest/late_records.py). Apart, so an exit's writes never wait for a connection the
#: calls' writers hold, nor dial one afresh: through a database 1 s away an outsider's
#: exit batch took 12-17 s on a new connection, 5 s on an open one, and missed the window.
CALLS, LATE = "calls", "late"


def event_of(message: str) -> EventMessage:
    """The delivery inside a queued Celery message (models/broker/envelope.py writes it:
    kombu's envelope, a base64 body ``[args, kwargs, embed]``). Raises ``ValueError``
    (``MalformedMessage`` included) for anything else."""
    envelope = json.loads(message)
    _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return EventMessage.from_kwargs(kwargs)


def shelve(database_url: str, messages: list[str], lane: str = CALLS) -> int:
    """Write the deliveries queued as ``messages`` as ``received`` rows, in one
    transaction (one by one when one of them is already on record), on ``lane``'s
    connections (:data:`CALLS`, :data:`LATE`). Returns how many this call wrote: a row
    already there for an event's ``(provider, event_id)`` is left as it is. Raises
    ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot take them,
    ``ValueError`` for a message that is not a delivery's."""
    events = [event_of(message) for message in messages]
    # Housekeeping of the process, after the request's trace has ended: no statement
    # spans of their own (a root trace no request started, as the boot warm-up's).
    with tracing.untraced():
        return _write(_engine_of(database_url, lane), events)


def warm(database_url: str, lane: str = CALLS) -> None:
    """Open this process's connection for the rows and load the table's mapping: the
    first record kept here after a (re)start would otherwise spend its answer's bound
    (ingest/inbound_record.py) dialling and on the dialect's first-connect queries, over
    a second on a loaded machine. Raises ``sqlalchemy.exc.SQLAlchemyError``."""
    with tracing.untraced(), Session(_engine_of(database_url, lane)) as session:
        session.execute(select(WebhookEvent.id).limit(0)).all()


def _write(engine: Engine, events: list[EventMessage]) -> int:
    # The rows already on record are left out first (an earlier write that finished
    # after its bound, the sweep, a worker): the batch then commits in one transaction.
    # Falling back to a transaction per row after a conflict took a database 400 ms
    # away minutes for a hundred records, past a receiver's exit window.
    for _ in range(2):
        with Session(engine) as session:
            fresh = _not_on_record(session, events)
            if not fresh:
                return 0
            session.add_all([_row(event) for event in fresh])
            try:
                session.commit()
                return len(fresh)
            except IntegrityError:
                session.rollback()  # written meanwhile by another writer: look again
    written = 0
    for event in events:
        with Session(engine) as session:
            session.add(_row(event))
            try:
                session.commit()
                written += 1
            except IntegrityError:
                pass  # already on record: the constraint is the last line of dedup
    return written


def _not_on_record(session: Session, events: list[EventMessage]) -> list[EventMessage]:
    """``events`` less those whose ``(provider, event_id)`` has a row, one query."""
    ids = {event.event_id for event in events}
    providers = {event.provider for event in events}
    rows = session.execute(
        select(WebhookEvent.provider, WebhookEvent.event_id).where(
            WebhookEvent.provider.in_(providers), WebhookEvent.event_id.in_(ids)
        )
    )
    known = {(provider, event_id) for provider, event_id in rows}
    fresh: dict[tuple[str, str], EventMessage] = {}
    for event in events:
        key = (event.provider, event.event_id)
        if key not in known:
            fresh.setdefault(key, event)
    return list(fresh.values())


def _row(event: EventMessage) -> WebhookEvent:
    now = utcnow()
    return WebhookEvent(
        provider=event.provider,
        event_id=event.event_id,
        event_type=event.event_type,
        queue=event.queue,
        correlation_id=event.correlation_id,
        headers=dict(event.headers),
        payload=event.payload,
        received_at=event.received_at,
        status=EventStatus.RECEIVED,
        attempts=0,
        created_at=now,
        updated_at=now,
    )


def _engine_of(database_url: str, lane: str) -> Engine:
    return _engines.get(f"{lane} {database_url}", lambda: _engine(database_url))


def _engine(database_url: str) -> Engine:
    # A lane's: LateRecords' thread and an exit's writers, or the writers of records
    # before their answers (ingest/inbound_record.py ``WRITERS``).
    small = Settings(database_url=database_url, db_pool_size=2, db_max_overflow=3)
    return make_engine(small, io_timeout_s=IO_TIMEOUT_S)


_engines: PerProcessMap[str, Engine] = PerProcessMap()

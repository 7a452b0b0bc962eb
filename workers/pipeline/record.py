"""Recording a delivery: the plain functions the tasks wrap (tests call them directly)."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Insert, Select, Table, UniqueConstraint, Update, case, select, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker, undefer

from models.base import utcnow
from models.contract import EventMessage
from models.events import EventStatus, WebhookEvent
from workers.domain.appointments import apply_calcom_event
from workers.domain.calls import apply_retell_event
from workers.packets import escaped_size, statement_budget

# What a provider's events do to the business record, by provider name. A handler runs
# inside the transaction that marks the event processed, so its effect and the mark
# commit together or not at all. Providers without a handler are recorded only.
# Stripe and Standard Webhooks events are recorded only, for now.
Handler = Callable[[Session, WebhookEvent], None]
HANDLERS: dict[str, Handler] = {"retell": apply_retell_event, "calcom": apply_calcom_event}


# A delivery as the receiver queued it: the contract's message, by the name the
# worker's code has always used for it.
IncomingEvent = EventMessage


UNFINISHED = (EventStatus.RECEIVED, EventStatus.FAILED, EventStatus.DEAD)


class Outcome(enum.StrEnum):
    PROCESSED = "processed"
    ALREADY_DONE = "already_done"


def record_event(sessions: sessionmaker[Session], event: IncomingEvent) -> Outcome:
    """Store ``event`` and apply its effect, exactly once. Idempotent and race-safe.

    The first call inserts the row and applies the effect in one transaction. Any later
    call (a redelivery, a duplicate that outlived the Redis dedup window) meets the
    UNIQUE (provider, event_id) constraint and finishes the event only if no earlier
    attempt did. Raises what the handler or the database raises; the transaction is
    then rolled back and the caller decides whether to retry.
    """
    with sessions() as session:
        # Inserted as processed: the row, the effect and that status commit together or
        # not at all, so no other session ever sees it half done — and one INSERT per
        # event is all the bookkeeping costs (no UPDATE after the effect).
        row = _insert(session, event, EventStatus.PROCESSED)
        if row is None:
            row = _claim_unfinished(session, event)
            if row is None:
                return Outcome.ALREADY_DONE
            row.status = EventStatus.PROCESSED
            row.processed_at = utcnow()
            row.last_error = None
            row.last_traceback = None
        handler = HANDLERS.get(event.provider)
        if handler is not None:
            handler(session, row)
        session.commit()
        return Outcome.PROCESSED


def record_batch(
    sessions: sessionmaker[Session],
    batch: list[IncomingEvent],
    before_apply: Callable[[int], None] | None = None,
    apply_scope: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> list[Outcome]:
    """Store and apply many events at once: the fast path of the worker.

    Two commits for the whole batch, whatever its size:

    1. *Record*: the events not on record yet are inserted in multi-row INSERTs —
       as few as the database's packet limit allows (``split_by_bytes``) —
       finished at once when their provider has no handler, ``received`` otherwise —
       and committed. From here on every delivery a worker took is in the database:
       if its message is lost (a Redis failover), the stuck-work sweep finds the
       ``received`` row and queues it again.
    2. *Apply*: the unfinished rows are claimed (a conditional UPDATE that takes their
       locks, as ``record_event`` does), each handler runs in message order, and the
       rows are marked processed; one commit.

    Raises whatever the database or a handler raises, with nothing of the failing
    phase written; the caller then settles each event on its own (``record_event``),
    which is the same work done one event at a time. Replays are not batched.
    ``before_apply(index)`` runs before each effect (the worker sets its log context),
    and the effect runs inside ``apply_scope(index)`` (the worker's span for the event).
    """
    assert not any(event.replay for event in batch), "replays go through record_event"
    outcomes = [Outcome.ALREADY_DONE] * len(batch)
    with sessions() as session:
        known = _statuses(session, batch)
        fresh: dict[tuple[str, str], int] = {}
        for index, event in enumerate(batch):
            key = (event.provider, event.event_id)
            if key not in known and key not in fresh:
                fresh[key] = index
        if fresh:
            statement = _insert_ignoring_duplicates(session)
            new_rows = [_row(batch[i], _first_status(batch[i])) for i in fresh.values()]
            for part in split_by_bytes(new_rows, statement_budget(session)):
                session.execute(statement, part)
            session.commit()
        pending: dict[tuple[str, str], int] = {}
        for key, index in fresh.items():
            if batch[index].provider in HANDLERS:
                pending[key] = index
            else:
                outcomes[index] = Outcome.PROCESSED
        for index, event in enumerate(batch):
            key = (event.provider, event.event_id)
            if known.get(key) in UNFINISHED and key not in pending:
                pending[key] = index
        if not pending:
            return outcomes

        rows = _claim_many(session, list(pending))
        for key, index in sorted(pending.items(), key=lambda item: item[1]):
            row = rows.get(key)
            if row is None:  # finished meanwhile by another worker
                continue
            handler = HANDLERS.get(row.provider)
            if handler is not None:
                if before_apply is not None:
                    before_apply(index)
                with apply_scope(index) if apply_scope is not None else nullcontext():
                    handler(session, row)
            row.status = EventStatus.PROCESSED
            row.processed_at = utcnow()
            row.last_error = None
            row.last_traceback = None
            outcomes[index] = Outcome.PROCESSED
        session.commit()
    return outcomes


# Bytes a row costs besides its payload and headers (ids, timestamps, SQL syntax).
ROW_OVERHEAD_BYTES = 4096


def split_by_bytes(rows: list[dict[str, Any]], budget: int) -> list[list[dict[str, Any]]]:
    """``rows`` in order, in runs whose escaped payload and header bytes (plus a fixed
    overhead a row) stay within ``budget`` (``workers.packets``); a row larger than the
    budget alone goes in a run of its own (the receiver's body limit and the README's
    packet rule keep it under the packet limit)."""
    runs: list[list[dict[str, Any]]] = []
    run: list[dict[str, Any]] = []
    used = 0
    for row in rows:
        size = escaped_size(row["payload"]) + ROW_OVERHEAD_BYTES
        if row.get("headers"):
            size += escaped_size(json.dumps(row["headers"], separators=(",", ":")))
        if run and used + size > budget:
            runs.append(run)
            run, used = [], 0
        run.append(row)
        used += size
    if run:
        runs.append(run)
    return runs


def _first_status(event: IncomingEvent) -> EventStatus:
    return EventStatus.RECEIVED if event.provider in HANDLERS else EventStatus.PROCESSED


def _statuses(session: Session, batch: list[IncomingEvent]) -> dict[tuple[str, str], EventStatus]:
    """The status of each event of ``batch`` already on record (one query a provider)."""
    found: dict[tuple[str, str], EventStatus] = {}
    for provider, event_ids in _by_provider(batch).items():
        for event_id, status in session.execute(
            select(WebhookEvent.event_id, WebhookEvent.status).where(
                WebhookEvent.provider == provider, WebhookEvent.event_id.in_(event_ids)
            )
        ):
            found[(provider, event_id)] = status
    return found


def _claim_many(
    session: Session, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], WebhookEvent]:
    """Lock the unfinished rows among ``keys`` for this transaction and load them.

    The UPDATE waits for any other worker holding one of them; what it leaves out was
    finished by that worker. The rows are then loaded with a *locking* read: under
    MariaDB's REPEATABLE READ a plain SELECT reads the snapshot taken at this
    transaction's first read (``_statuses``, before the wait), where a row that another
    copy of the same message finished meanwhile is still unfinished; both copies would
    apply it. A locking read sees the latest committed row, so exactly the rows claimed
    here are returned, and their locks are held until the effect commits. Both go by
    the unique key (:func:`_by_unique_key`): they lock these rows and no gap. (SQLite
    runs both statements inside its one write transaction: FOR UPDATE is not needed.)
    """
    rows: dict[tuple[str, str], WebhookEvent] = {}
    by_provider: dict[str, list[str]] = {}
    for provider, event_id in keys:
        by_provider.setdefault(provider, []).append(event_id)
    for provider, event_ids in by_provider.items():
        where = (
            WebhookEvent.provider == provider,
            WebhookEvent.event_id.in_(event_ids),
            WebhookEvent.status.in_(list(UNFINISHED)),
        )
        session.execute(
            _by_unique_key(update(WebhookEvent))
            .where(*where)
            .values(attempts=WebhookEvent.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        for row in session.scalars(
            _by_unique_key(select(WebhookEvent))
            .where(*where)
            .options(undefer(WebhookEvent.payload))
            .with_for_update()
            .execution_options(populate_existing=True)
        ):
            rows[(row.provider, row.event_id)] = row
    return rows


def _unique_key_index() -> str:
    table = cast(Table, WebhookEvent.__table__)
    names = {c.name for c in table.constraints if isinstance(c, UniqueConstraint)}
    (name,) = names  # the one UNIQUE (provider, event_id)
    return str(name)


#: MariaDB index hint naming UNIQUE (provider, event_id).
UNIQUE_KEY_HINT = f"FORCE INDEX ({_unique_key_index()})"

Locking = TypeVar("Locking", Update, Select[Any])


def _by_unique_key(statement: Locking) -> Locking:
    """``statement`` (an UPDATE or a locking SELECT of webhook_events whose WHERE names
    provider and event_id) made to find its rows through UNIQUE (provider, event_id) on
    MariaDB.

    Left to itself the optimizer may pick the (status, created_at) index — a batch's
    keys are many, the unfinished rows few — or a scan of the table, and a locking
    scan at REPEATABLE READ takes next-key locks: up to the end of the ``received``
    range, the gap every new row is inserted into, or the supremum of the primary key.
    A worker frozen with its transaction open then stalled every other worker's
    inserts, on every queue (issue 17). Exact look-ups in a unique index lock the rows
    found and no gap. (The hint is not rendered for SQLite.)
    """
    if isinstance(statement, Update):
        hinted: Any = statement
        for dialect in ("mysql", "mariadb"):
            hinted = hinted.with_hint(UNIQUE_KEY_HINT, dialect_name=dialect)
        return cast(Locking, hinted)
    for dialect in ("mysql", "mariadb"):
        statement = statement.with_hint(WebhookEvent, UNIQUE_KEY_HINT, dialect)
    return statement


def _by_provider(batch: list[IncomingEvent]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for event in batch:
        grouped.setdefault(event.provider, []).append(event.event_id)
    return grouped


def _insert_ignoring_duplicates(session: Session) -> Insert:
    """INSERT that skips rows whose (provider, event_id) exists: a concurrent worker
    recorded the same event between our look-up and our insert."""
    table = cast(Table, WebhookEvent.__table__)
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(table).on_duplicate_key_update(id=table.c.id)
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"batch recording on {dialect}")


def _event_fields(event: IncomingEvent) -> dict[str, Any]:
    """The columns a delivery fills in as it came: the same for a row inserted by the
    batch (``_row``) and one inserted alone (``_insert``)."""
    return {
        "provider": event.provider,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "queue": event.queue,
        "correlation_id": event.correlation_id,
        "headers": dict(event.headers),
        "payload": event.payload,
        "received_at": event.received_at,
    }


def _row(event: IncomingEvent, status: EventStatus) -> dict[str, Any]:
    done = status is EventStatus.PROCESSED
    now = utcnow()
    return {
        **_event_fields(event),
        "status": status,
        "attempts": 1 if done else 0,
        "last_error": None,
        "processed_at": now if done else None,
        "created_at": now,
        "updated_at": now,
    }


def _insert(session: Session, event: IncomingEvent, status: EventStatus) -> WebhookEvent | None:
    row = WebhookEvent(
        **_event_fields(event),
        status=status,
        processed_at=utcnow() if status is EventStatus.PROCESSED else None,
        attempts=1,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # Someone recorded it first: the constraint is the second layer of dedup.
        session.rollback()
        return None
    return row


def _claim_unfinished(session: Session, event: IncomingEvent) -> WebhookEvent | None:
    """Lock the existing row if it still needs work; None when it is already done.

    Unfinished: received, failed or dead (a provider's late retry or a replay gives it
    another chance); a replay claims a processed event too. The conditional UPDATE
    takes the row lock (MariaDB) or the write lock (SQLite), so two workers holding the
    same event cannot both apply it.
    """
    where = (WebhookEvent.provider == event.provider, WebhookEvent.event_id == event.event_id)
    statuses = list(EventStatus) if event.replay else list(UNFINISHED)
    claimed = session.execute(
        _by_unique_key(update(WebhookEvent))
        .where(*where, WebhookEvent.status.in_(statuses))
        .values(attempts=WebhookEvent.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount == 0:  # type: ignore[attr-defined]
        session.rollback()
        return None
    # A locking read, like ``_claim_many``'s: a plain one would fix MariaDB's snapshot
    # here, before the handler's locking reads, and rows other workers commit meanwhile
    # would be missing from the handler's plain reads. Both by the unique key: no gap.
    return session.execute(
        _by_unique_key(select(WebhookEvent)).where(*where).with_for_update()
    ).scalar_one()


def mark_failed(
    sessions: sessionmaker[Session],
    event: IncomingEvent,
    error: str,
    status: EventStatus = EventStatus.FAILED,
    traceback: str | None = None,
    attempt: int = 1,
) -> None:
    """Record why ``event`` could not be processed (``failed``: it cannot be applied as
    it is; ``dead``: the retry budget is spent); its payload stays for a replay.
    ``attempt`` is the number of the message's attempt that failed (1 for the first):
    the row's ``attempts`` is at least that, as a failed attempt's own count rolled
    back with its transaction (a lock wait timeout, 1205, leaves no trace of it).

    Never downgrades an event that another attempt already processed.
    """
    counted = WebhookEvent.attempts + 1
    with sessions() as session:
        row = _insert(session, event, status)
        if row is not None:
            row.attempts = max(1, attempt)
            row.last_error = error[:4000]
            row.last_traceback = traceback
        else:
            session.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.provider == event.provider,
                    WebhookEvent.event_id == event.event_id,
                    WebhookEvent.status != EventStatus.PROCESSED,
                )
                .values(
                    status=status,
                    attempts=case((counted < attempt, attempt), else_=counted),
                    last_error=error[:4000],
                    last_traceback=traceback,
                )
                .execution_options(synchronize_session=False)
            )
        session.commit()


def record_malformed(
    sessions: sessionmaker[Session], kwargs: Mapping[str, Any], queue: str, reason: str
) -> bool:
    """Keep a task message that is not an event message (``MalformedMessage``: a field
    missing or of the wrong type) as a ``failed`` row whose ``last_error`` says why.

    Only when it names its provider and event id (strings that fit their columns):
    False otherwise, with nothing written — there is nothing to record it under. The
    other fields are kept as they came where usable, else stored empty
    (``received_at``: now), for the record only; its payload, when it carries one,
    stays for ``hookfleet replay``. Never downgrades a processed event (``mark_failed``).
    Raises what the database raises.
    """
    provider, event_id = kwargs.get("provider"), kwargs.get("event_id")
    if not (isinstance(provider, str) and 0 < len(provider) <= 32):
        return False
    if not (isinstance(event_id, str) and 0 < len(event_id) <= 191):
        return False

    def text(name: str) -> str:
        value = kwargs.get(name)
        return value if isinstance(value, str) else ""

    try:
        received_at = datetime.fromisoformat(text("received_at"))
    except ValueError:
        received_at = utcnow()
    if received_at.tzinfo is None:
        received_at = utcnow()
    headers = kwargs.get("headers")
    event = EventMessage(
        provider=provider,
        event_id=event_id,
        event_type=text("event_type")[:128],
        queue=(text("queue") or queue)[:64],
        correlation_id=text("correlation_id")[:128],
        received_at=received_at,
        headers=headers if isinstance(headers, dict) else {},
        payload=text("payload"),
    )
    mark_failed(sessions, event, f"malformed task message: {reason}", EventStatus.FAILED)
    return True

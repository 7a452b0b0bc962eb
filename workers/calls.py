"""Retell call events → one ``calls`` row per call, linked to branch and customer.

Retell sends ``call_started``, ``call_ended`` and ``call_analyzed`` in order, but a retry
can overtake a later event and ``call_ended`` comes twice. Each event has a rank
(started < ended < analyzed); an event at or above the row's rank writes every field it
carries, one below it only fills fields still empty. Retell's call object grows from
event to event, so the final row is the same whatever the arrival order, and a status
never goes back (an ended call is not "ongoing" again because call_started came late).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.business import Branch, Staff, normalize_email
from models.calls import Call
from models.events import WebhookEvent
from models.payloads import PayloadError, loads
from models.phones import normalize_phone
from workers.customers import find_or_create_customer
from workers.retries import PermanentError, RaceLost, locked

log = logging.getLogger("hookfleet.worker.calls")

RANKS = {"call_started": 1, "call_ended": 2, "call_analyzed": 3}
STATUS_BY_EVENT = {"call_started": "ongoing", "call_ended": "ended", "call_analyzed": "ended"}


def apply_retell_event(session: Session, event: WebhookEvent) -> None:
    """Upsert the call of a ``call_*`` event; other Retell events are recorded only.

    Raises PermanentError for a call event without a call object or id, RaceLost when a
    concurrent worker created the same call first (retry: the row is then found).
    """
    rank = RANKS.get(event.event_type)
    if rank is None:
        return
    try:
        payload = loads(event.payload)
    except PayloadError as error:  # only a row stored before the receiver's rule
        raise PermanentError(f"{event.event_type} payload: {error.reason}") from None
    details = payload.get("call") if isinstance(payload, dict) else None
    call_id = details.get("call_id") if isinstance(details, dict) else None
    if not isinstance(details, dict) or not isinstance(call_id, str) or not call_id:
        raise PermanentError(f"{event.event_type} without call.call_id cannot become a call")
    fields = _fields(event.event_type, details, event.payload)
    call_id = call_id[:128]  # as stored (calls.call_id), so a longer id finds its row

    call = session.scalars(locked(select(Call).where(Call.call_id == call_id))).first()
    if call is None:
        call = Call(call_id=call_id, event_rank=0)
        session.add(call)
    _merge(call, fields, rank)
    try:
        # Inside: linking queries autoflush the new call row, where its INSERT may meet
        # the unique call_id another worker committed meanwhile.
        _link(session, call, details)
        session.flush()
    except IntegrityError as error:
        raise RaceLost(f"call {call_id} was created concurrently") from error


def _fields(event_type: str, details: dict[str, Any], raw: str) -> dict[str, Any]:
    """The columns this event carries (None: not carried)."""
    analysis = (
        details.get("call_analysis") if isinstance(details.get("call_analysis"), dict) else None
    )
    started, ended = _ms(details.get("start_timestamp")), _ms(details.get("end_timestamp"))
    duration = details.get("duration_ms")
    if not isinstance(duration, int) and started and ended:
        duration = int((ended - started).total_seconds() * 1000)
    # Retell's own status wins when it says how the call ended (error, not_connected).
    status = details.get("call_status")
    if status not in ("ended", "error", "not_connected"):
        status = STATUS_BY_EVENT[event_type]
    return {
        "agent_id": _text(details.get("agent_id"), 64),
        "direction": _text(details.get("direction"), 16),
        "status": status,
        "from_number": _phone(details.get("from_number")),
        "to_number": _phone(details.get("to_number")),
        "started_at": started,
        "ended_at": ended,
        "duration_ms": duration if isinstance(duration, int) else None,
        "disconnection_reason": _text(details.get("disconnection_reason"), 64),
        "recording_url": _text(details.get("recording_url"), 2000),
        "transcript": details.get("transcript")
        if isinstance(details.get("transcript"), str)
        else None,
        "summary": _fit_bytes(analysis.get("call_summary"), 65535) if analysis else None,
        "analysis": analysis,
        "raw_payload": raw,
    }


def _merge(call: Call, fields: dict[str, Any], rank: int) -> None:
    later = rank >= call.event_rank
    for name, value in fields.items():
        if value is None:
            continue
        if later or getattr(call, name) is None:
            setattr(call, name, value)
    if later:
        call.event_rank = rank


def _link(session: Session, call: Call, details: dict[str, Any]) -> None:
    """Branch by the number our side of the call uses; customer by the other number."""
    ours, theirs = call.to_number, call.from_number
    if call.direction == "outbound":
        ours, theirs = theirs, ours
    if call.branch_id is None and ours:
        branch = session.scalars(
            select(Branch).where(Branch.phone == ours).order_by(Branch.is_active.desc(), Branch.id)
        ).first()
        if branch is not None:
            call.branch_id, call.company_id = branch.id, branch.company_id
        else:
            log.warning("call to a number no branch owns", extra={"unrouted_number": ours})
    if call.customer_id is None and theirs:
        customer = find_or_create_customer(session, call.company_id, phone=theirs)
        if customer is not None:
            session.flush()
            call.customer_id = customer.id
    metadata = details.get("metadata")
    email = (
        normalize_email(_text(metadata.get("staff_email"), 191))
        if isinstance(metadata, dict)
        else None
    )
    if call.staff_id is None and email and call.company_id is not None:
        call.staff_id = session.scalar(
            select(Staff.id).where(Staff.company_id == call.company_id, Staff.email == email)
        )


def _ms(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e14:
        return datetime.fromtimestamp(value / 1000, UTC)
    return None


def _fit_bytes(value: object, limit: int) -> str | None:
    """``value`` cut to ``limit`` UTF-8 bytes, on a character boundary: MariaDB's TEXT
    holds 65,535 bytes, and a summary in German or with emoji has more bytes than
    characters."""
    if not isinstance(value, str) or not value:
        return None
    return value.encode()[:limit].decode(errors="ignore")


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _phone(value: object) -> str | None:
    return normalize_phone(value).value[:32] if isinstance(value, str) and value.strip() else None

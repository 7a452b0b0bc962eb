"""Retell call events → one ``calls`` row per call, linked to branch and customer.

Retell sends ``call_started``, ``call_ended`` and ``call_analyzed`` in order, but a retry
can overtake a later event and ``call_ended`` comes twice. Each event has a rank
(started < ended < analyzed); an event at or above the row's rank writes every field it
carries, one below it only fills fields still empty. Retell's call object grows from
event to event, so the final row is the same whatever the arrival order, and a status
never goes back (an ended call is not "ongoing" again because call_started came late).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.business import Branch, normalize_email
from models.calls import Call, CallStatus, is_call_id
from models.events import WebhookEvent
from models.payloads import PayloadError, loads
from models.phones import stored_phone
from workers.domain.customers import find_or_create_customer
from workers.domain.merge import merge_ranked, staff_by_email, text
from workers.packets import escaped_size, statement_budget
from workers.retries import PermanentError, RaceLost, found_locked

log = logging.getLogger("hookfleet.worker.calls")

RANKS = {"call_started": 1, "call_ended": 2, "call_analyzed": 3}
STATUS_BY_EVENT = {
    "call_started": CallStatus.ONGOING,
    "call_ended": CallStatus.ENDED,
    "call_analyzed": CallStatus.ENDED,
}
# The call_status values that say how a call ended: Retell's own word wins over the
# event's (retell-python-sdk call_response.py: registered, not_connected, ongoing,
# ended, error).
FINAL_STATUSES = frozenset({CallStatus.ENDED, CallStatus.ERROR, CallStatus.NOT_CONNECTED})


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
    if not isinstance(details, dict) or not is_call_id(call_id):
        # The receiver refuses these (422); only a row stored before that rule gets here.
        raise PermanentError(f"{event.event_type} without a usable call.call_id")
    assert isinstance(call_id, str)
    fields = _fields(event.event_type, details, event.payload)
    _fit_statement(fields, statement_budget(session))

    call = found_locked(session, select(Call).where(Call.call_id == call_id))
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
    """The columns this event carries (None: not carried, or not storable).

    Every value is checked against its column, never trusted: a number where text is
    expected (or the reverse), a boolean, a timestamp before 1970 or after
    MAX_TIMESTAMP_MS, a duration that does not fit ``duration_ms`` (INT) or is negative,
    an end before the start. Such a field is left empty with an INFO line naming it, and
    the event still applies; the whole body stays in ``raw_payload``.
    """
    analysis = (
        details.get("call_analysis") if isinstance(details.get("call_analysis"), dict) else None
    )
    started = _ms(details, "start_timestamp")
    ended = _ms(details, "end_timestamp")
    if started and ended and ended < started:
        _skipped("end_timestamp", "before start_timestamp")
        ended = None
    duration = _duration(details, started, ended)
    # Retell's own status wins when it says how the call ended (error, not_connected).
    said, status = details.get("call_status"), STATUS_BY_EVENT[event_type]
    if isinstance(said, str) and said in FINAL_STATUSES:  # said may be any JSON value
        status = CallStatus(said)
    transcript = details.get("transcript")
    return {
        "agent_id": text(details.get("agent_id"), 64),
        "direction": text(details.get("direction"), 16),
        "status": status,
        "from_number": _phone(details.get("from_number")),
        "to_number": _phone(details.get("to_number")),
        "started_at": started,
        "ended_at": ended,
        "duration_ms": duration,
        "disconnection_reason": text(details.get("disconnection_reason"), 64),
        "recording_url": text(details.get("recording_url"), 2000),
        "transcript": transcript if isinstance(transcript, str) else None,
        "summary": _bounded_text(analysis.get("call_summary"), TEXT_BYTES) if analysis else None,
        "analysis": analysis,
        "raw_payload": raw,
    }


# calls.duration_ms is a signed 32-bit INT on MariaDB: about 24.8 days.
MAX_DURATION_MS = 2**31 - 1
# Timestamps past this (year 5138) are not a call's; MariaDB DATETIME ends at 9999.
MAX_TIMESTAMP_MS = 10**14
# calls.summary is TEXT: 65,535 bytes on MariaDB (not characters).
TEXT_BYTES = 65_535


def _duration(
    details: dict[str, Any], started: datetime | None, ended: datetime | None
) -> int | None:
    """Retell's ``duration_ms`` when it fits the column, else end minus start when that
    does, else None."""
    given = details.get("duration_ms")
    if given is not None:
        value = _whole_number(given)
        if value is not None and 0 <= value <= MAX_DURATION_MS:
            return value
        _skipped("duration_ms", "not a whole number of milliseconds from 0 to 2^31-1")
    if started and ended:
        derived = int((ended - started).total_seconds() * 1000)
        if derived <= MAX_DURATION_MS:
            return derived
        _skipped("duration_ms", "end_timestamp minus start_timestamp is over 2^31-1 ms")
    return None


def _whole_number(value: object) -> int | None:
    """An int, or a float with no fraction (JSON has one number type); not a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _skipped(field: str, reason: str) -> None:
    log.info("call field not stored", extra={"field": field, "reason": reason})


# Columns whose value is also inside raw_payload, the first to leave a row too large.
_REPEATED = ("transcript", "analysis", "summary")


def _fit_statement(fields: dict[str, Any], budget: int) -> None:
    """Leave out repeated columns (``transcript``, then ``analysis``, then ``summary``,
    each with an INFO line) until the row's escaped size fits one statement: the row is
    written whatever ``max_allowed_packet`` is, and the values stay in ``raw_payload``.
    With the README's packet rule nothing is left out."""
    for name in _REPEATED:
        if _escaped_row_size(fields) <= budget:
            return
        if fields[name] is not None:
            fields[name] = None
            _skipped(name, "the row would pass max_allowed_packet; kept in raw_payload")


def _escaped_row_size(fields: dict[str, Any]) -> int:
    size = 0
    for value in fields.values():
        if isinstance(value, str):
            size += escaped_size(value)
        elif isinstance(value, dict):
            size += escaped_size(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return size


def _merge(call: Call, fields: dict[str, Any], rank: int) -> None:
    later = rank >= call.event_rank
    merge_ranked(call, fields, later=later)
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
        normalize_email(text(metadata.get("staff_email"), 191))
        if isinstance(metadata, dict)
        else None
    )
    if call.staff_id is None:
        call.staff_id = staff_by_email(session, call.company_id, email)


def _ms(details: dict[str, Any], field: str) -> datetime | None:
    """``details[field]``, Unix milliseconds (Retell's ``start_timestamp`` /
    ``end_timestamp``), as a time; None when absent or not a time from 1970 to
    MAX_TIMESTAMP_MS (logged)."""
    value = details.get(field)
    if value is None:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 < value < MAX_TIMESTAMP_MS
    ):
        return datetime.fromtimestamp(value / 1000, UTC)
    _skipped(field, "not Unix milliseconds between 1970 and year 5138")
    return None


def _bounded_text(value: object, limit_bytes: int) -> str | None:
    """A non-empty string cut to at most ``limit_bytes`` UTF-8 bytes, on a character
    boundary (a MariaDB TEXT holds bytes, not characters); else None."""
    if not isinstance(value, str) or not value:
        return None
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit_bytes:
        return value
    return encoded[:limit_bytes].decode("utf-8", "ignore")


def _phone(value: object) -> str | None:
    phone = stored_phone(value)
    return phone.value if phone else None

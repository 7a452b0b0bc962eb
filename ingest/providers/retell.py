"""Retell AI (voice and chat agents): ``POST /webhooks/retell``.

``x-retell-signature: v=<unix_ms>,d=<hex>``, ``d`` the hex HMAC-SHA256 under the Retell
API key of the raw body followed directly by the decimal millisecond timestamp (as the
Retell SDK's ``verify`` checks it). Tolerance: ``tolerance_s`` (5 minutes by default).

Retell sends no event id. The key for a call's once-per-call events (``call_started``,
``call_ended``, ``call_analyzed`` and their chat twins) is ``f"{call_id}:{event}"``, so
``call_ended`` sent twice is one event and ``call_analyzed`` after it another. Events that
recur within one call (``transcript_updated``, ``transfer_*``) add the body's SHA-256 to
that key: an identical re-send dedups, the next update does not. ``call_inbound`` and
``chat_inbound`` come before any call id exists; they are answered in-line (see
``EventIdentity.inline``) and keyed by event, the signature's ``v`` timestamp and body
digest (the body alone is the same for every call from one caller to one number). An
event this module does not know that comes without a call or chat object is recorded,
keyed by event and body digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any

from ingest.errors import ErrorCode
from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    ShapeError,
    VerificationError,
    body_digest,
)
from ingest.providers.signing import check_tolerance, matches_any
from models.calls import CALL_ID_LENGTH, is_call_id
from models.settings import ProviderSettings

if TYPE_CHECKING:
    from ingest.inbound import InboundDirectory

HEADER = "x-retell-signature"
INLINE_EVENTS = frozenset({"call_inbound", "chat_inbound"})
ONCE_PER_CALL = frozenset(
    {"call_started", "call_ended", "call_analyzed", "chat_started", "chat_ended", "chat_analyzed"}
)
# Every event Retell's docs list (docs.retellai.com/features/webhook-overview) and the
# chat twins (retell-python-sdk chat_response.py): these must carry their object.
KNOWN_EVENTS = ONCE_PER_CALL | {
    "transcript_updated",
    "transfer_started",
    "transfer_bridged",
    "transfer_cancelled",
    "transfer_ended",
}
# Unix milliseconds (13 digits today); the bound keeps a hostile header from becoming a
# huge integer, and nothing longer could be within tolerance anyway.
_TIMESTAMP_MS = re.compile(r"^[0-9]{1,15}$")
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _digest(api_key: str, body: bytes, timestamp_ms: int) -> str:
    message = body + str(timestamp_ms).encode()
    return hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The full ``x-retell-signature`` value Retell sends: ``v=<unix_ms>,d=<hex>``
    (``secret`` the Retell API key, ``timestamp`` in unix milliseconds)."""
    return f"v={timestamp},d={_digest(secret, body, timestamp)}"


def verify_retell_signature(
    delivery: Delivery, secrets: tuple[str, ...], tolerance_s: int, now: float | None = None
) -> None:
    """Raise VerificationError unless ``d`` matches one API key and ``v`` is recent.

    Codes: ``missing_signature``, ``malformed_signature`` (no ``v`` or ``d``, ``v`` not
    1-15 digits, ``d`` not 64 hex digits), ``timestamp_out_of_tolerance``
    (``|now_ms - v| > tolerance_s * 1000``), ``invalid_signature``.
    """
    header = delivery.headers.get(HEADER, "")
    if not header:
        raise VerificationError(
            ErrorCode.MISSING_SIGNATURE, "the x-retell-signature header is required"
        )
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    sent, offered = parts.get("v", []), parts.get("d", [])
    if len(sent) != 1 or len(offered) != 1:
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "x-retell-signature must be v=<unix ms>,d=<hex>"
        )
    if not _TIMESTAMP_MS.match(sent[0]):
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "x-retell-signature v is not unix ms"
        )
    if not _HEX_SHA256.match(offered[0]):
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "x-retell-signature d is not hex SHA-256"
        )
    sent_at_ms = int(sent[0])
    check_tolerance(sent_at_ms, tolerance_s, header=HEADER, per_second=1000, now=now)
    expected = (_digest(api_key, delivery.body, sent_at_ms).encode() for api_key in secrets)
    if not matches_any(expected, [offered[0].lower().encode()]):
        raise VerificationError(
            ErrorCode.INVALID_SIGNATURE, "the signature matches no configured key"
        )


def signature_timestamp(delivery: Delivery) -> str | None:
    """The ``v=`` of ``x-retell-signature`` (Unix ms) when it is one; None otherwise
    (verification off and no header)."""
    for item in delivery.headers.get(HEADER, "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "v" and _TIMESTAMP_MS.match(value):
            return value
    return None


class Retell(Provider):
    name = "retell"

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        verify_retell_signature(
            delivery, settings.secrets, settings.tolerance_s, now=delivery.received_at
        )

    def identify(self, delivery: Delivery, payload: dict[str, Any]) -> EventIdentity:
        """Raises ShapeError unless ``event`` is a non-empty string and the object the
        event is about (``call_inbound``, ``call`` or ``chat``) is there, and, for a
        once-per-call event, its ``call_id`` / ``chat_id`` is ``models.calls.is_call_id``."""
        event = payload.get("event")
        if not isinstance(event, str) or not event:
            raise ShapeError("A Retell webhook needs a non-empty string 'event'.")
        if event in INLINE_EVENTS:
            return self._identify_inline(delivery, payload, event)
        return self._identify_async(delivery, payload, event)

    def _identify_inline(
        self, delivery: Delivery, payload: dict[str, Any], event: str
    ) -> EventIdentity:
        if not isinstance(payload.get(event), dict):
            raise ShapeError(f"A Retell {event} webhook needs an object under {event!r}.")
        # No call id exists yet, and two calls from one caller to one number send the
        # same body: the signature's timestamp tells them apart (each request is signed
        # when sent). A retry Retell signs anew is recorded twice (and answered alike);
        # two calls are never one.
        signed_at = signature_timestamp(delivery)
        prefix = f"{event}:{signed_at}" if signed_at else event
        return EventIdentity(
            event_id=f"{prefix}:{body_digest(delivery.body)}", event_type=event, inline=True
        )

    def _identify_async(
        self, delivery: Delivery, payload: dict[str, Any], event: str
    ) -> EventIdentity:
        subject = "chat" if event.startswith("chat_") else "call"
        about = payload.get(subject)
        if not isinstance(about, dict):
            if event in KNOWN_EVENTS:
                raise ShapeError(f"A Retell {event} webhook needs an object under {subject!r}.")
            # An event Retell added after this module was written: signed, so recorded
            # (keyed by its body) rather than refused and lost.
            return EventIdentity(event_id=f"{event}:{body_digest(delivery.body)}", event_type=event)
        subject_id = about.get(f"{subject}_id")
        if event in ONCE_PER_CALL and not is_call_id(subject_id):
            # The worker makes a row of this call (or chat): without an id it could not,
            # and a 202 would be a promise the worker breaks.
            raise ShapeError(
                f"A Retell {event} webhook needs {subject}.{subject}_id: a non-empty string "
                f"of at most {CALL_ID_LENGTH} characters."
            )
        if not isinstance(subject_id, str) or not subject_id:
            event_id = body_digest(delivery.body)
        elif event in ONCE_PER_CALL:
            event_id = f"{subject_id}:{event}"
        else:
            event_id = f"{subject_id}:{event}:{body_digest(delivery.body)}"
        return EventIdentity(event_id=event_id, event_type=event)

    def answer(
        self, payload: dict[str, Any], identity: EventIdentity, directory: InboundDirectory
    ) -> dict[str, Any]:
        """``{"call_inbound": {"override_agent_id", "dynamic_variables", "metadata"}}``
        for a number an active branch owns; ``{"call_inbound": {}}`` otherwise, which
        lets Retell use the number's default agent. ``chat_inbound`` alike."""
        event = identity.event_type
        details = payload[event]
        contact = directory.find(_text(details.get("to_number")))
        if contact is None:
            return self.empty_answer(identity)
        reply: dict[str, Any] = {
            "dynamic_variables": {
                "company_name": contact.company_name,
                "branch_name": contact.branch_name,
                "branch_timezone": contact.timezone,
                "caller_number": _text(details.get("from_number")),
            },
            "metadata": {"company_id": contact.company_id, "branch_id": contact.branch_id},
        }
        if contact.agent_id:
            reply["override_agent_id"] = contact.agent_id
        return {event: reply}

    def empty_answer(self, identity: EventIdentity) -> dict[str, Any]:
        return {identity.event_type: {}}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


PROVIDER = Retell()

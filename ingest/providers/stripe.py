"""Stripe: ``POST /webhooks/stripe``.

``Stripe-Signature: t=<unix_s>,v1=<hex>[,v1=<hex>...]``, each ``v1`` the hex
HMAC-SHA256 of ``f"{t}." + raw_body`` under an endpoint secret (the whole ``whsec_...``
string is the key). Several ``v1`` entries appear while a secret is being rolled; other
schemes (``v0``) are ignored. The idempotency key is the event's own ``id`` (``evt_...``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from ingest.errors import ErrorCode
from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    ShapeError,
    VerificationError,
)
from ingest.providers.signing import check_tolerance, matches_any
from models.settings import ProviderSettings

HEADER = "stripe-signature"
# Unix seconds; anything longer cannot be within tolerance, and a bound keeps a hostile
# header from becoming a huge integer.
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    content = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The full ``Stripe-Signature`` value Stripe sends: ``t=<timestamp>,v1=<hex>``
    (``timestamp`` in unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_stripe_signature(
    delivery: Delivery, secrets: tuple[str, ...], tolerance_s: int, now: float | None = None
) -> None:
    """Raise VerificationError unless one offered ``v1`` matches one secret in time.

    Codes: ``missing_signature``, ``malformed_signature`` (no ``t``, no ``v1``, two
    ``t``s or a ``t`` that is not 1-12 digits), ``timestamp_out_of_tolerance``
    (``|now - t| > tolerance_s``), ``invalid_signature``.
    """
    header = delivery.headers.get(HEADER, "")
    if not header:
        raise VerificationError(
            ErrorCode.MISSING_SIGNATURE, "the Stripe-Signature header is required"
        )
    timestamps: list[str] = []
    candidates: list[bytes] = []
    for item in header.split(","):
        scheme, _, value = item.strip().partition("=")
        if scheme == "t":
            timestamps.append(value)
        elif scheme == "v1" and value:
            # Bytes, so a non-ASCII value compares (and fails) instead of raising.
            candidates.append(value.encode())
    if len(timestamps) != 1 or not _TIMESTAMP.match(timestamps[0]):
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "Stripe-Signature needs exactly one t=<unix seconds>"
        )
    if not candidates:
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "Stripe-Signature has no v1 signature"
        )
    sent_at = int(timestamps[0])
    check_tolerance(sent_at, tolerance_s, header="Stripe-Signature", now=now)
    expected = (_digest(secret, sent_at, delivery.body).encode() for secret in secrets)
    if not matches_any(expected, candidates):
        raise VerificationError(
            ErrorCode.INVALID_SIGNATURE, "no v1 signature matches a configured secret"
        )


class Stripe(Provider):
    name = "stripe"

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        verify_stripe_signature(
            delivery, settings.secrets, settings.tolerance_s, now=delivery.received_at
        )

    def identify(self, delivery: Delivery, payload: dict[str, Any]) -> EventIdentity:
        """``event_id`` is the event's ``id``; raises ShapeError unless ``id`` is a
        non-empty string and ``type`` a string (the shape of a Stripe event object)."""
        event_id, event_type = payload.get("id"), payload.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise ShapeError(
                "A Stripe event needs a non-empty string 'id' (evt_...) and a string 'type'."
            )
        return EventIdentity(event_id=event_id, event_type=event_type)


PROVIDER = Stripe()

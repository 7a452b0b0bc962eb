"""Cal.com: ``POST /webhooks/calcom``.

``X-Cal-Signature-256: <hex HMAC-SHA256(secret, raw_body)>``. There is no timestamp,
so no replay window: the dedup key is the only replay defence. A webhook saved in
Cal.com without a secret is sent with the literal ``no-secret-provided`` (newer senders
leave the header out); both are refused as unsigned.

Cal.com sends no event id. The key is ``f"{triggerEvent}:{payload.uid}:{payload.startTime}"``:
a reschedule keeps the booking's uid but moves its start, so it is a new event, while the
same booking re-sent is a duplicate. ``startTime`` missing (or not a string) leaves that
part empty, so the key is still one per trigger and booking. Without a uid (``PING``,
form submissions) the key is the body's SHA-256: only a byte-identical re-send dedups.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    ShapeError,
    VerificationError,
    body_digest,
)
from models.settings import ProviderSettings

HEADER = "x-cal-signature-256"
UNSIGNED_SENTINEL = "no-secret-provided"
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def sign(secret: str, body: bytes) -> str:
    """The ``X-Cal-Signature-256`` value Cal.com sends for ``body``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_calcom_signature(delivery: Delivery, secrets: tuple[str, ...]) -> None:
    """Raise VerificationError unless the signature matches one configured secret.

    Codes: ``missing_signature`` (absent, empty or ``no-secret-provided``),
    ``malformed_signature`` (not 64 hex digits), ``invalid_signature``.
    """
    offered = delivery.headers.get(HEADER, "")
    if not offered:
        raise VerificationError("missing_signature", "the X-Cal-Signature-256 header is required")
    if offered == UNSIGNED_SENTINEL:
        raise VerificationError(
            "missing_signature",
            "Cal.com sent no-secret-provided: set a secret on this webhook in Cal.com "
            "and the same one in HOOKFLEET_CALCOM_SECRETS",
        )
    if not _HEX_SHA256.match(offered):
        raise VerificationError(
            "malformed_signature", "X-Cal-Signature-256 is not a hex HMAC-SHA256"
        )
    candidate = offered.lower().encode()
    matched = False
    for secret in secrets:
        # Every secret is compared, in constant time, whatever matched before.
        matched |= hmac.compare_digest(sign(secret, delivery.body).encode(), candidate)
    if not matched:
        raise VerificationError("invalid_signature", "the signature matches no configured secret")


class CalCom(Provider):
    name = "calcom"
    recorded_headers = ("content-type", "user-agent", "x-cal-webhook-version")
    requires_json_content_type = False

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        verify_calcom_signature(delivery, settings.secrets)

    def identify(self, delivery: Delivery, payload: dict[str, Any]) -> EventIdentity:
        """Raises ShapeError unless ``triggerEvent`` is a non-empty string and ``payload``
        an object: a custom payload template can send anything."""
        trigger, booking = payload.get("triggerEvent"), payload.get("payload")
        if not isinstance(trigger, str) or not trigger or not isinstance(booking, dict):
            raise ShapeError(
                "A Cal.com webhook needs a non-empty string 'triggerEvent' and an object "
                "'payload'; a custom payload template must keep both."
            )
        uid, start = booking.get("uid"), booking.get("startTime")
        if isinstance(uid, str) and uid:
            start_part = start if isinstance(start, str) else ""
            event_id = f"{trigger}:{uid}:{start_part}"
        else:
            event_id = body_digest(delivery.body)
        return EventIdentity(event_id=event_id, event_type=trigger)


PROVIDER = CalCom()

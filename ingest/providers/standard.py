"""Standard Webhooks (https://www.standardwebhooks.com/): any compliant sender.

Headers ``webhook-id`` (the idempotency key), ``webhook-timestamp`` (unix seconds) and
``webhook-signature`` (space-separated ``v1,<base64>``), HMAC-SHA256 over
``f"{id}.{timestamp}.{body}"`` with the bytes of a ``whsec_<base64>`` secret.

The payload is any JSON value: the spec (standard-webhooks ``spec/standard-webhooks.md``,
"Payload") "does not dictate the structure" and only recommends an object with
``type``, ``timestamp`` and ``data``. An array, a string or a number is accepted and
recorded like an object; the event type is the object's ``type`` when there is one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import re
from typing import Any

from ingest.errors import ErrorCode
from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    VerificationError,
    body_digest,
)
from ingest.providers.signing import check_tolerance, matches_any
from models.settings import ProviderSettings

# Unix seconds, as the spec sends them; anything longer cannot be within tolerance.
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


@functools.lru_cache(maxsize=64)  # the configured secrets, decoded once per process
def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises ValueError unless it decodes to 24-64 bytes, as the spec requires: an empty
    key (``whsec_${UNSET}``) would let anyone sign.
    """
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a Standard Webhooks secret must be 24-64 bytes, not {len(key)}")
    return key


def sign(secret: str, body: bytes, timestamp: int, *, webhook_id: str) -> str:
    """The ``v1,<base64>`` signature a sender puts in ``webhook-signature``
    (``timestamp`` in unix seconds)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.digest(decode_secret(secret), content, "sha256")
    return "v1," + base64.b64encode(digest).decode()


def verify_standard_signature(
    delivery: Delivery, secrets: tuple[str, ...], tolerance_s: int, now: float | None = None
) -> None:
    """Raise VerificationError unless one offered ``v1`` signature matches one secret."""
    webhook_id = delivery.headers.get("webhook-id", "")
    timestamp = delivery.headers.get("webhook-timestamp", "")
    offered = delivery.headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and offered):
        raise VerificationError(
            ErrorCode.MISSING_SIGNATURE,
            "webhook-id, webhook-timestamp and webhook-signature headers are required",
        )
    if not _TIMESTAMP.match(timestamp):
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "webhook-timestamp is not unix seconds"
        )
    sent_at = int(timestamp)
    check_tolerance(sent_at, tolerance_s, header="webhook-timestamp", now=now)
    candidates = []
    for entry in offered.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and signature:
            candidates.append(signature.encode())
    if not candidates:
        raise VerificationError(ErrorCode.MALFORMED_SIGNATURE, "webhook-signature has no v1 entry")
    # sign()'s base64 for each secret, as bytes, over content built once.
    content = f"{webhook_id}.{sent_at}.".encode() + delivery.body
    expected = (
        base64.b64encode(hmac.digest(decode_secret(secret), content, "sha256"))
        for secret in secrets
    )
    if not matches_any(expected, candidates):
        raise VerificationError(
            ErrorCode.INVALID_SIGNATURE, "no signature matches a configured secret"
        )


class StandardWebhooks(Provider):
    name = "standard"
    recorded_headers = ("content-type", "user-agent", "webhook-id", "webhook-timestamp")
    accepts_any_json = True

    def check_settings(self, settings: ProviderSettings) -> None:
        for secret in settings.secrets:
            decode_secret(secret)

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        verify_standard_signature(
            delivery, settings.secrets, settings.tolerance_s, now=delivery.received_at
        )

    def identify(self, delivery: Delivery, payload: Any) -> EventIdentity:
        event_type = payload.get("type") if isinstance(payload, dict) else None
        return EventIdentity(
            event_id=delivery.headers.get("webhook-id") or body_digest(delivery.body),
            event_type=event_type if isinstance(event_type, str) else "",
        )


PROVIDER = StandardWebhooks()

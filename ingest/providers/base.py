"""What a provider module provides, and the delivery it works on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingest.errors import ErrorCode
from models.settings import ProviderSettings

if TYPE_CHECKING:
    from ingest.inbound import InboundDirectory


@dataclass(frozen=True)
class Delivery:
    """A request as received: raw bytes (what signatures cover) and lower-cased headers."""

    body: bytes
    headers: Mapping[str, str]
    received_at: float


@dataclass(frozen=True)
class EventIdentity:
    """What the receiver needs to dedup and route a delivery.

    ``inline``: the sender waits for an answer in the response (Retell's inbound call);
    the provider's ``answer()`` gives it, and the event is still queued and recorded.
    """

    event_id: str
    event_type: str
    inline: bool = False


class VerificationError(Exception):
    """The delivery is not provably from the provider. ``code`` tells why (a 401 code:
    ``missing_signature``, ``malformed_signature``, ``invalid_signature``,
    ``timestamp_out_of_tolerance``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ShapeError(Exception):
    """Valid JSON, but not a shape this provider sends (answered 422)."""


class Provider:
    """A provider is one subclass in one module; the registry maps its URL name to it."""

    name: str = ""
    # False where the sender lets users change the content type (Cal.com's custom
    # payload templates): the body is then verified and judged by its bytes.
    requires_json_content_type: bool = True
    # True where the sender's spec lets the payload be any JSON value, not only an
    # object (Standard Webhooks); ``identify`` then gets arrays and scalars too.
    accepts_any_json: bool = False
    # Headers kept with the event (never signatures or anything secret).
    recorded_headers: tuple[str, ...] = ("content-type", "user-agent")

    def check_settings(self, settings: ProviderSettings) -> None:
        """Raise ValueError at startup for secrets this provider cannot use."""

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        """Raise VerificationError unless the delivery is authentic. Before parsing.

        A signed timestamp is judged against ``delivery.received_at`` (the arrival, not
        the clock at the call): a refused delivery re-verified by ``hookfleet quarantine
        release`` days later is judged as if its secret had been right when it came."""
        raise NotImplementedError

    def identify(self, delivery: Delivery, payload: Any) -> EventIdentity:
        """Idempotency key and event type; raise ShapeError for foreign shapes.
        ``payload`` is a dict unless ``accepts_any_json``."""
        raise NotImplementedError

    def reframe(self, delivery: Delivery, content_type: str) -> tuple[dict[str, Any], str] | None:
        """For a body that is not a JSON object: ``(payload, JSON text)`` to queue in its
        place, or None to refuse it (400/422). Only senders that really send such bodies
        (Cal.com's custom templates) override it."""
        return None

    def answer(
        self, payload: dict[str, Any], identity: EventIdentity, directory: InboundDirectory
    ) -> dict[str, Any]:
        """The synchronous reply for an ``inline`` event. Only Retell has one."""
        return self.empty_answer(identity)

    def empty_answer(self, identity: EventIdentity) -> dict[str, Any]:
        """A reply that is always valid: the sender falls back to its defaults."""
        return {}

    def headers_to_record(self, delivery: Delivery) -> dict[str, str]:
        return {h: delivery.headers[h] for h in self.recorded_headers if h in delivery.headers}


def body_digest(body: bytes) -> str:
    """The fallback idempotency key when a delivery carries none."""
    return "sha256:" + hashlib.sha256(body).hexdigest()

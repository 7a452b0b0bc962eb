"""What a provider module provides, and the delivery it works on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.settings import ProviderSettings


@dataclass(frozen=True)
class Delivery:
    """A request as received: raw bytes (what signatures cover) and lower-cased headers."""

    body: bytes
    headers: Mapping[str, str]
    received_at: float


@dataclass(frozen=True)
class EventIdentity:
    """What the receiver needs to dedup and route: key, type, queue."""

    event_id: str
    event_type: str
    queue: str


class VerificationError(Exception):
    """The delivery is not provably from the provider. ``code`` tells why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ShapeError(Exception):
    """Valid JSON, but not a shape this provider sends (answered 422)."""


class Provider:
    """A provider is one subclass in one module; the registry maps its URL name to it."""

    name: str = ""
    # Headers kept with the event (never signatures or anything secret).
    recorded_headers: tuple[str, ...] = ("content-type", "user-agent")

    def check_settings(self, settings: ProviderSettings) -> None:
        """Raise ValueError at startup for secrets this provider cannot use."""

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        """Raise VerificationError unless the delivery is authentic. Before parsing."""
        raise NotImplementedError

    def identify(self, delivery: Delivery, payload: dict[str, Any]) -> EventIdentity:
        """Idempotency key, event type and queue; raise ShapeError for foreign shapes."""
        raise NotImplementedError

    def headers_to_record(self, delivery: Delivery) -> dict[str, str]:
        return {h: delivery.headers[h] for h in self.recorded_headers if h in delivery.headers}


def body_digest(body: bytes) -> str:
    """The fallback idempotency key when a delivery carries none."""
    return "sha256:" + hashlib.sha256(body).hexdigest()

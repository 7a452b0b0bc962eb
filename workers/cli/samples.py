"""Sample deliveries for ``hookfleet send``: the bodies each provider really sends, made
new for every send.

The fixtures in ``workers/cli/fixtures/<provider>/`` are copies of the real-shaped bodies
of ``tests/fixtures/<provider>/`` (their sources are in each folder's SOURCES.md there:
Stripe's API reference objects, Retell's SDK and docs, Cal.com's ``sendPayload.ts``, the
Standard Webhooks spec); ``tests/unit/test_send.py`` holds them equal. They live in the
installed package so ``hookfleet send`` works from a ``pip install``.

:func:`fresh` gives a sample the ids a new event would have (a new Stripe ``evt_``, a
new Retell ``call_id``, a new Cal.com booking ``uid``, a new ``webhook-id``) and the
send's time, so each send is a new event; ``same_id=True`` keeps the fixture's ids and
times, so a second send is the same event (a duplicate, answered 200).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

PROVIDERS = ("stripe", "standard", "retell", "calcom")
# The fixture a bare ``hookfleet send <provider>`` sends.
DEFAULT_FIXTURE = {
    "stripe": "payment_intent.succeeded",
    "standard": "contact.created",
    "retell": "call_started",
    "calcom": "BOOKING_CREATED",
}
# Standard Webhooks sends its id in a header; the fixed one for ``same_id``.
SAME_WEBHOOK_ID = "msg_hookfleet_sample"


class UnknownFixture(LookupError):
    """No fixture of that name for the provider (the message lists the ones there are)."""


@dataclass(frozen=True)
class Sample:
    """One delivery to sign and post: the body's JSON value, and the headers that are
    part of the event itself (``webhook-id``), not of its signature."""

    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


def fixture_names(provider: str) -> list[str]:
    """The fixtures shipped for ``provider``, sorted."""
    folder = resources.files("workers.cli") / "fixtures" / provider
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_fixture(provider: str, name: str) -> Any:
    """The JSON value of fixture ``name``; raises UnknownFixture."""
    names = fixture_names(provider)
    if name not in names:
        raise UnknownFixture(f"no {provider} fixture {name!r}; there are: {', '.join(names)}")
    path = resources.files("workers.cli") / "fixtures" / provider / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _token(length: int = 24) -> str:
    return secrets.token_hex(length // 2)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fresh(provider: str, payload: Any, *, same_id: bool = False) -> Sample:
    """``payload`` as a new event of ``provider`` (see the module's docstring). A body
    that is not the provider's usual object (a file of the user's) is sent as it is."""
    if provider == "standard":
        webhook_id = SAME_WEBHOOK_ID if same_id else f"msg_{_token()}"
        if isinstance(payload, dict) and not same_id and "timestamp" in payload:
            payload = {**payload, "timestamp": _iso_now()}
        return Sample(payload, {"webhook-id": webhook_id})
    if same_id or not isinstance(payload, dict):
        return Sample(payload)
    if provider == "stripe":
        return Sample({**payload, "id": f"evt_{_token()}", "created": int(time.time())})
    if provider == "retell":
        return Sample(_fresh_retell(payload))
    if provider == "calcom":
        return Sample(_fresh_calcom(payload))
    return Sample(payload)


def _fresh_retell(payload: dict[str, Any]) -> dict[str, Any]:
    # The key is (call_id, event): a new call id is a new call. call_inbound has none.
    for subject, id_field in (("call", "call_id"), ("chat", "chat_id")):
        body = payload.get(subject)
        if isinstance(body, dict) and id_field in body:
            shift_ms = int(time.time() * 1000) - int(body.get("start_timestamp") or 0)
            renewed = {**body, id_field: f"{subject}_{_token(28)}"}
            for stamp in ("start_timestamp", "end_timestamp"):
                if isinstance(renewed.get(stamp), int) and body.get("start_timestamp"):
                    renewed[stamp] += shift_ms
            return {**payload, subject: renewed}
    return payload


def _fresh_calcom(payload: dict[str, Any]) -> dict[str, Any]:
    # The key is the trigger, the booking uid and its start: a new uid is a new booking.
    # MEETING_STARTED/ENDED send the booking flat, the others under "payload".
    renewed = {**payload, "createdAt": _iso_now()} if "createdAt" in payload else dict(payload)
    booking = payload.get("payload")
    if isinstance(booking, dict):
        if "uid" in booking:
            renewed["payload"] = {**booking, "uid": _token(22)}
    elif "uid" in payload:
        renewed["uid"] = _token(22)
    return renewed

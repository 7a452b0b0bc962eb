"""Cal.com: ``POST /webhooks/calcom``.

``X-Cal-Signature-256: <hex HMAC-SHA256(secret, raw_body)>``. There is no timestamp,
so no replay window: the dedup key is the only replay defence. A webhook saved in
Cal.com without a secret is sent with the literal ``no-secret-provided`` (newer senders
leave the header out); both are refused as unsigned.

What Cal.com sends (calcom/cal.com, ``packages/features/webhooks/lib/sendPayload.ts``,
``handleWebhookScheduledTriggers.ts``, ``scheduleTrigger.ts``,
``packages/features/tasker/tasks/triggerNoShow/common.ts``):

- ``{"triggerEvent", "createdAt", "payload": {...}}`` for most triggers
  (``sendPayload`` / ``sendGenericWebhookPayload``), ``application/json``;
- the booking **flat** at the top level, ``{"triggerEvent", ...booking}`` with no
  ``payload`` key, for ``MEETING_STARTED`` / ``MEETING_ENDED`` from the scheduled-trigger
  job (``scheduleTrigger`` stores ``JSON.stringify({triggerEvent, ...booking})``; the job
  sends it once and never retries);
- with a custom payload template, whatever the template renders (Handlebars, so values
  are HTML-escaped): a JSON template is re-serialized as JSON (or as ``false`` when the
  rendered text is not JSON), any other template is sent as is, as
  ``application/x-www-form-urlencoded``.

All of them are accepted once the signature holds (:meth:`CalCom.reframe` wraps what is
not a JSON object, see :func:`wrap_foreign_body`). Keys: :func:`event_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest.errors import ErrorCode
from ingest.providers.base import (
    Delivery,
    EventIdentity,
    Provider,
    VerificationError,
)
from ingest.providers.signing import matches_any
from models.settings import ProviderSettings

HEADER = "x-cal-signature-256"
UNSIGNED_SENTINEL = "no-secret-provided"
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

# What a body that is not a JSON object is wrapped in before it is queued (the task
# carries JSON text). The original text is kept whole under "body".
WRAPPER = "hookfleet_reframed"
# The event type of a custom-template body that names no trigger.
CUSTOM_TEMPLATE = "CUSTOM_TEMPLATE"

# `WebhookTriggerEvents` (packages/prisma/schema.prisma) and the test ping. A trigger
# outside this list is still accepted and recorded (Cal.com adds triggers over time).
LIFECYCLE = (
    "BOOKING_CREATED",
    "BOOKING_REQUESTED",
    "BOOKING_RESCHEDULED",
    "BOOKING_CANCELLED",
    "BOOKING_REJECTED",
    "BOOKING_PAYMENT_INITIATED",
    "BOOKING_PAID",
)
TRIGGERS = (
    *LIFECYCLE,
    "BOOKING_NO_SHOW_UPDATED",
    "MEETING_STARTED",
    "MEETING_ENDED",
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW",
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW",
    "RECORDING_READY",
    "RECORDING_TRANSCRIPTION_GENERATED",
    "INSTANT_MEETING",
    "OOO_CREATED",
    "FORM_SUBMITTED",
    "FORM_SUBMITTED_NO_EVENT",
    "ROUTING_FORM_FALLBACK_HIT",
    "WRONG_ASSIGNMENT_REPORT",
    "DELEGATION_CREDENTIAL_ERROR",
    "PING",
)


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
        raise VerificationError(
            ErrorCode.MISSING_SIGNATURE, "the X-Cal-Signature-256 header is required"
        )
    if offered == UNSIGNED_SENTINEL:
        raise VerificationError(
            ErrorCode.MISSING_SIGNATURE,
            "Cal.com sent no-secret-provided: set a secret on this webhook in Cal.com "
            "and the same one in HOOKFLEET_CALCOM_SECRETS",
        )
    if not _HEX_SHA256.match(offered):
        raise VerificationError(
            ErrorCode.MALFORMED_SIGNATURE, "X-Cal-Signature-256 is not a hex HMAC-SHA256"
        )
    expected = (sign(secret, delivery.body).encode() for secret in secrets)
    if not matches_any(expected, [offered.lower().encode()]):
        raise VerificationError(
            ErrorCode.INVALID_SIGNATURE, "the signature matches no configured secret"
        )


# --- Bodies that are not a JSON object: custom templates -----------------------------------

# A pair separator is an "&" that does not open an HTML entity: Handlebars writes a value's
# "&" as "&amp;" and its "=" as "&#x3D;", so those never split a pair.
_PAIR_SEPARATOR = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);)")


def form_fields(text: str) -> dict[str, str]:
    """``key=value`` pairs of a rendered non-JSON template, values HTML-unescaped.

    Not percent-decoded: Cal.com sends the rendered text as is (a ``+`` in a phone
    number is a plus). Pieces without ``=`` are skipped; the first of a repeated key wins.
    """
    fields: dict[str, str] = {}
    for piece in _PAIR_SEPARATOR.split(text):
        key, sep, value = piece.partition("=")
        key = html.unescape(key.strip())
        if sep and key and key not in fields:
            fields[key] = html.unescape(value.strip())
    return fields


def wrap_foreign_body(body: bytes, content_type: str) -> tuple[dict[str, Any], str]:
    """A body that is not a JSON object as ``(payload, JSON text)`` for the queue:
    ``{"triggerEvent": <from the fields or "">, "createdAt"?: <from the fields>,
    "hookfleet_reframed": {"content_type", "body": <the text as received>,
    "fields": {...}}}``. Bytes that are not UTF-8 are
    kept with U+FFFD in their place (the signature was checked over the raw bytes)."""
    text = body.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text)
    except (ValueError, RecursionError):  # not JSON (or nested past the parser's depth)
        parsed = None
    fields = form_fields(text) if parsed is None else {}
    wrapped: dict[str, Any] = {"triggerEvent": fields.get("triggerEvent", "")}
    if "createdAt" in fields:
        wrapped["createdAt"] = fields["createdAt"]
    wrapped[WRAPPER] = {"content_type": content_type, "body": text, "fields": fields}
    return wrapped, json.dumps(wrapped, ensure_ascii=False)


# --- Which deliveries are the same event ----------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A delivery read in whichever of Cal.com's shapes it came: the trigger, its
    ``createdAt``, and the object the trigger is about (``payload``, the flat top
    level, or a form template's fields)."""

    trigger: str
    created_at: str
    subject: Mapping[str, Any]

    @classmethod
    def read(cls, payload: Mapping[str, Any]) -> Envelope:
        wrapped = payload.get(WRAPPER)
        if isinstance(wrapped, dict) and isinstance(wrapped.get("fields"), dict):
            subject: Mapping[str, Any] = wrapped["fields"]
        elif isinstance(payload.get("payload"), dict):
            subject = payload["payload"]
        else:  # the scheduled job's flat booking, or a flat custom template
            subject = payload
        trigger = payload.get("triggerEvent")
        created = payload.get("createdAt")
        return cls(
            trigger=trigger if isinstance(trigger, str) and trigger else CUSTOM_TEMPLATE,
            created_at=created if isinstance(created, str) else "",
            subject=subject,
        )

    def text(self, name: str) -> str:
        value = self.subject.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return ""

    def booking_ref(self) -> str:
        """The booking's uid; for triggers that carry only its number, ``id:<n>``."""
        uid = self.text("uid") or self.text("bookingUid")
        if uid:
            return uid
        number = self.text("bookingId")
        if not number and self.trigger in ("MEETING_STARTED", "MEETING_ENDED"):
            number = self.text("id")  # the flat booking row: its own id
        return f"id:{number}" if number else ""

    def attendee_part(self) -> str:
        """The seat (``attendeeSeatId``), else who the attendees are, sorted: each one's
        e-mail, or for an attendee without one (a phone-only booker) their name and
        phone, so two such seat holders are two people."""
        seat = self.text("attendeeSeatId")
        if seat:
            return f"seat:{seat}"
        return ",".join(sorted(_who(a) for a in self._attendees() if _who(a)))

    def no_show_part(self) -> str:
        marks = sorted(
            f"{_who(a)}={int(bool(a.get('noShow')))}" for a in self._attendees() if _who(a)
        )
        return ",".join(marks)

    def _attendees(self) -> list[dict[str, Any]]:
        attendees = self.subject.get("attendees")
        return [a for a in attendees if isinstance(a, dict)] if isinstance(attendees, list) else []


def _who(attendee: Mapping[str, Any]) -> str:
    """An attendee within one booking, for the key: the e-mail (trimmed, lower-cased),
    else ``name:<name>|phone:<phone>``; empty when it names no one."""
    email = attendee.get("email")
    if isinstance(email, str) and email.strip():
        return email.strip().lower()
    parts = [
        f"{field}:{' '.join(value.split()).lower()}"
        for field, value in (("name", attendee.get("name")), ("phone", attendee.get("phoneNumber")))
        if isinstance(value, str) and value.strip()
    ]
    return "|".join(parts)


def event_key(envelope: Envelope, body: bytes) -> str:
    """The idempotency key of a Cal.com delivery (Cal.com sends no event id).

    What tells two deliveries apart: ``createdAt``. Cal.com stamps it once per trigger
    occurrence and subscriber (``new Date().toISOString()`` where the trigger fires,
    e.g. ``handleCancelBooking.ts``, ``handleWebhookTrigger.ts``) and a retry re-sends
    the same body (the tasker's ``sendWebhook`` task stores ``createdAt`` with the
    data, ``packages/features/tasker/tasks/sendWebook.ts``). A seat given up and booked
    again, or given up twice, is the same uid, start and person at a later
    ``createdAt``: new events. A body without ``createdAt`` (a custom template that
    does not render it) cannot tell its deliveries apart any other way, so its key ends
    in the body's SHA-256: only a byte-identical re-send is a duplicate.

    - Booking lifecycle (``BOOKING_CREATED`` … ``BOOKING_PAID``):
      ``T:uid:startTime:createdAt[:<who>]`` where ``<who>`` is ``seat:<attendeeSeatId>``
      or the sorted attendees (e-mail, else name and phone; left out when none).
    - ``MEETING_STARTED`` / ``MEETING_ENDED``: ``T:uid:startTime`` (once per booking:
      the scheduled job's flat booking carries the booking's own ``createdAt``).
    - ``BOOKING_NO_SHOW_UPDATED``: ``T:bookingUid:createdAt:<who=0|1,...>``.
    - ``AFTER_HOSTS_CAL_VIDEO_NO_SHOW``: ``T:bookingUid:hostEmail`` (one per host);
      ``AFTER_GUESTS_CAL_VIDEO_NO_SHOW``: ``T:bookingUid`` (the task may re-run with a
      new ``createdAt``; it is sent once per booking).
    - Lifecycle and no-show keys without ``createdAt``, a host no-show without
      ``hostEmail``, and anything else (recordings, forms, out-of-office, instant
      meetings, ``PING``, templates, future triggers) end in ``sha256:<body digest>``
      (with the booking uid after ``T`` when there is one).
    """
    trigger, ref, created = envelope.trigger, envelope.booking_ref(), envelope.created_at
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref and trigger in LIFECYCLE:
        who = envelope.attendee_part()
        key = f"{trigger}:{ref}:{envelope.text('startTime')}"
        key += f":{created}" if created else ""
        key += f":{who}" if who else ""
        return key if created else f"{key}:{digest}"
    if ref and trigger in ("MEETING_STARTED", "MEETING_ENDED"):
        return f"{trigger}:{ref}:{envelope.text('startTime')}"
    if ref and trigger == "BOOKING_NO_SHOW_UPDATED":
        key = f"{trigger}:{ref}:{created}:{envelope.no_show_part()}"
        return key if created else f"{key}:{digest}"
    host = envelope.text("hostEmail").strip().lower()
    if ref and trigger == "AFTER_HOSTS_CAL_VIDEO_NO_SHOW" and host:
        return f"{trigger}:{ref}:{host}"
    if ref and trigger == "AFTER_GUESTS_CAL_VIDEO_NO_SHOW":
        return f"{trigger}:{ref}"
    return f"{trigger}:{ref}:{digest}" if ref else f"{trigger}:{digest}"


class CalCom(Provider):
    name = "calcom"
    recorded_headers = ("content-type", "user-agent", "x-cal-webhook-version")
    requires_json_content_type = False

    def verify(self, delivery: Delivery, settings: ProviderSettings) -> None:
        verify_calcom_signature(delivery, settings.secrets)

    def reframe(self, delivery: Delivery, content_type: str) -> tuple[dict[str, Any], str] | None:
        """A rendered custom template that is not a JSON object, wrapped (see
        :func:`wrap_foreign_body`). Cal.com never sends invalid JSON as JSON, so that
        stays a 400."""
        if content_type == "application/json":
            try:
                json.loads(delivery.body)
            except (ValueError, RecursionError):
                return None
        return wrap_foreign_body(delivery.body, content_type)

    def identify(self, delivery: Delivery, payload: dict[str, Any]) -> EventIdentity:
        """Never refuses a shape: every JSON object an authentic Cal.com sends is one of
        its shapes (a custom template can render any object)."""
        envelope = Envelope.read(payload)
        return EventIdentity(
            event_id=event_key(envelope, delivery.body), event_type=envelope.trigger
        )


PROVIDER = CalCom()

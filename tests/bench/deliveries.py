"""Signed deliveries for the load generators, written once per case to a request file.

Lua (wrk) has no HMAC, so every request is signed here in advance, with timestamps
taken now (each case runs well within the providers' 5-minute tolerance). A request
file holds one request per line: ``path \\t name:value\\x1fname:value... \\t body``
(compact JSON bodies have neither tabs nor newlines).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.providers import calcom, retell, standard, stripe

# Secrets the benchmark configures on every receiver it starts.
SECRETS = {
    "standard": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "stripe": "whsec_bench_stripe_endpoint_secret",
    "calcom": "bench-calcom-secret",
    "retell": "key_bench_retell_api_key",
}
# The same, as the environment a receiver under load is started with.
SECRET_ENV = {f"HOOKFLEET_{p.upper()}_SECRETS": s for p, s in SECRETS.items()}
# The branch every warm call_inbound request dials (seeded by the benchmark).
WARM_NUMBER = "+4930901820"


def cold_number(i: int) -> str:
    """The i-th seeded branch number for cold call_inbound lookups (valid Berlin lines)."""
    return f"+49302{i:07d}"


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def line(self) -> str:
        headers = "\x1f".join(f"{k}:{v}" for k, v in self.headers.items())
        return f"{self.path}\t{headers}\t{self.body.decode()}"

    @classmethod
    def parse(cls, line: str) -> Request:
        path, headers, body = line.rstrip("\n").split("\t", 2)
        pairs = (h.split(":", 1) for h in headers.split("\x1f") if h)
        return cls(path, {k: v for k, v in pairs}, body.encode())


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_request(path: str, body: bytes, signature_headers: dict[str, str]) -> Request:
    """A JSON POST of ``body`` to ``path`` with the provider's signature headers."""
    return Request(path, {"Content-Type": "application/json", **signature_headers}, body)


def standard_request(tag: str, i: int) -> Request:
    body = _json({"type": "invoice.paid", "data": {"id": f"in_{tag}_{i}", "amount": 4200}})
    webhook_id, now = f"msg_{tag}_{i}", int(time.time())
    return _json_request(
        "/webhooks/standard",
        body,
        {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(now),
            "webhook-signature": standard.sign(
                SECRETS["standard"], body, now, webhook_id=webhook_id
            ),
        },
    )


def stripe_request(tag: str, i: int) -> Request:
    body = _json(
        {
            "id": f"evt_{tag}_{i}",
            "object": "event",
            "type": "invoice.paid",
            "livemode": False,
            "data": {"object": {"id": f"in_{tag}_{i}", "object": "invoice", "amount_paid": 4200}},
        }
    )
    now = int(time.time())
    return _json_request(
        "/webhooks/stripe",
        body,
        {
            "Stripe-Signature": stripe.sign(SECRETS["stripe"], body, now),
        },
    )


def calcom_request(tag: str, i: int) -> Request:
    body = _json(
        {
            "triggerEvent": "BOOKING_CREATED",
            "createdAt": "2026-11-23T09:00:00.000Z",
            "payload": {
                "uid": f"bk_{tag}_{i}",
                "title": "Haircut",
                "startTime": "2026-12-01T09:00:00Z",
                "endTime": "2026-12-01T09:30:00Z",
                "attendees": [
                    {"name": "Ada", "email": "ada@example.com", "timeZone": "Europe/Berlin"}
                ],
            },
        }
    )
    return _json_request(
        "/webhooks/calcom",
        body,
        {
            "X-Cal-Signature-256": calcom.sign(SECRETS["calcom"], body),
        },
    )


def _retell(body: bytes) -> Request:
    now_ms = int(time.time() * 1000)
    return _json_request(
        "/webhooks/retell",
        body,
        {
            "x-retell-signature": retell.sign(SECRETS["retell"], body, now_ms),
        },
    )


def retell_request(tag: str, i: int) -> Request:
    return _retell(
        _json(
            {
                "event": "call_ended",
                "call": {
                    "call_id": f"call_{tag}_{i}",
                    "agent_id": "agent_1",
                    "call_status": "ended",
                    "direction": "inbound",
                    "from_number": "+4915112345678",
                    "to_number": WARM_NUMBER,
                    "start_timestamp": 1764061200000,
                    "end_timestamp": 1764061260000,
                    "disconnection_reason": "user_hangup",
                },
            }
        )
    )


def _inbound(to_number: str, tag: str, i: int) -> Request:
    # The caller differs per request, so every body (and dedup key) is new.
    caller = f"+49151{i:08d}"
    return _retell(
        _json(
            {
                "event": "call_inbound",
                "call_inbound": {"from_number": caller, "to_number": to_number},
            }
        )
    )


def inbound_warm_request(tag: str, i: int) -> Request:
    return _inbound(WARM_NUMBER, tag, i)


def inbound_cold_request(tag: str, i: int) -> Request:
    """A seeded number in neither cache: each request dials a branch of its own."""
    return _inbound(cold_number(i), tag, i)


MAKERS: dict[str, Callable[[str, int], Request]] = {
    "standard": standard_request,
    "stripe": stripe_request,
    "calcom": calcom_request,
    "retell": retell_request,
    "inbound-warm": inbound_warm_request,
    "inbound-cold": inbound_cold_request,
}


def requests(
    kind: str, count: int, duplicates: float = 0.0, start: int = 0, seed: int = 1
) -> Iterator[Request]:
    """``count`` signed requests of ``kind``, numbered from ``start``; a ``duplicates``
    share re-sends an earlier one byte for byte (a provider's retry), the rest are
    unique."""
    make = MAKERS[kind]
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    sent: list[Request] = []
    for i in range(start, start + count):
        if sent and rng.random() < duplicates:
            yield sent[rng.randrange(len(sent))]
            continue
        request = make(tag, i)
        sent.append(request)
        yield request


def write_requests(path: Path, reqs: Iterator[Request]) -> int:
    count = 0
    with path.open("w") as out:
        for request in reqs:
            out.write(request.line() + "\n")
            count += 1
    return count


def read_requests(path: Path) -> list[Request]:
    with path.open() as lines:
        return [Request.parse(line) for line in lines if line.strip()]

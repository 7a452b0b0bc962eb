"""The whole road with real processes: gunicorn and celery workers from the Procfile,
real Redis, real MariaDB. What a provider sees, and what lands in the database."""

from __future__ import annotations

import http.client
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ingest.providers import calcom, retell, standard, stripe
from models import Appointment, Call, Customer
from models.business import Branch, Company
from models.contract import Queue
from models.events import EventStatus, WebhookEvent
from tests.processes import SIGNED_SECRETS as SECRETS
from tests.processes import Processes, request
from tests.servers import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def fleet(signed: Processes) -> Processes:
    """The session's signed fleet (tests/conftest.py): the Procfile's whole fleet on a
    Redis of its own and the shared MariaDB database, emptied for each test that reads
    it (``engine``); every test sends event ids of its own. A test that stops or
    reconfigures processes starts its own fleet."""
    return signed


@pytest.fixture
def engine(mariadb_url: str) -> Iterator[Engine]:
    engine = create_engine(mariadb_url)
    yield engine
    engine.dispose()


@pytest.fixture
def run() -> str:
    """Per attempt: a rerun (``--reruns``) on the module's fleet must not meet its first
    attempt's event ids as duplicates."""
    return uuid.uuid4().hex[:8]


def standard_headers(event_id: str, body: bytes) -> dict[str, str]:
    """A Standard Webhooks delivery's headers, signed with the fleet's secret."""
    now = int(time.time())
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(now),
        "webhook-signature": standard.sign(SECRETS["standard"], body, now, webhook_id=event_id),
    }


def post_standard(
    base_url: str, event_id: str, value: object, **headers: str
) -> tuple[int, dict[str, str], Any]:
    body = json.dumps(value).encode()
    all_headers = {**standard_headers(event_id, body), **headers}
    return request(base_url, "POST", "/webhooks/standard", body, all_headers)


def post_event(base_url: str, event_id: str) -> tuple[str, int, dict[str, str]]:
    body = {"type": "order.created", "data": {"order": event_id}}
    status, _, answer = post_standard(base_url, event_id, body)
    return event_id, status, answer


def test_deliveries_and_repeats_become_exactly_one_row_each(
    fleet: Processes, engine: Engine, run: str
) -> None:
    ids = [f"evt_{run}_{n:03d}" for n in range(200)]
    repeats = random.Random(7).sample(ids, 50)
    # Repeats are mixed in with the originals, so many race their first delivery.
    deliveries = ids + repeats
    random.Random(11).shuffle(deliveries)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda e: post_event(fleet.base_url, e), deliveries))

    answers: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event_id, status, answer in results:
        answers[event_id].append((status, answer["status"]))
    for event_id, seen in answers.items():
        assert sorted(seen) == [(200, "duplicate")] * (len(seen) - 1) + [(202, "accepted")], (
            event_id
        )
    assert Counter(status for _, status, _ in results) == {202: 200, 200: 50}

    def all_processed() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == 200

    wait_until(all_processed, 90, "200 processed rows", interval=0.5)
    with engine.connect() as connection:
        rows = connection.execute(
            select(WebhookEvent.event_id, WebhookEvent.correlation_id, WebhookEvent.queue)
        ).all()
    assert sorted(r.event_id for r in rows) == ids  # every event once, none twice
    accepted = {e: a["correlation_id"] for e, s, a in results if s == 202}
    assert {r.event_id: r.correlation_id for r in rows} == accepted
    assert {r.queue for r in rows} == {Queue.DEFAULT}
    assert fleet.running["beat"].poll() is None


def test_oversized_chunked_body_is_refused_by_the_real_server(fleet: Processes) -> None:
    host, port = fleet.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 65536 for _ in range(32))  # 2 MiB, no Content-Length
    connection.request(
        "POST",
        "/webhooks/standard",
        body=chunks,
        encode_chunked=True,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    response = connection.getresponse()

    assert response.status == 413
    assert b'"body_too_large"' in response.read()
    connection.close()


def test_correlation_id_reaches_the_worker_log(fleet: Processes, engine: Engine, run: str) -> None:
    status, headers, _ = post_standard(
        fleet.base_url, f"corr-check-{run}", {"type": "t"}, **{"X-Request-ID": f"trace-{run}"}
    )

    assert status == 202 and headers["x-request-id"] == f"trace-{run}"
    wait_until(lambda: f"trace-{run}" in fleet.log("worker_default"), 30, "worker log line")
    line = next(x for x in fleet.log("worker_default").splitlines() if f"trace-{run}" in x)
    assert f'"event_id": "corr-check-{run}"' in line


def test_logs_are_json_lines_from_every_process(fleet: Processes, run: str) -> None:
    event_id = f"json-logs-{run}"
    status, _, _ = post_standard(fleet.base_url, event_id, {"type": "t"})
    assert status == 202

    def processed_line() -> bool:
        return any(
            '"processed"' in x and f'"{event_id}"' in x
            for x in fleet.log("worker_default").splitlines()
        )

    wait_until(processed_line, 30, "the event's log line")

    web = [json.loads(x) for x in fleet.log("web").splitlines() if x.strip()]
    assert any(x["logger"] == "gunicorn.error" and "Booting worker" in x["message"] for x in web)
    # One line per delivery, ours, with its outcome; no second access line from gunicorn.
    ours = [x for x in web if x.get("event_id") == event_id]
    assert [(x["logger"], x["message"], x["outcome"]) for x in ours] == [
        ("hookfleet.ingest", "accepted", "accepted")
    ]
    assert not [x for x in web if x["logger"] == "gunicorn.access"]
    worker = [json.loads(x) for x in fleet.log("worker_default").splitlines() if x.startswith("{")]
    # Celery's own lines too (the worker is ready), and one line per event with its
    # outcome and the task id Celery knows it by.
    assert any(x["logger"].startswith("celery") and x["message"].endswith("ready.") for x in worker)
    processed = next(
        x for x in worker if x["message"] == "processed" and x.get("event_id") == event_id
    )
    assert processed["logger"] == "hookfleet.worker" and processed["level"] == "INFO"
    assert processed["event_id"] == event_id and processed["task_id"]


def signed_deliveries() -> list[tuple[str, bytes, dict[str, str], str, str]]:
    """(provider, body, headers, expected event_id, expected queue), signed for real."""
    now = int(time.time())
    stripe_body = json.dumps(
        {
            "id": "evt_e2e_1",
            "object": "event",
            "type": "invoice.paid",
            "data": {"object": {"id": "in_1"}},
        }
    ).encode()
    calcom_body = json.dumps(
        {
            "triggerEvent": "BOOKING_CREATED",
            "createdAt": "2026-11-23T08:00:00Z",
            "payload": {
                "uid": "bk_e2e_1",
                "title": "Haircut",
                "startTime": "2026-11-24T09:00:00Z",
                "endTime": "2026-11-24T09:30:00Z",
                "attendees": [],
                "eventTypeId": 7,
            },
        }
    ).encode()
    retell_body = json.dumps(
        {
            "event": "call_ended",
            "call": {
                "call_id": "call_e2e_1",
                "call_status": "ended",
                "direction": "inbound",
                "from_number": "+4915112345678",
                "to_number": "+49301234567",
            },
        }
    ).encode()
    standard_body = json.dumps({"type": "user.created", "data": {"id": 1}}).encode()
    return [
        (
            "stripe",
            stripe_body,
            {"Stripe-Signature": stripe.sign(SECRETS["stripe"], stripe_body, now)},
            "evt_e2e_1",
            Queue.DEFAULT,
        ),
        (
            "calcom",
            calcom_body,
            {"X-Cal-Signature-256": calcom.sign(SECRETS["calcom"], calcom_body)},
            "BOOKING_CREATED:bk_e2e_1:2026-11-24T09:00:00Z:2026-11-23T08:00:00Z",
            Queue.DEFAULT,
        ),
        (
            "retell",
            retell_body,
            {"x-retell-signature": retell.sign(SECRETS["retell"], retell_body, now * 1000)},
            "call_e2e_1:call_ended",
            Queue.HIGH,
        ),
        (
            "standard",
            standard_body,
            {
                "webhook-id": "msg_e2e_1",
                "webhook-timestamp": str(now),
                "webhook-signature": standard.sign(
                    SECRETS["standard"], standard_body, now, webhook_id="msg_e2e_1"
                ),
            },
            "msg_e2e_1",
            Queue.DEFAULT,
        ),
    ]


def test_every_provider_lands_in_webhook_events_with_its_key_and_queue(
    signed: Processes, engine: Engine
) -> None:
    deliveries = signed_deliveries()
    for provider, body, headers, event_id, _queue in deliveries:
        status, _, answer = request(signed.base_url, "POST", f"/webhooks/{provider}", body, headers)
        assert (status, answer["event_id"]) == (202, event_id), (provider, answer)

    def all_processed() -> bool:
        with engine.connect() as connection:
            done = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
            )
        return done == len(deliveries)

    wait_until(all_processed, 60, "one processed row per provider", interval=0.5)

    with engine.connect() as connection:
        rows = connection.execute(
            select(WebhookEvent.provider, WebhookEvent.event_id, WebhookEvent.queue)
        ).all()
    assert sorted(tuple(r) for r in rows) == sorted(
        (provider, event_id, queue) for provider, _, _, event_id, queue in deliveries
    )


def test_inbound_call_is_answered_in_line_and_then_recorded(
    signed: Processes, engine: Engine
) -> None:
    with Session(engine) as session:
        company = Company(name="Praxis Dr. Berg")
        session.add(
            Branch(
                company=company,
                name="Zentrum",
                phone="+49 30 1234567",
                retell_agent_id="agent_zentrum",
            )
        )
        session.commit()
    body = json.dumps(
        {
            "event": "call_inbound",
            "call_inbound": {"from_number": "+4915112345678", "to_number": "030 1234567"},
        }
    ).encode()
    signature = retell.sign(SECRETS["retell"], body, int(time.time() * 1000))

    status, _, answer = request(
        signed.base_url, "POST", "/webhooks/retell", body, {"x-retell-signature": signature}
    )

    assert status == 200
    assert answer["call_inbound"]["override_agent_id"] == "agent_zentrum"
    assert answer["call_inbound"]["dynamic_variables"]["company_name"] == "Praxis Dr. Berg"

    def recorded() -> bool:
        with engine.connect() as connection:
            return (
                connection.execute(
                    select(WebhookEvent.queue).where(
                        WebhookEvent.event_type == "call_inbound",
                        WebhookEvent.status == EventStatus.PROCESSED,
                    )
                ).first()
                is not None
            )

    wait_until(recorded, 60, "the inbound event to be recorded", interval=0.3)


def test_deliveries_become_calls_appointments_and_customers_through_real_workers(
    signed: Processes, engine: Engine
) -> None:
    with Session(engine) as session:
        company = Company(name="Salon Ada")
        session.add(
            Branch(company=company, name="Mitte", phone="030 901820", calcom_event_type_id=1001)
        )
        session.commit()
        company_id = company.id
    call: dict[str, object] = {
        "call_id": "call_life_1",
        "call_status": "ongoing",
        "direction": "inbound",
        "from_number": "0151 12345678",
        "to_number": "+4930901820",
        "start_timestamp": 1764061200000,
    }
    ended = {**call, "call_status": "ended", "end_timestamp": 1764061260000}
    analyzed = {**ended, "call_analysis": {"call_summary": "Booked a haircut."}}
    retell_bodies = [
        {"event": "call_analyzed", "call": analyzed},  # a retry overtook the others
        {"event": "call_started", "call": call},
        {"event": "call_ended", "call": ended},
        {"event": "call_ended", "call": ended},  # Retell's double call_ended
        {"event": "call_ended", "call": {"call_status": "ended"}},  # no call id: refused
    ]

    def booking(trigger: str, uid: str, start: str, **extra: object) -> dict[str, object]:
        payload = {
            "uid": uid,
            "startTime": start,
            "endTime": start.replace(":00:00Z", ":30:00Z"),
            "eventTypeId": 1001,
            "attendees": [{"name": "Ada", "email": "ADA@example.com", "timeZone": "UTC"}],
            **extra,
        }
        return {
            "triggerEvent": trigger,
            "createdAt": f"2026-11-23T1{len(uid)}:00:00Z",
            "payload": payload,
        }

    calcom_bodies = [
        booking("BOOKING_CREATED", "bk_a", "2026-12-01T09:00:00Z"),
        booking("BOOKING_RESCHEDULED", "bk_bb", "2026-12-02T10:00:00Z", rescheduleUid="bk_a"),
        booking("BOOKING_CANCELLED", "bk_bb", "2026-12-02T10:00:00Z", cancellationReason="Ill"),
    ]
    answers = []
    for body in retell_bodies:
        raw = json.dumps(body).encode()
        signature = retell.sign(SECRETS["retell"], raw, int(time.time() * 1000))
        headers = {"x-retell-signature": signature}
        answers.append(request(signed.base_url, "POST", "/webhooks/retell", raw, headers)[0])
    for body in calcom_bodies:
        raw = json.dumps(body).encode()
        headers = {"X-Cal-Signature-256": calcom.sign(SECRETS["calcom"], raw)}
        answers.append(request(signed.base_url, "POST", "/webhooks/calcom", raw, headers)[0])
    # The call without a call id is refused at the door (422): never a 202 the
    # worker must fail.
    assert answers == [202, 202, 202, 200, 422, 202, 202, 202]

    def settled() -> bool:
        with engine.connect() as connection:
            open_rows = connection.scalar(
                select(func.count()).where(WebhookEvent.status == EventStatus.RECEIVED)
            )
            total = connection.scalar(select(func.count()).select_from(WebhookEvent))
        return total == 6 and open_rows == 0

    wait_until(settled, 60, "every event processed", interval=0.5)

    with Session(engine) as session:
        statuses = Counter(session.scalars(select(WebhookEvent.status)))
        assert statuses == {EventStatus.PROCESSED: 6}
        saved = session.scalars(select(Call)).one()
        assert (saved.call_id, saved.status, saved.summary) == (
            "call_life_1",
            "ended",
            "Booked a haircut.",
        )
        assert (saved.company_id, saved.from_number) == (company_id, "+4915112345678")
        by_uid = {a.calcom_uid: a for a in session.scalars(select(Appointment))}
        assert (by_uid["bk_a"].status, by_uid["bk_bb"].status) == ("rescheduled", "cancelled")
        assert by_uid["bk_bb"].cancellation_reason == "Ill"
        customers = session.scalars(select(Customer)).all()
        assert len(customers) == 2  # the caller (by phone) and the booker (by email)
        assert {c.id for c in customers} == {saved.customer_id, by_uid["bk_a"].customer_id}

"""Every Cal.com trigger, as Cal.com's own sender shapes it (``tests/fixtures/calcom/``,
each file names its source), through the real receiver (signed) into Redis, then through
the worker's recording function into SQLite and MariaDB: the rows a user would look at."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ingest import create_app
from ingest.providers import calcom
from models import Appointment, AppointmentAttendee, Customer, WebhookEvent
from models.contract import Queue
from models.events import EventStatus
from tests.helpers import QUEUES, queued
from workers.pipeline.record import IncomingEvent, Outcome, record_batch, record_event

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calcom"
SECRET = "cal-fixture-secret-41c2b7"


def fixture_body(name: str, **payload_changes: Any) -> tuple[bytes, str]:
    """The bytes Cal.com would send for fixture ``name`` (JSON.stringify: compact, UTF-8),
    and its content type. ``payload_changes`` edit the ``payload`` object first."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    if "body_text" in data:
        return data["body_text"].encode(), data["content_type"]
    body = data["body"]
    body.get("payload", body).update(payload_changes)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), data[
        "content_type"
    ]


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


@pytest.fixture
def receiver(redis_url: str) -> FlaskClient:
    return create_app(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_CALCOM_SECRETS": SECRET}
    ).test_client()


Post = Callable[..., Any]


@pytest.fixture
def post(receiver: FlaskClient) -> Post:
    def send(body: bytes, content_type: str = "application/json") -> Any:
        return receiver.post(
            "/webhooks/calcom",
            data=body,
            content_type=content_type,
            headers={"X-Cal-Signature-256": calcom.sign(SECRET, body)},
        )

    return send


def take_queued(redis_client: redis.Redis) -> list[IncomingEvent]:
    """What the receiver queued, as the worker task reads it, and the queues emptied."""
    events = []
    for queue in QUEUES:
        events += [
            IncomingEvent.from_kwargs(m["decoded_body"][1]) for m in queued(redis_client, queue)
        ]
        redis_client.delete(queue)
    return events


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- The receiver: every fixture accepted, keyed and routed ---------------------------------

UID = "bk_fx_created"
EXPECTED: dict[str, tuple[str | None, str]] = {
    # fixture: (event_id, or None for "<trigger>[:uid]:sha256:<body digest>"; queue)
    "BOOKING_CREATED": (
        f"BOOKING_CREATED:{UID}:2026-12-01T09:00:00Z:2026-11-20T14:03:11.512Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_REQUESTED": (
        "BOOKING_REQUESTED:bk_fx_requested:2026-12-01T09:00:00Z:2026-11-20T14:03:11.512Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_RESCHEDULED": (
        "BOOKING_RESCHEDULED:bk_fx_moved:2026-12-03T14:00:00Z:2026-11-21T08:00:00.000Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_CANCELLED": (
        f"BOOKING_CANCELLED:{UID}:2026-12-01T09:00:00Z:2026-11-22T10:00:00.000Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_REJECTED": (
        "BOOKING_REJECTED:bk_fx_requested:2026-12-01T09:00:00Z:2026-11-21T09:00:00.000Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_PAYMENT_INITIATED": (
        "BOOKING_PAYMENT_INITIATED:bk_fx_paid:2026-12-01T09:00:00Z:2026-11-20T14:03:11.512Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_PAID": (
        "BOOKING_PAID:bk_fx_paid:2026-12-01T09:00:00Z:2026-11-20T14:05:00.000Z:anna.weber@example.com",
        Queue.DEFAULT,
    ),
    "BOOKING_NO_SHOW_UPDATED": (
        f"BOOKING_NO_SHOW_UPDATED:{UID}:2026-12-01T10:00:00.000Z:anna.weber@example.com=1",
        Queue.DEFAULT,
    ),
    "MEETING_STARTED": (f"MEETING_STARTED:{UID}:2026-12-01T09:00:00.000Z", Queue.HIGH),
    "MEETING_ENDED": (f"MEETING_ENDED:{UID}:2026-12-01T09:00:00.000Z", Queue.HIGH),
    "AFTER_HOSTS_CAL_VIDEO_NO_SHOW": (
        f"AFTER_HOSTS_CAL_VIDEO_NO_SHOW:{UID}:termine@praxis-nord.example",
        Queue.DEFAULT,
    ),
    "AFTER_GUESTS_CAL_VIDEO_NO_SHOW": (
        f"AFTER_GUESTS_CAL_VIDEO_NO_SHOW:{UID}",
        Queue.DEFAULT,
    ),
    "RECORDING_READY": (None, Queue.LOW),
    "RECORDING_TRANSCRIPTION_GENERATED": (None, Queue.LOW),
    "INSTANT_MEETING": (None, Queue.HIGH),
    "OOO_CREATED": (None, Queue.DEFAULT),
    "FORM_SUBMITTED": (None, Queue.DEFAULT),
    "FORM_SUBMITTED_NO_EVENT": (None, Queue.DEFAULT),
    "WRONG_ASSIGNMENT_REPORT": (None, Queue.DEFAULT),
    "PING": (None, Queue.LOW),
    "seat_1_BOOKING_CREATED": (
        "BOOKING_CREATED:bk_fx_seated:2026-12-05T10:00:00Z:2026-11-21T10:00:00.000Z:seat:seat_ref_1",
        Queue.DEFAULT,
    ),
    "seat_2_BOOKING_CREATED": (
        "BOOKING_CREATED:bk_fx_seated:2026-12-05T10:00:00Z:2026-11-22T10:00:00.000Z:seat:seat_ref_2",
        Queue.DEFAULT,
    ),
    "seat_3_BOOKING_CREATED": (
        "BOOKING_CREATED:bk_fx_seated:2026-12-05T10:00:00Z:2026-11-23T10:00:00.000Z:seat:seat_ref_3",
        Queue.DEFAULT,
    ),
    "seat_2_BOOKING_CANCELLED": (
        "BOOKING_CANCELLED:bk_fx_seated:2026-12-05T10:00:00Z:2026-11-24T10:00:00.000Z:ben.kurz@example.com",
        Queue.DEFAULT,
    ),
    # A template without createdAt: only a byte-identical re-send is the same delivery.
    "template_form_urlencoded": (
        "BOOKING_CREATED:bk_fx_form:2026-12-02T08:00:00.000Z:{digest}",
        Queue.DEFAULT,
    ),
    "template_json": (None, Queue.DEFAULT),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(fixture_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", fixture_names())
def test_every_trigger_is_accepted_keyed_and_routed(
    name: str, post: Post, redis_client: redis.Redis
) -> None:
    body, content_type = fixture_body(name)

    response = post(body, content_type)

    assert response.status_code == 202, response.get_data()
    [event] = take_queued(redis_client)
    expected_id, queue = EXPECTED[name]
    trigger = name.split("_", 2)[2] if name.startswith("seat_") else name
    if name.startswith("template_"):
        trigger = "BOOKING_CREATED" if name == "template_form_urlencoded" else "CUSTOM_TEMPLATE"
    expected_id = expected_id and expected_id.replace("{digest}", digest(body))
    if expected_id is None:
        uid = UID if name.startswith("RECORDING_") else None
        expected_id = f"{trigger}:{uid}:{digest(body)}" if uid else f"{trigger}:{digest(body)}"
    assert (event.event_id, event.event_type, event.queue) == (expected_id, trigger, queue)
    # A byte-identical retry stays a duplicate.
    again = post(body, content_type)
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    assert take_queued(redis_client) == []


def test_a_json_template_that_rendered_to_false_is_recorded_not_refused(
    post: Post, redis_client: redis.Redis
) -> None:
    # sendPayload.ts applyTemplate: JSON.stringify(jsonParse(compiled)) is "false" when a
    # value's quote broke the rendered JSON; Cal.com still sends it, signed, as JSON.
    response = post(b"false")

    assert response.status_code == 202
    [event] = take_queued(redis_client)
    assert event.event_type == "CUSTOM_TEMPLATE"
    assert json.loads(event.payload)["hookfleet_reframed"]["body"] == "false"


def test_invalid_json_sent_as_json_is_still_400(post: Post, redis_client: redis.Redis) -> None:
    response = post(b'{"triggerEvent": ')

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert take_queued(redis_client) == []


# --- The worker: the rows a user looks at ---------------------------------------------------


def deliver(
    post: Post,
    redis_client: redis.Redis,
    sessions: sessionmaker[Session],
    name: str,
    **changes: Any,
) -> int:
    """Send fixture ``name`` through the receiver and record what it queued, as the
    worker does. Returns the receiver's status code."""
    body, content_type = fixture_body(name, **changes)
    return post_and_record(post, redis_client, sessions, body, content_type)


def post_and_record(
    post: Post,
    redis_client: redis.Redis,
    sessions: sessionmaker[Session],
    body: bytes,
    content_type: str,
) -> int:
    """Post ``body`` signed and record what the receiver queued, as the worker does (each
    queued event must be processed). Returns the receiver's status code."""
    status: int = post(body, content_type).status_code
    for event in take_queued(redis_client):
        assert record_event(sessions, event) is Outcome.PROCESSED
    return status


def appointment(sessions: sessionmaker[Session], uid: str) -> Appointment:
    with sessions() as session:
        found = session.scalars(select(Appointment).where(Appointment.calcom_uid == uid)).one()
        session.expunge(found)
        return found


def attendee_rows(sessions: sessionmaker[Session], uid: str) -> list[AppointmentAttendee]:
    """The attendee rows of booking ``uid``, in the order they were made (detached)."""
    with sessions() as session:
        found = session.scalars(
            select(AppointmentAttendee)
            .join(Appointment)
            .where(Appointment.calcom_uid == uid)
            .order_by(AppointmentAttendee.id)
        ).all()
        session.expunge_all()
        return list(found)


def attendees(sessions: sessionmaker[Session], uid: str) -> dict[str, AppointmentAttendee]:
    return {row.email or "": row for row in attendee_rows(sessions, uid)}


def count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_meeting_from_booking_to_end_with_no_shows(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    assert deliver(post, redis_client, sessions, "BOOKING_CREATED") == 202
    booked = appointment(sessions, UID)
    assert (booked.status, booked.calcom_booking_id, booked.title) == (
        "booked",
        5501,
        "Erstgespräch between Praxis Nord and Anna Weber",
    )
    anna = attendees(sessions, UID)["anna.weber@example.com"]
    assert anna.customer_id == booked.customer_id is not None

    assert deliver(post, redis_client, sessions, "MEETING_STARTED") == 202  # flat, no payload key
    started = appointment(sessions, UID)
    assert started.status == "started"
    assert started.started_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    assert deliver(post, redis_client, sessions, "AFTER_HOSTS_CAL_VIDEO_NO_SHOW") == 202
    assert deliver(post, redis_client, sessions, "AFTER_GUESTS_CAL_VIDEO_NO_SHOW") == 202
    assert appointment(sessions, UID).host_no_show is True
    assert attendees(sessions, UID)["anna.weber@example.com"].no_show is True

    assert deliver(post, redis_client, sessions, "MEETING_ENDED") == 202
    ended = appointment(sessions, UID)
    assert (ended.status, ended.ended_at) == ("ended", datetime(2026, 12, 1, 9, 30, tzinfo=UTC))

    for recorded_only in (
        "RECORDING_READY",
        "RECORDING_TRANSCRIPTION_GENERATED",
        "WRONG_ASSIGNMENT_REPORT",
    ):
        assert deliver(post, redis_client, sessions, recorded_only) == 202
    # A late BOOKING_CREATED re-sent by Cal.com never reopens the closed appointment.
    assert deliver(post, redis_client, sessions, "BOOKING_CREATED") == 200
    assert appointment(sessions, UID).status == "ended"
    assert count(sessions, Appointment) == 1
    assert count(sessions, WebhookEvent) == 8


def test_no_show_is_set_and_unset_per_attendee_and_a_late_old_update_does_not_undo_it(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    deliver(post, redis_client, sessions, "BOOKING_CREATED")
    marked = {"attendees": [{"email": "anna.weber@example.com", "noShow": True}]}
    unmarked = {"attendees": [{"email": "anna.weber@example.com", "noShow": False}]}

    assert deliver(post, redis_client, sessions, "BOOKING_NO_SHOW_UPDATED", **marked) == 202
    assert attendees(sessions, UID)["anna.weber@example.com"].no_show is True

    # Unmarked an hour later: a new update, not a duplicate.
    body, _ = fixture_body("BOOKING_NO_SHOW_UPDATED", **unmarked)
    later = body.replace(b"2026-12-01T10:00:00.000Z", b"2026-12-01T11:00:00.000Z")
    assert post(later).status_code == 202
    for event in take_queued(redis_client):
        record_event(sessions, event)
    assert attendees(sessions, UID)["anna.weber@example.com"].no_show is False

    # The first update again with another createdAt, older than the unmarking: recorded,
    # but it does not undo the newer state.
    older = fixture_body("BOOKING_NO_SHOW_UPDATED", **marked)[0].replace(
        b"2026-12-01T10:00:00.000Z", b"2026-12-01T10:30:00.000Z"
    )
    assert post(older).status_code == 202
    for event in take_queued(redis_client):
        record_event(sessions, event)
    assert attendees(sessions, UID)["anna.weber@example.com"].no_show is False


def test_reschedule_chain_and_cancellation(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    deliver(post, redis_client, sessions, "BOOKING_CREATED")
    assert deliver(post, redis_client, sessions, "BOOKING_RESCHEDULED") == 202

    old, new = appointment(sessions, UID), appointment(sessions, "bk_fx_moved")
    assert old.status == "rescheduled"
    assert (new.status, new.rescheduled_from_uid) == ("booked", UID)
    assert new.starts_at == datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
    assert new.customer_id == old.customer_id is not None

    assert deliver(post, redis_client, sessions, "BOOKING_CANCELLED") == 202
    cancelled = appointment(sessions, UID)
    assert (cancelled.status, cancelled.cancellation_reason) == ("cancelled", "Kann leider nicht")
    assert attendees(sessions, UID)["anna.weber@example.com"].status == "cancelled"
    assert appointment(sessions, "bk_fx_moved").status == "booked"


def test_requested_then_rejected_and_payment_then_paid(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    deliver(post, redis_client, sessions, "BOOKING_REQUESTED")
    assert appointment(sessions, "bk_fx_requested").status == "pending"
    deliver(post, redis_client, sessions, "BOOKING_REJECTED")
    rejected = appointment(sessions, "bk_fx_requested")
    assert (rejected.status, rejected.cancellation_reason) == ("rejected", "Ausgebucht")

    # Paid first, initiated late: paid and booked either way.
    deliver(post, redis_client, sessions, "BOOKING_PAID")
    deliver(post, redis_client, sessions, "BOOKING_PAYMENT_INITIATED")
    paid = appointment(sessions, "bk_fx_paid")
    assert (paid.status, paid.payment_status) == ("booked", "paid")


@pytest.mark.parametrize(
    "name",
    [
        "OOO_CREATED",
        "FORM_SUBMITTED",
        "FORM_SUBMITTED_NO_EVENT",
        "INSTANT_MEETING",
        "PING",
        "template_json",
        "RECORDING_READY",
    ],
)
def test_triggers_without_a_booking_effect_are_recorded_only(
    name: str, post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    assert deliver(post, redis_client, sessions, name) == 202

    with sessions() as session:
        [row] = session.scalars(select(WebhookEvent)).all()
        assert row.status is EventStatus.PROCESSED
    assert count(sessions, Appointment) == 0


def test_seats_are_one_row_each_and_one_seat_cancelling_touches_only_that_seat(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    for seat in ("seat_1_BOOKING_CREATED", "seat_2_BOOKING_CREATED", "seat_3_BOOKING_CREATED"):
        assert deliver(post, redis_client, sessions, seat) == 202

    slot = appointment(sessions, "bk_fx_seated")
    seats = attendees(sessions, "bk_fx_seated")
    assert {email: row.seat_uid for email, row in seats.items()} == {
        "anna.weber@example.com": "seat_ref_1",
        "ben.kurz@example.com": "seat_ref_2",
        "cem.aydin@example.com": "seat_ref_3",
    }
    assert len({row.customer_id for row in seats.values()}) == 3
    assert slot.customer_id == seats["anna.weber@example.com"].customer_id
    assert count(sessions, Customer) == 3

    assert deliver(post, redis_client, sessions, "seat_2_BOOKING_CANCELLED") == 202
    assert deliver(post, redis_client, sessions, "seat_2_BOOKING_CANCELLED") == 200

    after = appointment(sessions, "bk_fx_seated")
    seats = attendees(sessions, "bk_fx_seated")
    assert after.status == "booked"
    assert after.customer_id == slot.customer_id
    assert {email: row.status for email, row in seats.items()} == {
        "anna.weber@example.com": "booked",
        "ben.kurz@example.com": "cancelled",
        "cem.aydin@example.com": "booked",
    }


def test_a_seat_cancellation_that_arrives_first_does_not_cancel_the_slot(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    assert deliver(post, redis_client, sessions, "seat_2_BOOKING_CANCELLED") == 202
    for seat in ("seat_1_BOOKING_CREATED", "seat_3_BOOKING_CREATED"):
        deliver(post, redis_client, sessions, seat)

    assert appointment(sessions, "bk_fx_seated").status == "booked"
    seats = attendees(sessions, "bk_fx_seated")
    assert seats["ben.kurz@example.com"].status == "cancelled"
    assert seats["cem.aydin@example.com"].status == "booked"


def test_a_flat_meeting_ended_for_an_unknown_booking_still_closes_an_appointment(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    assert deliver(post, redis_client, sessions, "MEETING_ENDED") == 202

    ended = appointment(sessions, UID)
    assert (ended.status, ended.calcom_booking_id) == ("ended", 5501)
    assert attendees(sessions, UID)["anna.weber@example.com"].customer_id is not None


def test_a_meeting_ended_naming_the_booking_only_by_id_finds_it(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    deliver(post, redis_client, sessions, "BOOKING_CREATED")
    body = json.loads(fixture_body("MEETING_ENDED")[0])
    del body["uid"]  # MeetingEndedDTO (webhooks/lib/dto/types.ts) carries the id only

    assert post(json.dumps(body).encode()).status_code == 202
    for event in take_queued(redis_client):
        record_event(sessions, event)

    assert appointment(sessions, UID).status == "ended"
    assert count(sessions, Appointment) == 1


def test_a_form_urlencoded_template_is_recorded_and_booked_with_unescaped_values(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    body, content_type = fixture_body("template_form_urlencoded")
    assert post(body, content_type).status_code == 202
    [event] = take_queued(redis_client)
    assert json.loads(event.payload)["hookfleet_reframed"]["body"] == body.decode()
    assert record_event(sessions, event) is Outcome.PROCESSED

    booked = appointment(sessions, "bk_fx_form")
    assert (booked.status, booked.title) == ("booked", "Beratung & Planung f=r O'Neil")


def test_the_batch_path_applies_seats_in_message_order(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    names = ["seat_1_BOOKING_CREATED", "seat_2_BOOKING_CREATED", "seat_2_BOOKING_CANCELLED"]
    for name in names:
        body, content_type = fixture_body(name)
        assert post(body, content_type).status_code == 202

    outcomes = record_batch(sessions, take_queued(redis_client))

    assert outcomes == [Outcome.PROCESSED] * 3
    seats = attendees(sessions, "bk_fx_seated")
    assert {e: r.status for e, r in seats.items()} == {
        "anna.weber@example.com": "booked",
        "ben.kurz@example.com": "cancelled",
    }


def test_cancelling_a_seated_booking_whose_only_seat_is_known_cancels_the_booking(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    # cancelAttendeeSeat.ts refuses below two attendees: the last seat's cancellation
    # is the booking's (handleCancelBooking.ts), listing that one attendee.
    deliver(post, redis_client, sessions, "seat_1_BOOKING_CREATED")
    anna_only = [{"email": "anna.weber@example.com", "name": "Anna Weber"}]

    assert (
        deliver(post, redis_client, sessions, "seat_2_BOOKING_CANCELLED", attendees=anna_only)
        == 202
    )

    assert appointment(sessions, "bk_fx_seated").status == "cancelled"
    assert attendees(sessions, "bk_fx_seated")["anna.weber@example.com"].status == "cancelled"


def test_a_booking_without_seats_is_cancelled_whole_whoever_is_listed(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    guest = {"email": "guest@example.com", "name": "Gast", "timeZone": "Europe/Berlin"}
    first = json.loads(fixture_body("BOOKING_CREATED")[0])["payload"]["attendees"][0]
    deliver(post, redis_client, sessions, "BOOKING_CREATED", attendees=[first, guest])

    assert deliver(post, redis_client, sessions, "BOOKING_CANCELLED", attendees=[first]) == 202

    assert appointment(sessions, UID).status == "cancelled"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"[" * 100_000, "application/x-www-form-urlencoded", 202),
        ("Grüße=\udcff".encode("utf-8", "surrogateescape"), "text/plain", 202),
        (b"", "application/x-www-form-urlencoded", 400),
    ],
    ids=["deep-nesting-as-form", "not-utf8", "empty"],
)
def test_odd_template_bodies_are_answered_without_a_server_error(
    body: bytes, content_type: str, status: int, post: Post, redis_client: redis.Redis
) -> None:
    response = post(body, content_type)

    assert response.status_code == status, response.get_data()
    if status == 202:
        [event] = take_queued(redis_client)
        assert event.event_type == "CUSTOM_TEMPLATE"
        # What the worker will read: JSON, the text kept (U+FFFD for the bad byte).
        assert json.loads(event.payload)["hookfleet_reframed"]["body"] == body.decode(
            "utf-8", errors="replace"
        )
    else:
        assert response.get_json()["error"]["code"] == "empty_body"
        assert take_queued(redis_client) == []


def test_a_booking_moved_away_and_back_in_place_is_two_moves(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    deliver(post, redis_client, sessions, "BOOKING_CREATED")
    moves = [
        ("2026-12-01T10:00:00Z", "2026-11-21T08:00:00.000Z"),
        ("2026-12-01T09:00:00Z", "2026-11-21T09:00:00.000Z"),
        ("2026-12-01T10:00:00Z", "2026-11-21T10:00:00.000Z"),  # the first start again
    ]
    for start, created in moves:
        body = json.loads(fixture_body("BOOKING_CREATED")[0])
        body["triggerEvent"], body["createdAt"] = "BOOKING_RESCHEDULED", created
        body["payload"]["startTime"] = start
        assert post(json.dumps(body).encode()).status_code == 202
        for event in take_queued(redis_client):
            record_event(sessions, event)

    assert appointment(sessions, UID).starts_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_attendees_whose_emails_differ_only_by_an_accent_are_two_seats(
    post: Post, redis_client: redis.Redis, sessions: sessionmaker[Session]
) -> None:
    # MariaDB's default collation compares jürgen@ and jurgen@ equal; they are two people.
    people = [
        {"email": "jurgen@example.com", "name": "Jurgen", "timeZone": "Europe/Berlin"},
        {"email": "jürgen@example.com", "name": "Jürgen", "timeZone": "Europe/Berlin"},
    ]

    assert deliver(post, redis_client, sessions, "BOOKING_CREATED", attendees=people) == 202

    assert set(attendees(sessions, UID)) == {"jurgen@example.com", "jürgen@example.com"}

"""Bodies at the Retell limit that escape to twice their size still fit the database's
packet: on MariaDB with the shipped ``max_allowed_packet`` (deploy/mariadb.cnf) every
write fits whole; with a smaller packet the call is still written, without the columns
it repeats from ``raw_payload``."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import undefer

from models.calls import Call
from models.contract import Queue
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import PROVIDER_MAX_BODY_BYTES, Settings
from tests.databases import packet_limited_database
from tests.factories import incoming_event
from tests.servers import MariaDBServer
from workers.packets import escaped_size
from workers.pipeline.record import IncomingEvent, Outcome, record_batch

LIMIT = PROVIDER_MAX_BODY_BYTES["retell"]
CNF = Path(__file__).resolve().parents[2] / "deploy" / "mariadb.cnf"
UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def shipped_packet() -> int:
    match = re.search(r"^max_allowed_packet\s*=\s*(\d+)([KMG]?)\s*$", CNF.read_text(), re.M)
    assert match is not None
    return int(match.group(1)) * UNITS.get(match.group(2), 1)


def worst_body(filler: str) -> str:
    """A call_analyzed body just under the Retell limit, its transcript all ``filler``
    (as JSON text: an apostrophe stays one byte, a backslash is written ``\\\\``)."""
    head = {"event": "call_analyzed", "call": {"call_id": "", "transcript": ""}}
    skeleton = json.dumps(head)
    unit = len(json.dumps(filler)) - 2
    count = (LIMIT - len(skeleton) - 64) // unit
    body = json.dumps(
        {
            "event": "call_analyzed",
            "call": {"call_id": "call_" + uuid.uuid4().hex, "transcript": filler * count},
        }
    )
    assert LIMIT - 200 < len(body.encode()) <= LIMIT
    return body


def event(body: str) -> IncomingEvent:
    call_id = json.loads(body)["call"]["call_id"]
    return incoming_event(
        "retell",
        f"{call_id}:call_analyzed",
        body,
        event_type="call_analyzed",
        queue=Queue.HIGH,
        headers={"x-retell-signature": "v=1,d=" + "0" * 64},
    )


@pytest.fixture
def packet_url(mariadb_server: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database on a server whose max_allowed_packet is ``request.param`` bytes."""
    with packet_limited_database(mariadb_server, request.param) as url:
        yield url


def test_the_shipped_packet_fits_four_times_the_largest_body() -> None:
    body = worst_body("'")
    raw, transcript = escaped_size(body), escaped_size(json.loads(body)["call"]["transcript"])

    assert raw + transcript + 64 * 1024 <= shipped_packet()
    assert shipped_packet() >= 4 * LIMIT + 1024**2


@pytest.mark.parametrize("packet_url", [shipped_packet()], indirect=True)
@pytest.mark.slow
def test_worst_escaping_bodies_at_the_limit_are_stored_whole_with_the_shipped_packet(
    packet_url: str,
) -> None:
    # 6 MB of apostrophes, 3 M escaped backslashes, and two more in the same batch.
    bodies = [worst_body("'"), worst_body("\\"), worst_body('"'), worst_body("'")]
    engine = make_engine(Settings(database_url=packet_url))
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT @@max_allowed_packet")) == shipped_packet()
        sessions = make_sessionmaker(engine)

        assert record_batch(sessions, [event(b) for b in bodies]) == [Outcome.PROCESSED] * 4

        with sessions() as session:
            calls = session.scalars(
                select(Call).options(undefer(Call.transcript), undefer(Call.raw_payload))
            ).all()
            statuses = set(session.scalars(select(WebhookEvent.status)))
    finally:
        engine.dispose()
    assert statuses == {EventStatus.PROCESSED}
    assert sorted(c.raw_payload or "" for c in calls) == sorted(bodies)
    assert sorted(c.transcript or "" for c in calls) == sorted(
        json.loads(b)["call"]["transcript"] for b in bodies
    )


@pytest.mark.parametrize("packet_url", [16 * 1024**2], indirect=True)
@pytest.mark.slow
def test_with_a_smaller_packet_the_call_is_written_without_its_repeated_transcript(
    packet_url: str,
) -> None:
    body = worst_body("'")
    engine = make_engine(Settings(database_url=packet_url))
    try:
        sessions = make_sessionmaker(engine)

        assert record_batch(sessions, [event(body)]) == [Outcome.PROCESSED]

        with sessions() as session:
            call = session.scalars(
                select(Call).options(undefer(Call.transcript), undefer(Call.raw_payload))
            ).one()
    finally:
        engine.dispose()
    assert call.raw_payload == body
    assert call.transcript is None
    assert call.status == "ended"

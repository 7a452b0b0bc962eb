"""Real sizes: body limits per provider that fit the largest real delivery, batch writes
under the database's packet limit, and a long Retell call from gunicorn to ``calls``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker, undefer

from ingest.providers import retell
from models.calls import Call
from models.engine import make_engine, make_sessionmaker
from models.events import EventStatus, WebhookEvent
from models.settings import (
    DEFAULT_MAX_BODY_BYTES,
    PROVIDER_MAX_BODY_BYTES,
    ConfigError,
    Settings,
)
from tests.databases import packet_limited_database
from tests.factories import incoming_event
from tests.long_calls import call_body
from tests.processes import ONE_RECEIVER_WORKER, request, running_fleet
from tests.servers import MariaDBServer, wait_until
from workers.pipeline.record import IncomingEvent, Outcome, record_batch, split_by_bytes

RETELL_KEY = "key_8f3a1c2e9b7d4f60a5e1c3b2d9f7e6a4"
MIB = 1024 * 1024

# --- Limits ------------------------------------------------------------------------


def test_each_provider_gets_its_default_limit_when_nothing_is_set() -> None:
    settings = Settings.from_env({})

    assert settings.body_limit("retell") == PROVIDER_MAX_BODY_BYTES["retell"] == 6 * MIB
    for name in ("stripe", "standard", "calcom"):
        assert settings.body_limit(name) == DEFAULT_MAX_BODY_BYTES == MIB


def test_the_global_limit_applies_to_every_provider_without_its_own() -> None:
    settings = Settings.from_env(
        {"HOOKFLEET_MAX_BODY_BYTES": "2000", "HOOKFLEET_STRIPE_MAX_BODY_BYTES": "9000"}
    )

    assert settings.body_limit("retell") == settings.body_limit("standard") == 2000
    assert settings.body_limit("stripe") == 9000
    assert settings.largest_body_limit == 9000


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_a_provider_limit_that_is_not_a_positive_number_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="HOOKFLEET_RETELL_MAX_BODY_BYTES"):
        Settings.from_env({"HOOKFLEET_RETELL_MAX_BODY_BYTES": value})


def test_retells_longest_call_fits_its_default_limit_with_margin() -> None:
    # Retell allows calls of up to two hours; PII scrubbing adds a third word-timed copy.
    longest = len(call_body("call_limit", 120, scrubbed=True))
    an_hour = len(call_body("call_limit", 60))

    assert an_hour > MIB  # the old global default refused these
    assert longest * 1.5 < Settings().body_limit("retell")
    # Escaped, the stored row takes twice the body, a call's row four times: the
    # shipped 32 MiB packet holds both (tests/integration/test_packets.py).
    assert 4 * Settings().largest_body_limit + MIB <= 32 * MIB


def test_a_body_over_its_providers_limit_is_413_and_one_under_it_is_read(
    redis_url: str,
) -> None:
    from ingest import create_app

    env = {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_RETELL_VERIFY": "off",
        "HOOKFLEET_STRIPE_VERIFY": "off",
    }
    client = create_app(env).test_client()
    body = call_body("call_limit_2", 70)  # ~1.3 MiB
    assert MIB < len(body)

    retell_answer = client.post("/webhooks/retell", data=body, content_type="application/json")
    stripe_answer = client.post("/webhooks/stripe", data=body, content_type="application/json")

    assert retell_answer.status_code == 202
    assert stripe_answer.status_code == 413
    assert stripe_answer.json["error"]["code"] == "body_too_large"


# --- Batch writes under the packet limit ---------------------------------------------


def big_event(n: int, size: int) -> IncomingEvent:
    return incoming_event(
        "stripe",
        f"evt_big_{n}",
        # Accents and quotes: more bytes than characters, and every quote escaped in SQL.
        '{"id": "evt_big_' + str(n) + '", "pad": "' + '\u00e9\\"' * (size // 4) + '"}',
        event_type="invoice.paid",
        correlation_id=f"corr-{n}",
    )


def test_rows_are_split_by_bytes_in_order() -> None:
    rows = [{"payload": "x" * size} for size in (10, 10, 5000, 10, 10)]

    runs = split_by_bytes(rows, budget=4096 * 2 + 100)

    assert [len(run) for run in runs] == [2, 1, 2]
    assert [row for run in runs for row in run] == rows


def test_a_batch_of_many_large_bodies_inserts_on_either_database(
    sessions: sessionmaker[Session],
) -> None:
    batch = [big_event(n, 400_000) for n in range(40)]  # ~40 x 0.5 MB, one batch

    assert record_batch(sessions, batch) == [Outcome.PROCESSED] * 40
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 40


@pytest.fixture
def small_packet_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A database whose server takes packets of 512 KiB only (new connections)."""
    with packet_limited_database(mariadb_server, 524288) as url:
        yield url


@pytest.mark.slow
def test_a_batch_stays_under_the_servers_packet_limit(small_packet_url: str) -> None:
    # 12 bodies of 250 KB (~375 KB escaped): one statement would be 4.5 MB, and
    # PyMySQL's own split (statements up to 1,024,000 bytes) would send two at once.
    engine = make_engine(Settings(database_url=small_packet_url))
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT @@max_allowed_packet")) == 524288
        outcomes = record_batch(
            make_sessionmaker(engine), [big_event(n, 250_000) for n in range(12)]
        )
    finally:
        engine.dispose()

    assert outcomes == [Outcome.PROCESSED] * 12


# --- End to end: a long call through gunicorn and a celery worker --------------------


@pytest.mark.slow
def test_a_two_hour_retell_call_lands_in_calls_through_the_real_fleet(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    body = call_body("call_two_hours", 120)
    # A truncated emoji in the transcript too: accepted, stored as U+FFFD.
    body = body.replace(b'"transcript":"Agent: ', b'"transcript":"Agent: \\ud83d ', 1)
    assert len(body) > 2 * MIB
    with running_fleet(
        tmp_path,
        redis_url,
        database_url,
        names=("web", "worker_high"),
        **ONE_RECEIVER_WORKER,
        HOOKFLEET_RETELL_SECRETS=RETELL_KEY,
    ) as fleet:
        headers = {"x-retell-signature": retell.sign(RETELL_KEY, body, int(time.time() * 1000))}
        status, _, answer = request(fleet.base_url, "POST", "/webhooks/retell", body, headers)
        assert (status, answer["event_id"]) == (202, "call_two_hours:call_analyzed")

        engine = create_engine(database_url)
        try:

            def landed() -> bool:
                with engine.connect() as connection:
                    return bool(
                        connection.scalar(
                            select(func.count()).where(WebhookEvent.status == EventStatus.PROCESSED)
                        )
                    )

            wait_until(landed, 90, "the long call to be processed", interval=0.5)
            with Session(engine) as session:
                call = session.scalars(
                    select(Call).options(undefer(Call.transcript), undefer(Call.raw_payload))
                ).one()
        finally:
            engine.dispose()
        assert "Traceback" not in fleet.log("worker_high")
    assert call.call_id == "call_two_hours" and call.status == "ended"
    assert call.transcript is not None and call.transcript.startswith("Agent: \ufffd ")
    assert call.raw_payload is not None and len(call.raw_payload) > 2 * MIB
    assert call.summary == "The caller booked an appointment with Doctor Schneider."

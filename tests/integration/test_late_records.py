"""Answered inbound calls' records: durable before the answer leaves, in Redis or else
in the database (ingest/inbound_record.py), and never let go without a log line naming
the event (ingest/late_records.py). Real Redis (healthy, stopped or frozen), real
databases; the receiver app in process."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ingest import create_app
from ingest import late_records as late_records_module
from ingest.late_records import LateRecords
from ingest.providers import retell
from ingest.spool import Spool
from models.engine import make_engine
from models.events import EventStatus, WebhookEvent
from models.perprocess import PerProcess
from models.settings import Settings
from tests.helpers import dedup_keys, total_queued
from tests.servers import RedisServer, free_port, wait_until

API_KEY = "key_retell_late_0123456789"


@pytest.fixture
def fresh_late_records(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test process's late records of its own (an exit closes them for good),
    finished with the test, not at the interpreter's exit."""
    own: PerProcess[LateRecords] = PerProcess(LateRecords)
    monkeypatch.setattr(late_records_module, "_LATE", own)
    yield
    own.get().finish(time.monotonic())


class Lines(logging.Handler):
    """The receiver's log records (its ``hookfleet`` logger does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("hookfleet.ingest")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def call(caller: str) -> bytes:
    return json.dumps(
        {
            "event": "call_inbound",
            "call_inbound": {"from_number": caller, "to_number": "+4930901820"},
        }
    ).encode()


def answered(client: FlaskClient, body: bytes) -> float:
    """Post the call; asserts it was answered 200 and returns how long that took (s).
    The response is not closed: what the record did, it did before the answer."""
    headers = {"x-retell-signature": retell.sign(API_KEY, body, int(time.time() * 1000))}
    started = time.monotonic()
    response = client.post(
        "/webhooks/retell", data=body, content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    return time.monotonic() - started


def receiver(database_url: str, redis_url: str, var_dir: Path | None = None) -> FlaskClient:
    return create_app(receiver_env(database_url, redis_url, var_dir)).test_client()


def receiver_env(database_url: str, redis_url: str, var_dir: Path | None = None) -> dict[str, str]:
    env = {
        "HOOKFLEET_REDIS_URL": redis_url,
        "HOOKFLEET_DATABASE_URL": database_url,
        "HOOKFLEET_RETELL_SECRETS": API_KEY,
        "HOOKFLEET_REDIS_TIMEOUT_S": "1",
    }
    if var_dir is not None:
        env["HOOKFLEET_VAR_DIR"] = str(var_dir)
    return env


def event_ids(lines: Lines, message: str, level: int) -> list[str]:
    return [
        r.__dict__["event_id"]
        for r in lines.records
        if r.getMessage() == message and r.levelno == level
    ]


def kept_rows(database_url: str) -> list[dict[str, Any]]:
    engine = make_engine(Settings(database_url=database_url))
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(
                    WebhookEvent.event_id,
                    WebhookEvent.status,
                    WebhookEvent.queue,
                    WebhookEvent.payload,
                ).where(WebhookEvent.event_type == "call_inbound")
            ).all()
    finally:
        engine.dispose()
    return [row._asdict() for row in rows]


@pytest.mark.usefixtures("fresh_late_records")
def test_a_record_redis_refuses_is_in_the_database_before_its_answer_and_left_to_the_sweep(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """A receiver killed outright (SIGKILL, OOM) a moment after the answers loses
    nothing: the rows are written while it runs. At its exit the rows stay, each named
    in a WARNING, none at ERROR."""
    stopped = RedisServer(tmp_path / "redis")  # never started: every try is refused
    client = receiver(database_url, stopped.url)
    callers = [f"+49151000000{i:02d}" for i in range(3)]
    for n, caller in enumerate(callers, 1):
        answered(client, call(caller))
        assert len(kept_rows(database_url)) == n  # written before the answer left

    rows = kept_rows(database_url)
    assert {row["status"] for row in rows} == {EventStatus.RECEIVED}
    assert {row["queue"] for row in rows} == {"hookfleet.high"}
    assert sorted(json.loads(row["payload"])["call_inbound"]["from_number"] for row in rows) == (
        callers
    )
    refused = event_ids(lines, "could not record inline event", logging.WARNING)
    assert sorted(refused) == sorted(row["event_id"] for row in rows)

    late_records_module.late_records().finish(time.monotonic() + 3.5)

    assert sorted(
        event_ids(lines, "inline event left to the stuck-work sweep", logging.WARNING)
    ) == sorted(refused)
    assert event_ids(lines, "inline event not recorded", logging.ERROR) == []
    assert event_ids(lines, "inline event record unconfirmed", logging.ERROR) == []
    assert len(kept_rows(database_url)) == 3  # written once, whatever was tried again


@pytest.mark.usefixtures("fresh_late_records")
def test_a_record_neither_redis_nor_the_database_took_is_on_disk_before_its_answer(
    tmp_path: Path, lines: Lines
) -> None:
    """Redis and the database both away: the answers still go out at once, each record a
    file in this host's spool before its answer (a kill now loses nothing); at the exit
    each is named at WARNING with its file, none at ERROR, and the files stay for the
    next receiver."""
    stopped = RedisServer(tmp_path / "redis")
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    client = receiver(nowhere, stopped.url, var_dir=tmp_path / "var")
    took = []
    for n in range(1, 5):
        took.append(answered(client, call(f"+49151000001{n:02d}")))
        assert len(spooled(tmp_path / "var")) == n  # on disk before the answer left
    assert max(took) < 2.0  # Retell waits 10 s
    refused = event_ids(lines, "could not record inline event", logging.WARNING)
    assert len(set(refused)) == 4
    assert sorted(r["event_id"] for r in spooled(tmp_path / "var")) == sorted(refused)
    assert event_ids(lines, "inline event answered before it was recorded", logging.ERROR) == []

    lost = late_records_module.late_records().finish(time.monotonic() + 4)

    assert lost == 0
    assert sorted(event_ids(lines, "inline event left in the spool", logging.WARNING)) == sorted(
        refused
    )
    assert event_ids(lines, "inline event not recorded", logging.ERROR) == []
    assert len(spooled(tmp_path / "var")) == 4


@pytest.mark.usefixtures("fresh_late_records")
def test_every_record_in_no_durable_place_is_named_at_error_when_the_receiver_exits(
    tmp_path: Path, lines: Lines
) -> None:
    """Redis, the database and the disk all refuse (the spool's directory is a file):
    the answers still go out at once, each with an ERROR naming its event, and at the
    exit every record gets its ERROR line and counts as lost (the exit status)."""
    stopped = RedisServer(tmp_path / "redis")
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "spool").write_text("not a directory")
    client = receiver(nowhere, stopped.url, var_dir=tmp_path / "var")
    took = [answered(client, call(f"+49151000001{i:02d}")) for i in range(4)]
    assert max(took) < 2.0  # Retell waits 10 s
    refused = event_ids(lines, "could not record inline event", logging.WARNING)
    assert len(set(refused)) == 4
    undurable = event_ids(lines, "inline event answered before it was recorded", logging.ERROR)
    assert sorted(undurable) == sorted(refused)
    wait_until(lambda: late_records_module.late_records().waiting() == 4, 10, "4 held")

    started = time.monotonic()
    lost = late_records_module.late_records().finish(time.monotonic() + 4)

    assert time.monotonic() - started < 4 + 2 * 2 + 3  # the deadline, a last write each
    assert lost == 4
    assert sorted(event_ids(lines, "inline event not recorded", logging.ERROR)) == sorted(refused)
    assert late_records_module.late_records().waiting() == 0


@pytest.mark.usefixtures("fresh_late_records")
def test_records_a_former_receiver_left_in_the_spool_are_queued_by_the_next_once(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """What one receiver left on disk (Redis and the database away at its exit) a
    receiver started later on the same host, with the same database, queues in Redis
    once it is back: each record once, its file deleted, a second start finds nothing."""
    stopped = RedisServer(tmp_path / "redis")
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    var_dir = tmp_path / "var"
    left = spool_from_a_former_receiver(var_dir, database_url, stopped.url, nowhere)
    assert len(left) == 3

    server = stopped.start()
    try:
        later = create_app(receiver_env(database_url, server.url, var_dir=var_dir)).extensions[
            "hookfleet_inbound_record"
        ]
        assert later.adopt_spool() == 3
        wait_until(lambda: total_queued(server.client()) == 3, 10, "3 queued")
        wait_until(lambda: spooled(var_dir) == [], 10, "the spool emptied")
        assert sorted(event_ids(lines, "recorded inline event late", logging.INFO)) == sorted(left)
        assert len(dedup_keys(server.client())) == 3
        assert later.adopt_spool() == 0
        assert total_queued(server.client()) == 3
    finally:
        server.stop()


@pytest.mark.usefixtures("fresh_late_records")
def test_a_spool_of_another_database_is_not_taken(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """Two deployments sharing a var directory: a receiver takes only the records whose
    rows belong to its own database."""
    stopped = RedisServer(tmp_path / "redis")
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    var_dir = tmp_path / "var"
    spool_from_a_former_receiver(var_dir, database_url, stopped.url, nowhere)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    later = create_app(receiver_env(other, stopped.url, var_dir=var_dir)).extensions[
        "hookfleet_inbound_record"
    ]
    assert later.adopt_spool() == 0
    assert len(spooled(var_dir)) == 3

    # ...and names them: the same database spelled otherwise is such an other URL.
    later.warn_of_strays()
    warned = [
        r.__dict__
        for r in lines.records
        if r.levelno == logging.WARNING and "spool of another database URL" in r.getMessage()
    ]
    shown = make_url(database_url).set(password=None).render_as_string()
    assert [(w["database_url"], w["records"]) for w in warned] == [(shown, 3)]
    password = make_url(database_url).password
    assert not password or all(str(password) not in w["database_url"] for w in warned)


def spool_from_a_former_receiver(
    var_dir: Path, database_url: str, redis_url: str, reachable_never: str
) -> list[str]:
    """Answer 3 calls on a receiver whose Redis and database are away, as if its
    database were ``database_url`` (the spool is per database): their records end on
    disk. Returns their event ids. The receiver's late records are finished."""
    client = receiver(reachable_never, redis_url, var_dir=var_dir)
    recorder = client.application.extensions["hookfleet_inbound_record"]
    spool = Spool(str(var_dir), database_url)  # the spool of that database
    recorder._spool = PerProcess(lambda: spool)
    for i in range(3):
        answered(client, call(f"+49151000004{i:02d}"))
    assert late_records_module.late_records().finish(time.monotonic() + 0.5) == 0
    spool.release()  # as its process's end would
    late_records_module._LATE = PerProcess(LateRecords)  # the next receiver's, fresh
    return [r["event_id"] for r in spooled(var_dir)]


def spooled(var_dir: Path) -> list[dict[str, Any]]:
    """The records in the spool under ``var_dir`` (ingest/spool.py)."""
    return [json.loads(p.read_text()) for p in sorted((var_dir / "spool").glob("*/*/*.json"))]


@pytest.mark.usefixtures("fresh_late_records")
def test_a_record_handed_over_after_the_exit_began_is_kept_in_the_database_at_once(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """An answer whose record is tried while the worker is already leaving (its drain
    over) is not left to a thread that no longer runs."""
    stopped = RedisServer(tmp_path / "redis")
    client = receiver(database_url, stopped.url)
    late_records_module.late_records().finish(time.monotonic())

    answered(client, call("+4915100000200"))

    assert len(kept_rows(database_url)) == 1
    assert len(event_ids(lines, "inline event left to the stuck-work sweep", logging.WARNING)) == 1
    assert event_ids(lines, "inline event not recorded", logging.ERROR) == []
    assert event_ids(lines, "inline event record unconfirmed", logging.ERROR) == []


@pytest.mark.usefixtures("fresh_late_records")
def test_a_call_is_queued_in_redis_before_its_answer_leaves(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """Redis healthy: the claim and the message are in Redis when the answer comes;
    nothing goes to the database or the background queue."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = receiver(database_url, server.url)
        answered(client, call("+4915100000300"))
        assert total_queued(server.client()) == 1
        assert len(dedup_keys(server.client())) == 1
    finally:
        server.stop()
    assert kept_rows(database_url) == []
    assert late_records_module.late_records().waiting() == 0
    assert event_ids(lines, "could not record inline event", logging.WARNING) == []


@pytest.mark.usefixtures("fresh_late_records")
def test_a_call_answered_while_redis_is_frozen_is_in_the_database_before_its_answer(
    tmp_path: Path, database_url: str, lines: Lines
) -> None:
    """A frozen Redis (SIGSTOP: connections accepted, nothing answered) holds the
    record's try for its short bound, not the 2 s Redis timeout; then the database
    takes it before the answer, and the next calls skip Redis at once."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = receiver(database_url, server.url)
        server.freeze()
        took = [answered(client, call(f"+49151000004{i:02d}")) for i in range(3)]
        rows = kept_rows(database_url)
        server.thaw()
        wait_until(lambda: total_queued(server.client()) >= 3, 20, "the late records")
    finally:
        server.stop()
    assert max(took) < 1.0, took  # the client's timeout is 1 s; the bound a quarter of it
    assert len(rows) == 3 and {row["status"] for row in rows} == {EventStatus.RECEIVED}
    refused = event_ids(lines, "could not record inline event", logging.WARNING)
    assert sorted(refused) == sorted(row["event_id"] for row in rows)
    assert event_ids(lines, "inline event answered before it was recorded", logging.ERROR) == []

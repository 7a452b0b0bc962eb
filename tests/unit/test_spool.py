"""The receiver's spool (ingest/spool.py): records on disk that a process gone from this
host left are taken by exactly one other process, whole, and a live process's never."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.shelved_events import event_of
from ingest.spool import Spool, SpooledRecord
from models.broker.envelope import build_event_message
from models.contract import EventMessage

DATABASE = "mysql+pymysql://hookfleet:secret@db.example:3306/hookfleet"


def record(n: int, **changed: Any) -> SpooledRecord:
    event = EventMessage(
        provider="retell",
        event_id=f"call_inbound:{n}",
        event_type="call_inbound",
        queue="hookfleet.high",
        correlation_id=f"c{n}",
        received_at=datetime(2026, 12, 1, tzinfo=UTC),
        headers={},
        payload=json.dumps({"event": "call_inbound", "n": n}),
    )
    fields = {
        "event_id": event.event_id,
        "dedup_key": f"hookfleet:dedup:retell:call_inbound:{n}",
        "correlation_id": event.correlation_id,
        "ttl_s": 3600,
        "queue": event.queue,
        "message": build_event_message(event)[1],
    }
    return SpooledRecord(**{**fields, **changed})


def spool_of_a_gone_process(var_dir: Path, records: int, database: str = DATABASE) -> None:
    """Spool ``records`` in a child process that then exits (its lock goes with it)."""
    child = multiprocessing.get_context("fork").Process(
        target=_spool_and_exit, args=(str(var_dir), records, database)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _spool_and_exit(var_dir: str, records: int, database: str) -> None:
    spool = Spool(var_dir, database)
    for n in range(records):
        spool.put(record(n))
    os._exit(0)


def test_records_of_another_spelling_of_the_url_are_named_not_taken(tmp_path: Path) -> None:
    """A receiver adopts its own URL's spool only; another URL's (the same database
    spelled otherwise: a host alias, a query option) it names, without the password."""
    spool_of_a_gone_process(tmp_path, 2)
    respelled = Spool(str(tmp_path), DATABASE.replace("db.example", "db.example."))
    assert respelled.adopt() == []
    assert respelled.strays() == [("mysql+pymysql://hookfleet:***@db.example:3306/hookfleet", 2)]
    running = Spool(str(tmp_path), DATABASE.replace("db.example", "db2"))
    running.put(record(5))  # a live receiver's records are its own: not strays
    assert respelled.strays() == [("mysql+pymysql://hookfleet:***@db.example:3306/hookfleet", 2)]
    assert Spool(str(tmp_path), DATABASE).strays() == []


def test_a_live_process_records_are_never_taken(tmp_path: Path) -> None:
    owner = Spool(str(tmp_path), DATABASE)
    path = owner.put(record(1))
    assert json.loads(path.read_text())["event_id"] == "call_inbound:1"
    assert Spool(str(tmp_path), DATABASE).adopt() == []
    owner.release()
    taken = Spool(str(tmp_path), DATABASE).adopt()
    assert [r.event_id for _, r in taken] == ["call_inbound:1"]


def test_a_gone_process_records_are_taken_whole_and_its_directory_removed(tmp_path: Path) -> None:
    spool_of_a_gone_process(tmp_path, 3)
    adopter = Spool(str(tmp_path), DATABASE)
    taken = adopter.adopt()
    assert sorted(r.event_id for _, r in taken) == [f"call_inbound:{n}" for n in range(3)]
    whole, again = taken[0][1], record(int(taken[0][1].event_id.split(":")[1]))
    assert asdict(whole) | {"message": ""} == asdict(again) | {"message": ""}
    assert event_of(whole.message) == event_of(again.message)
    # Moved into the adopter's own directory (locked by it), the former one gone.
    assert {path.parent for path, _ in taken} == {adopter.put(record(9)).parent}
    assert [p.name for p in adopter.root.iterdir() if p.is_dir()] == [
        adopter.put(record(9)).parent.name
    ]
    assert adopter.adopt() == []


def test_a_partial_write_is_dropped_and_a_damaged_record_kept_aside(tmp_path: Path) -> None:
    spool_of_a_gone_process(tmp_path, 1)
    (former,) = (p for p in Spool(str(tmp_path), DATABASE).root.iterdir() if p.is_dir())
    (former / "abc.part").write_text('{"event_id": "never answered"')
    (former / "def.json").write_text("not json")
    taken = Spool(str(tmp_path), DATABASE).adopt()
    assert [r.event_id for _, r in taken] == ["call_inbound:0"]
    assert not (former / "abc.part").exists()
    assert (former / "def.bad").read_text() == "not json"  # for the operator


def test_records_are_taken_by_one_process_when_several_look_at_once(tmp_path: Path) -> None:
    for _ in range(4):
        spool_of_a_gone_process(tmp_path, 25)
    ctx = multiprocessing.get_context("fork")
    # Each adopter holds what it took until every one has looked (as a receiver does
    # until Redis takes the records): released earlier, it would be taken again, rightly.
    all_looked = ctx.Barrier(4)
    results = ctx.Queue()
    adopters = [
        ctx.Process(target=_adopt_ids, args=(str(tmp_path), all_looked, results)) for _ in range(4)
    ]
    for adopter in adopters:
        adopter.start()
    ids = [event_id for _ in adopters for event_id in results.get(timeout=30)]
    for adopter in adopters:
        adopter.join(30)
    assert len(ids) == 100  # 4 directories of the same 25 ids, each taken once
    assert sorted(set(ids)) == sorted(f"call_inbound:{n}" for n in range(25))


def _adopt_ids(var_dir: str, all_looked: Any, results: Any) -> None:
    ids = [r.event_id for _, r in Spool(var_dir, DATABASE).adopt()]
    results.put(ids)
    all_looked.wait(30)


def test_the_records_of_another_database_or_only_another_password_are_apart(
    tmp_path: Path,
) -> None:
    spool_of_a_gone_process(tmp_path, 2)
    assert Spool(str(tmp_path), DATABASE.replace("db.example", "other.example")).adopt() == []
    rotated = DATABASE.replace("secret", "rotated")  # the same database
    assert len(Spool(str(tmp_path), rotated).adopt()) == 2


def test_a_spool_removed_under_a_running_process_is_made_again(tmp_path: Path) -> None:
    owner = Spool(str(tmp_path), DATABASE)
    owner.put(record(1))
    shutil.rmtree(tmp_path / "spool")
    path = owner.put(record(2))
    assert json.loads(path.read_text())["event_id"] == "call_inbound:2"
    assert Spool(str(tmp_path), DATABASE).adopt() == []  # its new directory is locked


@pytest.mark.parametrize(
    "damage",
    [
        {"ttl_s": "x"},  # an outsider's: it blocked every later record of its worker
        {"queue": None},
        {"queue": "nowhere"},
        {"message": "junk"},
        {"message": json.dumps({"body": "e30="})},
        {"event_id": "call_inbound:other"},  # not the message's event
    ],
)
def test_a_record_whose_fields_do_not_hold_is_kept_aside_not_taken(
    tmp_path: Path, damage: dict[str, Any]
) -> None:
    owner = Spool(str(tmp_path), DATABASE)
    owner.put(record(1))
    path = owner.put(record(2))
    path.write_text(json.dumps({**asdict(record(2)), **damage}))
    owner.release()
    taken = Spool(str(tmp_path), DATABASE).adopt()
    assert [r.event_id for _, r in taken] == ["call_inbound:1"]
    assert path.with_suffix(".bad").exists()


def test_the_spool_is_counted_on_metrics_by_owner_with_its_bad_files_and_oldest_age(
    tmp_path: Path, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/metrics`` on the ops listener counts this host's spool when scraped: records of
    receivers running here, of receivers gone, of another spelling of the URL, the
    ``.bad`` files, and the oldest record's age (the alerts' inputs)."""
    from prometheus_client.parser import text_string_to_metric_families

    from ingest import create_app
    from models.migrate import upgrade
    from models.settings import Settings
    from tests.helpers import OPS

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    database = f"sqlite:///{tmp_path / 'h.db'}"
    var_dir = tmp_path / "var"
    env = {**settings_env, "HOOKFLEET_DATABASE_URL": database, "HOOKFLEET_VAR_DIR": str(var_dir)}
    upgrade(Settings.from_env(env))
    spool_of_a_gone_process(var_dir, 3, database)
    running = Spool(str(var_dir), database)
    running.put(record(7))
    spool_of_a_gone_process(var_dir, 2, database.replace("h.db", "./h.db"))
    (gone,) = (
        p for p in running.root.iterdir() if p.is_dir() and p != running.put(record(8)).parent
    )
    oldest = next(gone.glob("*.json"))
    os.utime(oldest, (oldest.stat().st_atime - 900, oldest.stat().st_mtime - 900))
    oldest.with_suffix(".bad").write_text("not a record")

    body = create_app(env).test_client().get("/metrics", base_url=OPS).text
    samples = {
        (s.name, s.labels.get("owner", "")): s.value
        for family in text_string_to_metric_families(body)
        if family.name.startswith("hookfleet_spool")
        for s in family.samples
    }
    assert samples[("hookfleet_spool_records", "running")] == 2
    assert samples[("hookfleet_spool_records", "gone")] == 3
    assert samples[("hookfleet_spool_records", "other_url")] == 2
    assert samples[("hookfleet_spool_bad_records", "")] == 1
    assert 900 <= samples[("hookfleet_spool_oldest_record_age_seconds", "")] < 960

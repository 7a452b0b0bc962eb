"""``hookfleet spool``: what receivers gone from this host left in the spool
(ingest/spool.py) is counted, and moved to the database as ``received`` rows on request,
once; a running receiver's records are left to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from ingest.spool import Spool
from models.events import EventStatus, WebhookEvent
from tests.helpers import command_env, hookfleet_here
from tests.integration.test_late_records import (  # noqa: F401 (a fixture)
    fresh_late_records,
    spool_from_a_former_receiver,
)
from tests.servers import free_port
from tests.unit.test_spool import record


@pytest.mark.usefixtures("fresh_late_records")
def test_records_left_by_gone_receivers_are_counted_then_moved_to_the_database_once(
    tmp_path: Path, database_url: str
) -> None:
    var_dir, left = left_by_a_gone_receiver(tmp_path, database_url)
    running = Spool(str(var_dir), database_url)  # a receiver still running here
    running.put(record(7))
    env = command_env(database_url, NO_REDIS, var_dir)

    counted = hookfleet_here(["spool"], None, env)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.startswith(
        "3 record(s) left by receivers gone from this host, 1 held by receivers running here"
    )

    # The same database under another spelling of its URL: those records are named.
    other = hookfleet_here(["spool"], None, command_env(respelled(database_url), NO_REDIS, var_dir))
    assert other.returncode == 0, other.stderr
    assert other.stdout.startswith("0 record(s) left by receivers gone from this host, 0 held")
    shown = make_url(database_url).set(password=None).render_as_string()
    assert f"3 more left for another database URL, {shown}:" in other.stdout

    moved = hookfleet_here(["spool", "--to-database"], None, env)
    assert moved.returncode == 0, moved.stderr
    assert "wrote 3 record(s) to the database as received rows" in moved.stdout
    with create_engine(database_url).connect() as connection:
        rows = connection.execute(
            select(WebhookEvent.event_id, WebhookEvent.status, WebhookEvent.queue)
        ).all()
    assert sorted(event_id for event_id, _, _ in rows) == sorted(left)
    assert {(status, queue) for _, status, queue in rows} == {
        (EventStatus.RECEIVED, "hookfleet.high")
    }

    again = hookfleet_here(["spool", "--to-database"], None, env)
    assert again.stdout.startswith("0 record(s) left by receivers gone from this host, 1 held")
    assert [path.name for path in running.root.glob("*/*.json")] != []  # not taken


@pytest.mark.usefixtures("fresh_late_records")
def test_records_stay_on_disk_when_the_database_refuses_them(tmp_path: Path) -> None:
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    var_dir, _ = left_by_a_gone_receiver(tmp_path, nowhere)

    moved = hookfleet_here(
        ["spool", "--to-database"], None, command_env(nowhere, NO_REDIS, var_dir)
    )

    assert moved.returncode == 1
    assert "the database refused the records, their files stay" in moved.stderr
    assert len(Spool(str(var_dir), nowhere).adopt()) == 3  # for the next receiver


NO_REDIS = "redis://127.0.0.1:1/0"


def respelled(database_url: str) -> str:
    """The same database under another URL: a ``./`` in a SQLite path, ``localhost``
    for a MariaDB at 127.0.0.1."""
    if database_url.startswith("sqlite:///"):
        head, _, name = database_url.rpartition("/")
        return f"{head}/./{name}"
    return database_url.replace("@127.0.0.1:", "@localhost:")


def left_by_a_gone_receiver(tmp_path: Path, database_url: str) -> tuple[Path, list[str]]:
    """The var directory where a receiver of ``database_url``, gone, left 3 records
    (Redis and the database away at its calls), and their event ids."""
    nowhere = f"mysql+pymysql://hookfleet:pw@127.0.0.1:{free_port()}/hookfleet"
    var_dir = tmp_path / "var"
    return var_dir, spool_from_a_former_receiver(var_dir, database_url, NO_REDIS, nowhere)

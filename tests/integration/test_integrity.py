"""``hookfleet integrity``: orphans, duplicate customers and raw phones found and repaired.

The damage is written the way it really arrived: with foreign keys not enforced and
past the model validators (plain Core inserts on a connection with FK checks off), on
SQLite and MariaDB.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, select, text

from models import Base
from models.engine import make_engine
from models.settings import Settings
from tests.helpers import hookfleet_here
from tests.servers import clean_env
from workers import runtime
from workers.integrity.check import check, fix

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")
T = Base.metadata.tables

# Every kind the seeded database has, and how many.
SEEDED = {
    "staff.company_id": 1,
    "customers.company_id": 1,
    "calls.branch_id": 1,
    "calls.company_id": 1,
    "calls.customer_id": 1,
    "calls.staff_id": 1,
    "appointments.branch_id": 1,
    "appointments.customer_id": 1,
    "appointments.service_id": 1,
    "appointments.staff_id": 1,
    "customers.email duplicate": 2,
    "customers.phone not E.164": 4,
    "customers.phone invalid": 1,
    "customers.phone shared": 1,
    "branches.phone not E.164": 2,
    "branches.phone invalid": 1,
    "appointments.customer_id NULL": 1,
}
# What fix cannot repair: a NOT NULL link, no customer, numbers that are no numbers.
LEFT_FOR_REVIEW = {
    "staff.company_id": 1,
    "customers.phone invalid": 1,
    "branches.phone invalid": 1,
    # the one seeded without a customer, and the one whose customer did not exist
    "appointments.customer_id NULL": 2,
    # Cy and Dee, one number once normalized: a merge candidate for a person
    "customers.phone shared": 1,
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=database_url))
    yield engine
    engine.dispose()


@contextmanager
def unchecked(database_url: str) -> Iterator[Connection]:
    """A connection that enforces no foreign keys, as old imports and MyISAM did."""
    engine = create_engine(database_url)  # not make_engine: its SQLite connections enforce
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            else:
                connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            yield connection
    finally:
        engine.dispose()


def insert(connection: Connection, table: str, **values: Any) -> int:
    """A Core insert: column defaults apply, the models' validators do not."""
    now = datetime(2024, 1, 1, tzinfo=UTC)
    values = {"created_at": now, "updated_at": now} | values
    return int(connection.execute(T[table].insert().values(values)).inserted_primary_key[0])


def seed(database_url: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    with unchecked(database_url) as db:
        company = ids["company"] = insert(db, "companies", name="Salon Ada")
        ids["branch"] = insert(db, "branches", company_id=company, name="Mitte", phone="030 901821")
        insert(db, "branches", company_id=company, name="Wien", phone="01 5880 0")
        insert(db, "branches", company_id=company, name="Typo", phone="call me")
        staff = insert(db, "staff", company_id=company, name="Bo")
        insert(db, "staff", company_id=9010, name="Gone")
        service = insert(db, "services", company_id=company, name="Haircut")
        # Ada three times: the keeper is the most complete (valid phone, no name).
        ada1 = ids["ada1"] = insert(db, "customers", email="ada@example.com", name="Ada L.")
        ada2 = ids["ada2"] = insert(
            db,
            "customers",
            email=" Ada@Example.com",
            phone="+4915112345678",
            phone_valid=True,
            phone_type="mobile",
        )
        ada3 = ids["ada3"] = insert(db, "customers", email="  ADA@example.com ", company_id=company)
        # Bob twice, equally complete: the older one is kept.
        ids["bob1"] = insert(db, "customers", email="bob@example.com")
        ids["bob2"] = insert(db, "customers", email=" BOB@example.com")
        insert(db, "customers", email="cy@example.com", company_id=9009)
        for n, phone in enumerate(["0151 23456789", "0043 664 1234567", "+41 44 668 18 00"]):
            ids[f"phone{n}"] = insert(db, "customers", company_id=company, phone=phone, name="Cy")
        insert(db, "customers", company_id=company, phone="999")
        # Shares phone0's number once normalized, under another name: two people maybe.
        ids["e164"] = insert(
            db,
            "customers",
            company_id=company,
            name="Dee",
            phone="+4915123456789",
            phone_valid=True,
            phone_type="mobile",
        )
        for n, customer in enumerate([ada1, ada2, ada3, ada3]):
            insert(db, "calls", call_id=f"ada_call_{n}", customer_id=customer)
            insert(db, "appointments", calcom_uid=f"ada_booking_{n}", customer_id=customer)
        insert(db, "calls", call_id="no_staff", staff_id=9001, customer_id=ada1)
        insert(db, "calls", call_id="no_customer", customer_id=9002, staff_id=staff)
        insert(db, "calls", call_id="no_branch", branch_id=9003, company_id=9004)
        ids["lost"] = insert(db, "appointments", calcom_uid="lost_customer", customer_id=9005)
        insert(db, "appointments", calcom_uid="never_had_one", service_id=service)
        insert(
            db,
            "appointments",
            calcom_uid="no_place",
            customer_id=ada1,
            staff_id=9006,
            service_id=9007,
            branch_id=9008,
        )
    return ids


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            name: list(connection.execute(select(table).order_by(table.c.id)))
            for name, table in T.items()
        }


def test_check_reports_exactly_the_seeded_problems(database_url: str, engine: Engine) -> None:
    seed(database_url)
    report = check(engine)

    assert report.counts() == SEEDED
    ada = report.findings["customers.email duplicate"].examples[0]
    assert ada.startswith("ada@example.com: keep customer")
    assert report.findings["calls.staff_id"].examples[0].endswith("→ staff 9001")
    # all but the NOT NULL staff link, the invalid and shared phones, the bookings
    assert report.problems == 17


def test_fix_dry_run_reports_the_same_and_changes_nothing(
    database_url: str, engine: Engine
) -> None:
    seed(database_url)
    before = snapshot(engine)

    report = fix(engine, dry_run=True)

    assert report.counts() == SEEDED
    assert not report.applied
    assert snapshot(engine) == before


def test_fix_repairs_everything_it_can_and_a_second_fix_finds_nothing(
    database_url: str, engine: Engine
) -> None:
    ids = seed(database_url)

    assert fix(engine).counts() == SEEDED

    with engine.connect() as db:
        ada = db.execute(select(T["customers"]).where(T["customers"].c.id == ids["ada2"])).one()
        assert (ada.email, ada.name, ada.phone, ada.phone_valid, ada.company_id) == (
            "ada@example.com",
            "Ada L.",
            "+4915112345678",
            True,
            ids["company"],
        )
        emails = db.scalars(select(T["customers"].c.email).order_by(T["customers"].c.id)).all()
        assert [e for e in emails if e] == ["ada@example.com", "bob@example.com", "cy@example.com"]
        assert (
            db.scalar(text("SELECT id FROM customers WHERE email = 'bob@example.com'"))
            == (ids["bob1"])
        )
        calls = dict(db.execute(text("SELECT call_id, customer_id FROM calls")).all())
        bookings = dict(db.execute(text("SELECT calcom_uid, customer_id FROM appointments")).all())
        assert [calls[f"ada_call_{n}"] for n in range(4)] == [ids["ada2"]] * 4
        assert [bookings[f"ada_booking_{n}"] for n in range(4)] == [ids["ada2"]] * 4
        assert (calls["no_staff"], calls["no_customer"], bookings["lost_customer"]) == (
            ids["ada2"],
            None,
            None,
        )
        phones = db.execute(
            select(
                T["customers"].c.phone, T["customers"].c.phone_valid, T["customers"].c.phone_type
            )
            .where(T["customers"].c.phone.is_not(None))
            .order_by(T["customers"].c.id)
        ).all()
        assert [tuple(p) for p in phones] == [
            ("+4915112345678", True, "mobile"),
            ("+4915123456789", True, "mobile"),
            ("+436641234567", True, "mobile"),
            ("+41446681800", True, "fixed_line"),
            ("999", False, "unknown"),
            ("+4915123456789", True, "mobile"),
        ]
        branch_phones = db.scalars(text("SELECT phone FROM branches ORDER BY id")).all()
        assert branch_phones == ["+4930901821", "+43158800", "call me"]

    again = fix(engine)
    assert again.counts() == LEFT_FOR_REVIEW
    assert again.problems == 0
    assert check(engine).counts() == LEFT_FOR_REVIEW


def test_batches_smaller_than_the_problems_still_find_all(
    database_url: str, engine: Engine
) -> None:
    with unchecked(database_url) as db:
        company = insert(db, "companies", name="Salon Ada")
        # Orphans interleaved with healthy rows, so batch edges fall on both.
        for n in range(14):
            insert(db, "calls", call_id=f"c{n}", staff_id=9000 + n if n % 2 else None)
        for n in range(7):
            insert(db, "customers", email=f" Dup{n}@example.com")
            insert(db, "customers", email=f"dup{n}@example.com", company_id=company)
            insert(db, "customers", company_id=company, phone=f"030 90182{n}")

    assert check(engine, batch_size=2).counts() == {
        "calls.staff_id": 7,
        "customers.email duplicate": 7,
        "customers.phone not E.164": 7,
    }
    assert fix(engine, batch_size=2).problems == 21
    assert check(engine, batch_size=2).counts() == {}


def hookfleet(database_url: str, *args: str, here: bool = False) -> CompletedProcess[str]:
    """``hookfleet integrity args`` as a process of its own, or ``here``: in this process
    (tests.helpers.hookfleet_here, without a fresh interpreter's imports)."""
    env = clean_env(HOOKFLEET_DATABASE_URL=database_url)
    if here:
        return hookfleet_here(["integrity", *args], None, env)
    return subprocess.run(
        [HOOKFLEET, "integrity", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_the_command_prints_what_it_found_and_exits_1_until_fixed(
    database_url: str, backend: str
) -> None:
    seed(database_url)
    # On SQLite the first ``check`` (exit status 1) and the ``fix`` that writes run as the
    # console script in processes of their own; the other command lines, and all of them
    # on MariaDB, in this process (the same code below main(), ~0.8 CPU-s less apiece).
    here = backend == "mariadb"

    found = hookfleet(database_url, "check", here=here)
    assert found.returncode == 1, found.stderr
    assert "calls.staff_id → missing staff" in found.stdout
    assert re.search(r"\n  duplicate customers by email +2\n", found.stdout)
    assert "'0151 23456789' → +4915123456789" in found.stdout
    assert "to review (fix leaves these):" in found.stdout
    assert "fix --dry-run" in found.stdout

    dry = hookfleet(database_url, "fix", "--dry-run", here=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would fix:\n")
    assert "(dry run, nothing changed)" in dry.stdout
    assert hookfleet(database_url, "check", here=True).stdout == found.stdout

    fixed = hookfleet(database_url, "fix", here=here)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.startswith("fixed:\n")
    assert (
        fixed.stdout.replace("fixed:", "would fix:", 1).split("\n")[:-2]
        == (dry.stdout.split("\n")[:-2])
    )

    clean = hookfleet(database_url, "check", here=True)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("to review (fix leaves these):\n")
    assert clean.stdout.endswith("nothing to repair.\n")


def test_the_hourly_task_exports_what_check_finds_and_fixes_nothing(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import REGISTRY

    from workers.integrity import tasks

    seed(database_url)
    before = snapshot(engine)
    # The Celery app's configuration sets the shared metrics directory in os.environ;
    # give it back afterwards so later tests read this process's own registry.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("HOOKFLEET_DATABASE_URL", database_url)
    runtime.dispose()  # this process's engine and settings, for this database

    counts = tasks.integrity_report()

    expected = check(engine).counts()
    assert {kind: n for kind, n in counts.items() if n} == expected
    for kind, n in counts.items():
        assert REGISTRY.get_sample_value("hookfleet_integrity_problems", {"kind": kind}) == n
    assert snapshot(engine) == before  # it reports; it never fixes
    runtime.dispose()

"""Integrity of the business record: orphans, duplicate customers, phones stored raw.

:func:`check` finds; :func:`fix` repairs what can be repaired (``dry_run`` only says
what it would do). Both return a :class:`Report`. Every table is walked by id in
batches (keyset pagination), so memory is bounded by ``batch_size`` however many rows
there are; the database does the joins and the grouping.

Transactions: ``fix`` commits one batch of orphans, one duplicate group or one batch of
phones at a time, never the whole run. One transaction over millions of rows would hold
row locks against the live workers for minutes and swell MariaDB's undo log; every step
is idempotent, so a run that stops half-way is finished by running it again. A group
merge is all-or-nothing: its calls and appointments move, the keeper is filled in and
the others are deleted together, or not at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, ForeignKey, Table, bindparam, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

# The package, not single modules: every table must be in Base.metadata for the orphan scan.
from models import Base, Customer
from models.phones import stored_phone
from workers.integrity.merges import SHARED_PHONES, duplicate_customers
from workers.integrity.report import EXAMPLES, Report, batches

__all__ = ["Report", "check", "fix"]

BATCH_SIZE = 1000

CUSTOMER_PHONES = "customers.phone not E.164"
BRANCH_PHONES = "branches.phone not E.164"
NO_CUSTOMER = "appointments.customer_id NULL"
INVALID_CUSTOMER_PHONES = "customers.phone invalid"
INVALID_BRANCH_PHONES = "branches.phone invalid"


def check(engine: Engine, *, batch_size: int = BATCH_SIZE, examples: int = EXAMPLES) -> Report:
    """Find every problem; change nothing."""
    return _run(engine, apply=False, batch_size=batch_size, examples=examples)


def fix(
    engine: Engine,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    examples: int = EXAMPLES,
) -> Report:
    """Repair what :func:`check` finds; with ``dry_run``, report the same and change
    nothing. Idempotent: a second run finds nothing to repair."""
    return _run(engine, apply=not dry_run, batch_size=batch_size, examples=examples)


def _run(engine: Engine, *, apply: bool, batch_size: int, examples: int) -> Report:
    report = Report(applied=apply, max_examples=examples)
    # Counted before orphan links are cleared, so a dry run and the fix report the same.
    _appointments_without_customer(engine, report)
    # Orphans before merges: a merge then moves only links to customers that exist.
    for fk in _foreign_keys():
        _orphans(engine, fk, report, apply=apply, batch_size=batch_size)
    # Merges before phones are normalized: a number normalized now is listed as shared,
    # and merged by the next run if certain, so a dry run reports what the fix does.
    duplicate_customers(engine, report, apply=apply, batch_size=batch_size)
    _customer_phones(engine, report, apply=apply, batch_size=batch_size)
    _branch_phones(engine, report, apply=apply, batch_size=batch_size)
    return report


# --- orphans --------------------------------------------------------------------------------


def _foreign_keys() -> list[ForeignKey]:
    """Every foreign key of the schema, from the models, in a stable order."""
    return [
        fk
        for table in Base.metadata.sorted_tables
        for fk in sorted(table.foreign_keys, key=lambda fk: fk.parent.name)
    ]


def _orphans(
    engine: Engine, fk: ForeignKey, report: Report, *, apply: bool, batch_size: int
) -> None:
    """Rows whose ``fk`` names a parent that does not exist. A nullable link is set to
    NULL (what ON DELETE SET NULL would have done); a NOT NULL one is only reported."""
    column = fk.parent
    child, parent = column.table, fk.column.table
    kind = f"{child.name}.{column.name}"
    report.kind(kind, f"{kind} → missing {parent.name}", repairable=column.nullable is True)
    parent_exists = exists().where(fk.column == column)
    for rows in batches(
        engine,
        child.c.id,
        lambda last: select(child.c.id, column).where(
            column.is_not(None), ~parent_exists, child.c.id > last
        ),
        batch_size,
    ):
        for row in rows:
            report.add(kind, f"{child.name} {row[0]} → {parent.name} {row[1]}")
        if apply and column.nullable:
            with engine.begin() as connection:
                # Re-checked in the UPDATE: a worker may have linked the row meanwhile.
                connection.execute(
                    update(child)
                    .where(child.c.id.in_([row[0] for row in rows]), ~parent_exists)
                    .values({column.name: None})
                )


def _appointments_without_customer(engine: Engine, report: Report) -> None:
    report.kind(NO_CUSTOMER, "appointments without a customer", repairable=False)
    table = Base.metadata.tables["appointments"]
    with engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).select_from(table).where(table.c.customer_id.is_(None))
        )
        first = connection.scalars(
            select(table.c.id)
            .where(table.c.customer_id.is_(None))
            .order_by(table.c.id)
            .limit(report.max_examples)
        ).all()
    report.findings[NO_CUSTOMER].count = count or 0
    report.findings[NO_CUSTOMER].examples = [f"appointment {id_}" for id_ in first]


# --- phones ---------------------------------------------------------------------------------


def _customer_phones(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Customers whose phone, phone_valid or phone_type is not what normalize_phone gives
    (rows written before normalization): normalized; invalid numbers kept as given."""
    report.kind(CUSTOMER_PHONES, "customer phones not in E.164", repairable=True)
    report.kind(INVALID_CUSTOMER_PHONES, "invalid customer phones (kept)", repairable=False)
    table = Base.metadata.tables["customers"]
    c = table.c
    for rows in batches(
        engine,
        c.id,
        # A valid E.164 phone with its type is what the model writes: only the rest is read.
        lambda last: select(
            c.id, c.company_id, c.company_key, c.phone, c.phone_valid, c.phone_type
        ).where(
            c.phone.is_not(None),
            or_(c.phone_valid.is_(False), c.phone_type.is_(None), ~c.phone.startswith("+")),
            c.id > last,
        ),
        batch_size,
    ):
        changes, now_valid = [], []
        for id_, company_id, company_key, phone, valid, type_ in rows:
            value, is_valid, kind = _stored(phone)
            if value and not is_valid:
                report.add(INVALID_CUSTOMER_PHONES, f"customer {id_}: {phone!r}")
            if (value, is_valid, kind) == (phone, bool(valid), type_):
                continue
            if value != phone:
                to = value
            elif is_valid:
                to = f"already E.164, marked valid ({kind})"
            else:
                to = "kept as given, marked invalid"
            report.add(CUSTOMER_PHONES, f"customer {id_}: {phone!r} → {to}")
            changes.append(
                {"b_id": id_, "b_old": phone, "b_phone": value, "b_valid": is_valid, "b_type": kind}
            )
            if value and is_valid:
                _report_shared(engine, report, id_, (company_id, company_key), value)
                now_valid.append((id_, company_key, value))
        if apply and changes:
            _update_phones(engine, table, changes, phone_flags=True)
            _claim_phone_keys(engine, now_valid)


def _report_shared(
    engine: Engine, report: Report, id_: int, company: tuple[int | None, int], phone: str
) -> None:
    """Normalizing may make two customers of a company share a number: a merge candidate
    now (the next run merges it when certain), said here."""
    company_id, company_key = company
    # company_id too, for the (company_id, phone) index: one look-up, not a table scan.
    same_id = (
        Customer.company_id.is_(None) if company_id is None else Customer.company_id == company_id
    )
    with engine.connect() as connection:
        other = connection.scalar(
            select(Customer.id)
            .where(same_id, Customer.company_key == company_key, Customer.phone == phone)
            .where(Customer.id != id_)
            .order_by(Customer.id)
            .limit(1)
        )
    if other is not None:
        report.add(SHARED_PHONES, f"customer {id_} and customer {other}: {phone}")


def _claim_phone_keys(engine: Engine, customers: list[tuple[int, int, str]]) -> None:
    """A customer whose number became valid is found by it (``phone_key``) unless the
    company has a customer found by it already — the unique key decides a race."""
    table = Base.metadata.tables["customers"]
    for id_, company_key, phone in customers:
        try:
            with engine.begin() as connection:
                held = connection.scalar(
                    select(table.c.id).where(
                        table.c.company_key == company_key, table.c.phone_key == phone
                    )
                )
                if held is None:
                    connection.execute(
                        update(table)
                        .where(table.c.id == id_, table.c.phone == phone)
                        .where(table.c.phone_key.is_(None))
                        .values(phone_key=phone)
                    )
        except IntegrityError:
            continue  # claimed meanwhile: this customer shares the number


def _branch_phones(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Branches whose phone is not E.164: normalized; invalid numbers kept as given."""
    report.kind(BRANCH_PHONES, "branch phones not in E.164", repairable=True)
    report.kind(INVALID_BRANCH_PHONES, "invalid branch phones (kept)", repairable=False)
    table = Base.metadata.tables["branches"]
    c = table.c
    for rows in batches(
        engine,
        c.id,
        lambda last: select(c.id, c.phone).where(c.phone.is_not(None), c.id > last),
        batch_size,
    ):
        changes = []
        for id_, phone in rows:
            value, is_valid, _ = _stored(phone)
            if value and not is_valid:
                report.add(INVALID_BRANCH_PHONES, f"branch {id_}: {phone!r}")
            if value != phone:
                report.add(BRANCH_PHONES, f"branch {id_}: {phone!r} → {value}")
                changes.append({"b_id": id_, "b_old": phone, "b_phone": value})
        if apply and changes:
            _update_phones(engine, table, changes, phone_flags=False)


def _update_phones(
    engine: Engine, table: Table, changes: list[dict[str, Any]], *, phone_flags: bool
) -> None:
    values: dict[str, Any] = {"phone": bindparam("b_phone")}
    if phone_flags:
        values |= {"phone_valid": bindparam("b_valid"), "phone_type": bindparam("b_type")}
    with engine.begin() as connection:
        # Only where the phone is still the one read: a worker may have written a new one.
        connection.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.phone == bindparam("b_old"))
            .values(values),
            changes,
        )


def _stored(phone: str) -> tuple[str | None, bool, str | None]:
    """(phone, phone_valid, phone_type) as the Customer model writes ``phone``."""
    normal = stored_phone(phone)
    return (normal.value, normal.valid, normal.type) if normal else (None, False, None)

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

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, ForeignKey, Table, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session

# The package, not single modules: every table must be in Base.metadata for the orphan scan.
from models import Appointment, AppointmentAttendee, Base, Call, Customer
from models.business import normalize_email
from models.phones import normalize_phone

BATCH_SIZE = 1000
EXAMPLES = 5

DUPLICATE_EMAILS = "customers.email duplicate"
CUSTOMER_PHONES = "customers.phone not E.164"
BRANCH_PHONES = "branches.phone not E.164"
NO_CUSTOMER = "appointments.customer_id NULL"
INVALID_CUSTOMER_PHONES = "customers.phone invalid"
INVALID_BRANCH_PHONES = "branches.phone invalid"
SHARED_PHONES = "customers.phone shared"


@dataclass
class Finding:
    """One kind of problem: how many rows (or groups) and the first few, described."""

    kind: str
    label: str
    repairable: bool
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a run found (``applied`` False) or changed (True), per kind, in a fixed order.

    ``problems`` counts what ``fix`` repairs; the rest (appointments without a customer,
    invalid phones, phones now shared) is for a person to review: nothing automatic can
    clear it, so it does not fail ``check``.
    """

    applied: bool
    max_examples: int = EXAMPLES
    findings: dict[str, Finding] = field(default_factory=dict)

    def kind(self, kind: str, label: str, *, repairable: bool) -> None:
        self.findings.setdefault(kind, Finding(kind, label, repairable))

    def add(self, kind: str, example: str) -> None:
        finding = self.findings[kind]
        finding.count += 1
        if len(finding.examples) < self.max_examples:
            finding.examples.append(example)

    def counts(self) -> dict[str, int]:
        """Kinds with something found, and how much."""
        return {f.kind: f.count for f in self.findings.values() if f.count}

    @property
    def problems(self) -> int:
        return sum(f.count for f in self.findings.values() if f.repairable)


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
    _duplicate_emails(engine, report, apply=apply, batch_size=batch_size)
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
    for rows in _batches(
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


def _batches(
    engine: Engine, key: Any, query: Callable[[Any], Any], batch_size: int
) -> Iterator[list[Any]]:
    """Rows of ``query(last_key)`` ordered by ``key``, ``batch_size`` at a time; each
    batch is read in its own short transaction."""
    last: Any = 0
    while True:
        with engine.connect() as connection:
            rows = list(connection.execute(query(last).order_by(key).limit(batch_size)))
        if not rows:
            return
        yield rows
        last = rows[-1][0]


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


# --- duplicate customers --------------------------------------------------------------------


def _duplicate_emails(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Customers whose emails are equal once trimmed and lower-cased (written before the
    model normalized them), grouped in the database and paged by that key."""
    report.kind(DUPLICATE_EMAILS, "duplicate customers by email", repairable=True)
    key = func.lower(func.trim(Customer.email))
    last: str | None = None
    while True:
        # The members' ids come with their group: finding them by the key again would
        # scan the whole table once per group.
        query = select(key, func.group_concat(Customer.id)).where(Customer.email.is_not(None))
        if last is not None:
            query = query.where(key > last)
        with engine.connect() as connection:
            groups = connection.execute(
                query.group_by(key).having(func.count() > 1).order_by(key).limit(batch_size)
            ).all()
        if not groups:
            return
        for email, ids in groups:
            _merge(engine, email, [int(i) for i in ids.split(",")], report, apply=apply)
        last = groups[-1][0]


def _merge(engine: Engine, email: str, ids: list[int], report: Report, *, apply: bool) -> None:
    """Keep the most complete customer (then the oldest), move every call and appointment
    of the others to it, fill its empty fields from theirs, delete them, normalize its
    email. One transaction, the group's rows locked."""
    with Session(engine) as session, session.begin():
        # Read again, locked, by primary key: a worker may have changed them meanwhile.
        query = select(Customer).where(
            Customer.id.in_(ids), func.lower(func.trim(Customer.email)) == email
        )
        members = session.scalars(
            query.order_by(Customer.id).with_for_update() if apply else query
        ).all()
        if len(members) < 2:
            return
        keeper = max(members, key=lambda c: (c.completeness(), -c.id))
        others = sorted((c for c in members if c is not keeper), key=lambda c: -c.completeness())
        merged = [c.id for c in others]
        moved = [
            session.scalar(
                select(func.count()).select_from(model).where(model.customer_id.in_(merged))
            )
            for model in (Call, Appointment)
        ]
        filled = _missing_fields(keeper, others)
        report.add(
            DUPLICATE_EMAILS,
            f"{normalize_email(email)}: keep customer {keeper.id}, merge "
            f"{', '.join(map(str, merged))} ({moved[0]} calls, {moved[1]} appointments"
            + (f"; fill {', '.join(filled)})" if filled else ")"),
        )
        if not apply:
            return
        # Seats and attendees point at customers too (no count above: not a headline).
        for model in (Call, Appointment, AppointmentAttendee):
            session.execute(
                update(model).where(model.customer_id.in_(merged)).values(customer_id=keeper.id)
            )
        for other in others:
            session.delete(other)
        session.flush()  # the others' emails are gone before the keeper takes the clean one
        for name, value in filled.items():
            setattr(keeper, name, value)  # phone through the validator: E.164 and flags
        keeper.email = normalize_email(keeper.email)


def _missing_fields(keeper: Customer, others: list[Customer]) -> dict[str, Any]:
    """The keeper's empty fields, each from the most complete other that has it."""
    filled = {}
    for name in ("name", "phone", "company_id"):
        if getattr(keeper, name) is None:
            value = next((v for c in others if (v := getattr(c, name)) is not None), None)
            if value is not None:
                filled[name] = value
    return filled


# --- phones ---------------------------------------------------------------------------------


def _customer_phones(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Customers whose phone, phone_valid or phone_type is not what normalize_phone gives
    (rows written before normalization): normalized; invalid numbers kept as given."""
    report.kind(CUSTOMER_PHONES, "customer phones not in E.164", repairable=True)
    report.kind(INVALID_CUSTOMER_PHONES, "invalid customer phones (kept)", repairable=False)
    report.kind(SHARED_PHONES, "customers sharing a phone", repairable=False)
    table = Base.metadata.tables["customers"]
    c = table.c
    for rows in _batches(
        engine,
        c.id,
        # A valid E.164 phone with its type is what the model writes: only the rest is read.
        lambda last: select(c.id, c.company_id, c.phone, c.phone_valid, c.phone_type).where(
            c.phone.is_not(None),
            or_(c.phone_valid.is_(False), c.phone_type.is_(None), ~c.phone.startswith("+")),
            c.id > last,
        ),
        batch_size,
    ):
        changes = []
        for id_, company_id, phone, valid, type_ in rows:
            value, is_valid, kind = _stored(phone)
            if value and not is_valid:
                report.add(INVALID_CUSTOMER_PHONES, f"customer {id_}: {phone!r}")
            if (value, is_valid, kind) == (phone, bool(valid), type_):
                continue
            to = value if value != phone else "kept as given, marked invalid"
            report.add(CUSTOMER_PHONES, f"customer {id_}: {phone!r} → {to}")
            changes.append(
                {"b_id": id_, "b_old": phone, "b_phone": value, "b_valid": is_valid, "b_type": kind}
            )
            if value and is_valid:
                _report_shared(engine, report, id_, company_id, value)
        if apply and changes:
            _update_phones(engine, table, changes, phone_flags=True)


def _report_shared(
    engine: Engine, report: Report, id_: int, company_id: int | None, phone: str
) -> None:
    """Normalizing may make two customers of a company share a number; allowed, but said."""
    same_company = (
        Customer.company_id.is_(None) if company_id is None else Customer.company_id == company_id
    )
    with engine.connect() as connection:
        other = connection.scalar(
            select(Customer.id)
            .where(same_company, Customer.phone == phone, Customer.id != id_)
            .order_by(Customer.id)
            .limit(1)
        )
    if other is not None:
        report.add(SHARED_PHONES, f"customer {id_} and customer {other}: {phone}")


def _branch_phones(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Branches whose phone is not E.164: normalized; invalid numbers kept as given."""
    report.kind(BRANCH_PHONES, "branch phones not in E.164", repairable=True)
    report.kind(INVALID_BRANCH_PHONES, "invalid branch phones (kept)", repairable=False)
    table = Base.metadata.tables["branches"]
    c = table.c
    for rows in _batches(
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
    if not phone.strip():
        return None, False, None
    normal = normalize_phone(phone)
    return normal.value[:32], normal.valid, normal.type

"""Customers who may be one person: merged when certain, listed for a person otherwise.

Groups are customers of one company (``company_key``) who share

- an **e-mail** equal once trimmed and lower-cased (NFC on SQLite) — rows written past
  the model's ``normalize_email``, or
- a **valid phone** — e.g. two callers created by concurrent workers before the unique
  ``phone_key``, or a caller and the booker who later gave the same number.

A group is **certain**, and ``fix`` merges it, when no two members disagree on anything
both know (e-mail, phone, name ignoring case and spacing:
:func:`models.customers.conflicts`). One side without an e-mail is no disagreement;
two e-mails, two phones or two names are. Every other group is a **merge candidate**,
listed for a person and never merged: a shared landline with two e-mails is a family
as often as it is one person. So are e-mails equal only once accents and case are folded
(``jürgen@`` / ``Jurgen@``): different mailboxes by the identity rule, maybe one typo.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from models import Appointment, AppointmentAttendee, Call, Customer, CustomerDetail
from models.business import normalize_email
from models.customers import Details, conflicts, plain_name
from workers.integrity.report import Report

DUPLICATE_EMAILS = "customers.email duplicate"
DUPLICATE_PHONES = "customers.phone duplicate"
EMAIL_CANDIDATES = "customers.email differing details"
SHARED_PHONES = "customers.phone shared"
SIMILAR_EMAILS = "customers.email similar"
OTHER_NAMES = "customer_details other names"


def register_kinds(report: Report) -> None:
    """The kinds this module reports, in the order they are printed."""
    report.kind(DUPLICATE_EMAILS, "duplicate customers by email", repairable=True)
    report.kind(DUPLICATE_PHONES, "duplicate customers by phone", repairable=True)
    report.kind(EMAIL_CANDIDATES, "same email, details differ (merge?)", repairable=False)
    report.kind(SHARED_PHONES, "customers sharing a phone (merge?)", repairable=False)
    report.kind(SIMILAR_EMAILS, "emails equal but for accents/case (merge?)", repairable=False)
    report.kind(OTHER_NAMES, "customers given other names (split?)", repairable=False)


def duplicate_customers(engine: Engine, report: Report, *, apply: bool, batch_size: int) -> None:
    """Merge the certain groups (``apply``) and list the candidates, in database-grouped
    pages of ``batch_size`` groups; each group is settled in its own transaction."""
    register_kinds(report)
    email_key = _email_key(engine)
    for scope, key, ids in _groups(engine, email_key, Customer.email.is_not(None), batch_size):
        group = Group(scope, ids, "email", normalize_email(key) or "")
        _settle(engine, report, group, (DUPLICATE_EMAILS, EMAIL_CANDIDATES), apply=apply)
    valid_phone = and_(Customer.phone.is_not(None), Customer.phone_valid.is_(True))
    for scope, phone, ids in _groups(engine, Customer.phone, valid_phone, batch_size):
        group = Group(scope, ids, "phone", phone)
        _settle(engine, report, group, (DUPLICATE_PHONES, SHARED_PHONES), apply=apply)
    _similar_emails(engine, report, email_key, batch_size, apply=apply)
    _other_names(engine, report)


def _other_names(engine: Engine, report: Report) -> None:
    """Customers an event gave another name for (``customer_details``): one e-mail used
    for several people (a receptionist's, a family's) looks like this — for a person to
    split. The ids in order, so a page of output is stable."""
    with _connection(engine) as connection:
        rows = connection.execute(
            select(Customer.id, Customer.name, CustomerDetail.value)
            .join(CustomerDetail, CustomerDetail.customer_id == Customer.id)
            .where(CustomerDetail.kind == "name")
            .order_by(Customer.id, CustomerDetail.id)
        ).all()
    names: dict[tuple[int, str | None], list[str]] = {}
    for id_, name, other in rows:
        names.setdefault((id_, name), []).append(other)
    for (id_, name), others in names.items():
        report.add(OTHER_NAMES, f"customer {id_} {name!r} also given {', '.join(others)}")


# --- grouping in the database ---------------------------------------------------------------


def _email_key(engine: Engine) -> Any:
    if engine.dialect.name == "sqlite":
        return func.hookfleet_email(Customer.email)
    return func.lower(func.trim(Customer.email))


def _folded_key(engine: Engine) -> Any:
    if engine.dialect.name == "sqlite":
        return func.hookfleet_fold(Customer.email)
    # The accent- and case-insensitive collation the identity columns no longer use.
    return func.trim(Customer.email).collate("utf8mb4_unicode_ci")


def fold(email: str | None) -> str | None:
    """``email`` without accents and case (what ``utf8mb4_unicode_ci`` compares)."""
    if email is None:
        return None
    decomposed = unicodedata.normalize("NFKD", email.strip())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


@contextmanager
def _connection(engine: Engine) -> Iterator[Connection]:
    """A connection where the grouping functions exist and group_concat is not cut."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            raw = connection.connection.driver_connection
            assert raw is not None
            raw.create_function("hookfleet_email", 1, normalize_email, deterministic=True)
            raw.create_function("hookfleet_fold", 1, fold, deterministic=True)
        else:
            # MariaDB cuts GROUP_CONCAT at 1024 bytes by default.
            connection.exec_driver_sql("SET SESSION group_concat_max_len = 1048576")
        yield connection


def _groups(
    engine: Engine, key: Any, where: Any, batch_size: int, *, having: Any = None
) -> Iterator[tuple[int, Any, list[int]]]:
    """(company_key, key, member ids) of every group with more than one member (and
    ``having``), ``batch_size`` groups per query, paged by (company_key, key)."""
    scope = Customer.company_key
    condition = func.count() > 1 if having is None else and_(func.count() > 1, having)
    last: tuple[int, Any] | None = None
    while True:
        query = select(scope, key, func.group_concat(Customer.id)).where(where)
        if last is not None:
            query = query.where(or_(scope > last[0], and_(scope == last[0], key > last[1])))
        query = query.group_by(scope, key).having(condition).order_by(scope, key)
        with _connection(engine) as connection:
            rows = connection.execute(query.limit(batch_size)).all()
        if not rows:
            return
        for company_key, value, ids in rows:
            yield company_key, value, [int(i) for i in str(ids).split(",") if i]
        last = (rows[-1][0], rows[-1][1])


def _similar_emails(
    engine: Engine, report: Report, email_key: Any, batch_size: int, *, apply: bool
) -> None:
    """Groups equal once folded whose e-mails differ after normalization: for a person.

    On MariaDB the grouping key (LOWER, TRIM) cannot apply Unicode NFC, so legacy NFD
    and NFC copies of one address (one address to the workers, ``normalize_email``)
    meet here first: they are settled as duplicates by e-mail, certain or not."""
    folded = _folded_key(engine)
    distinct = func.count(func.distinct(email_key)) > 1
    where = Customer.email.is_not(None)
    for scope, _key, ids in _groups(engine, folded, where, batch_size, having=distinct):
        with _connection(engine) as connection:
            rows = connection.execute(
                select(Customer.id, Customer.email)
                .where(Customer.id.in_(ids), Customer.company_key == scope)
                .order_by(Customer.id)
            ).all()
        same: dict[str, list[int]] = {}
        for id_, email in rows:
            same.setdefault(normalize_email(email) or "", []).append(id_)
        for address, members in same.items():
            if len(members) > 1:
                group = Group(scope, members, "email", address)
                _settle(engine, report, group, (DUPLICATE_EMAILS, EMAIL_CANDIDATES), apply=apply)
        if len(same) > 1:
            listed = ", ".join(f"{id_} {email}" for id_, email in rows)
            report.add(SIMILAR_EMAILS, f"company {scope}: customers {listed}")


# --- one group ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Customers of company ``scope`` (company_key) sharing ``by`` (email or phone)."""

    scope: int
    ids: list[int]
    by: str
    value: str

    def has(self, customer: Customer) -> bool:
        """Still a member (a worker may have changed it since the grouping query)."""
        if self.by == "email":
            return normalize_email(customer.email) == self.value
        return customer.phone == self.value and customer.phone_valid


def _settle(
    engine: Engine, report: Report, group: Group, kinds: tuple[str, str], *, apply: bool
) -> None:
    """Merge ``group`` when certain (kinds[0]), else list it as a candidate (kinds[1]).

    One transaction; with ``apply`` the members are locked and read again, since a
    worker may have changed them since the grouping query.
    """
    with Session(engine) as session, session.begin():
        query = select(Customer).where(
            Customer.id.in_(group.ids), Customer.company_key == group.scope
        )
        rows = session.scalars(query.order_by(Customer.id).with_for_update() if apply else query)
        members = [c for c in rows if group.has(c)]
        if len(members) < 2:
            return
        differ = sorted(
            {
                f
                for a, b in combinations(members, 2)
                for f in conflicts(Details.of(a), Details.of(b))
            }
        )
        if not differ:
            _merge(session, report, kinds[0], group.value, members, apply=apply)
            return
        listed = ", ".join(str(c.id) for c in members)
        report.add(kinds[1], f"{group.value}: customers {listed} differ in {', '.join(differ)}")
        for same in _identical(members):
            _merge(session, report, kinds[0], group.value, same, apply=apply)


def _identical(members: list[Customer]) -> list[list[Customer]]:
    """The certain sub-groups of a group that differs: members with the same e-mail (or
    none) and the same name, who disagree on nothing — two copies of Carl without an
    e-mail on Ada's landline. A member without a name and without an e-mail could be
    anyone of the group: never merged."""
    same: dict[tuple[str | None, str], list[Customer]] = {}
    for customer in members:
        if customer.name:
            key = (normalize_email(customer.email), plain_name(customer.name))
            same.setdefault(key, []).append(customer)
    return [
        sub
        for sub in same.values()
        if len(sub) > 1
        and not any(conflicts(Details.of(a), Details.of(b)) for a, b in combinations(sub, 2))
    ]


def _merge(
    session: Session,
    report: Report,
    kind: str,
    shared: str,
    members: list[Customer],
    *,
    apply: bool,
) -> None:
    """Keep the most complete customer (then the oldest), move every call and appointment
    of the others to it, fill its empty fields from theirs, delete them."""
    keeper = max(members, key=lambda c: (c.completeness(), -c.id))
    others = sorted((c for c in members if c is not keeper), key=lambda c: -c.completeness())
    merged = [c.id for c in others]
    moved = [
        session.scalar(select(func.count()).select_from(model).where(model.customer_id.in_(merged)))
        for model in (Call, Appointment)
    ]
    filled = _missing_fields(keeper, others)
    report.add(
        kind,
        f"{shared}: keep customer {keeper.id}, merge "
        f"{', '.join(map(str, merged))} ({moved[0]} calls, {moved[1]} appointments"
        + (f"; fill {', '.join(filled)})" if filled else ")"),
    )
    if not apply:
        return
    scope = keeper.company_key
    # Seats and attendees point at customers too (no count above: not a headline).
    for model in (Call, Appointment, AppointmentAttendee):
        session.execute(
            update(model).where(model.customer_id.in_(merged)).values(customer_id=keeper.id)
        )
    _move_details(session, keeper, merged)
    for other in others:
        session.delete(other)
    session.flush()  # their e-mails and phone keys are gone before the keeper takes them
    for name, value in filled.items():
        setattr(keeper, name, value)  # phone through the validator: E.164 and flags
    keeper.company_key = scope  # one company's customers: filling company_id moves no one
    keeper.email = normalize_email(keeper.email)
    if keeper.phone_key is None and keeper.phone_valid:
        # The number's customer from now on, unless the company has one already (then
        # the keeper shares it). The others' keys were freed by the flush above.
        holder = session.scalar(
            select(Customer.id).where(
                Customer.company_key == scope, Customer.phone_key == keeper.phone
            )
        )
        if holder is None:
            keeper.phone_key = keeper.phone


def _missing_fields(keeper: Customer, others: list[Customer]) -> dict[str, Any]:
    """The keeper's empty fields, each from the most complete other that has it."""
    filled = {}
    for name in ("name", "email", "phone", "company_id"):
        if getattr(keeper, name) is None:
            value = next((v for c in others if (v := getattr(c, name)) is not None), None)
            if value is not None:
                filled[name] = value
    return filled


def _move_details(session: Session, keeper: Customer, merged: list[int]) -> None:
    """The merged customers' recorded details become the keeper's (once each)."""
    kept = {
        (kind, value)
        for kind, value in session.execute(
            select(CustomerDetail.kind, CustomerDetail.value).where(
                CustomerDetail.customer_id == keeper.id
            )
        )
    }
    for detail in session.scalars(
        select(CustomerDetail).where(CustomerDetail.customer_id.in_(merged))
    ):
        if (detail.kind, detail.value) in kept:
            session.delete(detail)
        else:
            kept.add((detail.kind, detail.value))
            detail.customer_id = keeper.id
    session.flush()

"""The customer identity rule: who an event is about, found or created exactly once.

A customer is one person of one company (``company_key``: the company, or 0 when no
branch owns the number or event type). Every path that links a customer — Retell calls
inbound and outbound, Cal.com bookings (every attendee, seats, reschedules) — goes
through :func:`find_or_create_customer`; the integrity command merges by
:func:`models.customers.conflicts`, the same comparison.

The rule, for a contact with an e-mail and/or a phone:

1. **E-mail decides.** A contact with an e-mail is the company's customer with exactly
   that address (``normalize_email``: trimmed, NFC, lower-cased, never accent-folded).
2. **Else the number's customer.** Each valid E.164 number of a company has at most
   one *holder* (``phone_key``): the first customer who gave it. The contact is the
   first of the company's customers with that number — the holder first, then the
   oldest — whom nothing contradicts (no other e-mail, no other name:
   :func:`models.customers.conflicts`); a call, a number and nothing else, is thus
   the holder. The caller who now books is the holder, and the e-mail is filled in.
   When everyone with the number is contradicted — a family landline, a receptionist
   booking for others, a reused number — the contact is a *new* customer with the same
   phone. Nothing the contact said is dropped.
3. **Nothing identifies no one.** Invalid numbers and e-mails that are no address
   (``models.business.valid_email``: ``not-an-email``, ``a@b``) identify no one
   (``anonymous`` or ``n/a`` would otherwise be one person); they are kept whole as
   given in ``customer_details``. A contact with neither a valid e-mail nor a valid
   number links to no customer.

A further number of a known person: a number that no customer has as their own but
one recorded as a customer's further phone (below) links to that customer — after the
number's holder and anyone whose own number it is, who come first. A phone given with
another name is recorded as ``other_phone`` and links no one (it may be the other
person's).

Known details are never overwritten: a missing one is filled in; a different one is a
*conflict*, logged (``customer detail conflicts``) and recorded in
``customer_details`` (another name, another phone for a known e-mail), so nothing is
dropped; ``hookfleet integrity check`` lists customers with other names on record as
candidates to split (one e-mail used by several people, e.g. a receptionist's).

Why it holds under concurrency: the database decides, not timing. UNIQUE
(company_key, email), UNIQUE (company_key, phone_key) and, for a second person without
an e-mail on a held number, UNIQUE (company_key, person_key) (the number and the folded
name), with 0 for "no company" because NULLs never collide. Look-ups are plain reads,
so a new person costs no gap lock (two inserts into one gap under REPEATABLE READ
deadlock); a plain read may be an old snapshot (MariaDB's REPEATABLE READ fixes it at
the transaction's first read), so:
a row found that the contact would fill in is re-read with ``SELECT … FOR UPDATE``,
which reads the latest committed version and holds it; a row missed is inserted and
the unique key refuses the second insert — :class:`RaceLost`, and the retry, in a new
transaction, finds the winner. (A holder seen with an e-mail keeps it: e-mails are
never changed once set, so that decision needs no lock.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.business import normalize_email, valid_email
from models.customers import (
    DETAIL_MAX,
    NO_COMPANY,
    Customer,
    CustomerDetail,
    Details,
    conflicts,
    person_key,
)
from models.phones import stored_phone
from workers.retries import RaceLost

log = logging.getLogger("hookfleet.worker.customers")


@dataclass(frozen=True)
class Contact:
    """One event's account of a person, normalized."""

    company_id: int | None
    details: Details
    raw_phone: str | None  # an invalid number, kept on a new record as given
    # What identifies no one but is kept (``customer_details``): an e-mail that is no
    # address, a phone that is no number, whole as given.
    unusable: tuple[tuple[str, str], ...] = ()

    @property
    def company_key(self) -> int:
        return NO_COMPANY if self.company_id is None else self.company_id


def find_or_create_customer(
    session: Session,
    company_id: int | None,
    *,
    phone: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> Customer | None:
    """The customer of company ``company_id`` (None: no company) these details are,
    by the rule in this module's docstring; created when there is none.

    ``phone`` in any spelling (``normalize_phone``), ``email`` as given. Returns None
    when there is neither an e-mail nor a valid phone. A row it fills in stays locked
    (MariaDB) until the transaction ends. Raises RaceLost when a concurrent transaction
    inserted the same e-mail or number first: roll back and retry, the retry finds it.
    """
    contact = _contact(company_id, phone, email, name)
    wanted = contact.details
    customer: Customer | None = None
    if wanted.email is None and wanted.phone is None:
        if contact.raw_phone:
            log.info("no customer for a number that is not a valid phone number")
        return None
    if wanted.email is not None:
        customer = _current(
            session, _find(session, Customer.email == wanted.email, contact), contact
        )
        if customer is not None:
            _fill(session, customer, contact)
        elif wanted.phone is None:
            customer = _create(session, contact, holds_phone=False)
    if customer is None:
        customer = _by_number(session, contact)
    for kind, value in contact.unusable:
        record_detail(session, customer, kind, value)
    return customer


def _by_number(session: Session, contact: Contact) -> Customer:
    """Rule 2: the first of the company's customers with this number (its holder first,
    then the oldest) that nothing contradicts; else a new one, the number's holder if
    it has none."""
    wanted = contact.details
    for found in _sharing(session, contact):
        if conflicts(Details.of(found), wanted):
            continue
        customer = _current(session, found, contact)  # the latest may contradict now
        if customer is not None and not conflicts(Details.of(customer), wanted):
            _fill(session, customer, contact)
            return customer
    recorded = _by_recorded_phone(session, contact)
    if recorded is not None:
        return recorded
    holder = _find(session, Customer.phone_key == wanted.phone, contact)
    if holder is not None:
        log.info("phone shared: a new customer with another customer's number")
    return _create(session, contact, holds_phone=holder is None)


def _by_recorded_phone(session: Session, contact: Contact) -> Customer | None:
    """The company's customer who gave this number as a further phone
    (``customer_details``: a new number for a known e-mail), when no customer has it as
    their own number and nothing else the contact says contradicts them (oldest first).
    """
    wanted = contact.details
    found = session.scalars(
        select(Customer)
        .join(CustomerDetail, CustomerDetail.customer_id == Customer.id)
        .where(
            Customer.company_key == contact.company_key,
            CustomerDetail.kind == "phone",
            CustomerDetail.value == wanted.phone,
        )
        .order_by(Customer.id)
    )
    for customer in found:
        mine = Details(normalize_email(customer.email), None, customer.name or None)
        if not conflicts(mine, Details(wanted.email, None, wanted.name)):
            return customer
    return None


def record_detail(session: Session, customer: Customer, kind: str, value: str) -> None:
    """Keep ``value`` (``kind``: name, phone or email) given for ``customer`` that its row
    does not hold, once. Raises RaceLost when another worker recorded it first."""
    value = value[:DETAIL_MAX]
    known = session.scalar(
        select(CustomerDetail.id).where(
            CustomerDetail.customer_id == customer.id,
            CustomerDetail.kind == kind,
            CustomerDetail.value == value,
        )
    )
    if known is not None:
        return
    session.add(CustomerDetail(customer_id=customer.id, kind=kind, value=value))
    try:
        session.flush()
    except IntegrityError as error:
        raise RaceLost(f"a detail of customer {customer.id} was recorded concurrently") from (error)


def _contact(
    company_id: int | None, phone: str | None, email: str | None, name: str | None
) -> Contact:
    number = raw = None
    unusable: list[tuple[str, str]] = []
    normal = stored_phone(phone)
    if normal is not None:
        number, raw = (normal.value, None) if normal.valid else (None, normal.value)
        if raw is not None:
            unusable.append(("phone", (phone or "").strip()))
    address = normalize_email(email)
    if address is not None and not valid_email(address):
        # Like an invalid number: identifies no one ("not-an-email" is not one person).
        unusable.append(("email", (email or "").strip()))
        address = None
    details = Details(address, number, (name or "").strip()[:200] or None)
    return Contact(company_id, details, raw, tuple(unusable))


def _find(session: Session, where: Any, contact: Contact) -> Customer | None:
    """The company's customer matching ``where``: a plain read, so a miss takes no gap
    lock — but it may be the transaction's old snapshot (see :func:`_current`)."""
    return session.scalars(
        select(Customer).where(Customer.company_key == contact.company_key, where)
    ).first()


def _sharing(session: Session, contact: Contact) -> list[Customer]:
    """The company's customers with the contact's number, the holder first (plain read).

    With an e-mail, only those without one: one with another e-mail is someone else."""
    company = (
        Customer.company_id.is_(None)
        if contact.company_id is None
        else Customer.company_id == contact.company_id
    )
    query = select(Customer).where(
        company,
        Customer.company_key == contact.company_key,
        Customer.phone == contact.details.phone,
    )
    if contact.details.email is not None:
        query = query.where(Customer.email.is_(None))
    return list(session.scalars(query.order_by(Customer.phone_key.is_(None), Customer.id)))


def _current(session: Session, found: Customer | None, contact: Contact) -> Customer | None:
    """``found`` as it is now and locked, when the contact would write to it.

    ``SELECT … FOR UPDATE`` by primary key reads the latest committed row, not the
    snapshot, and holds it: an e-mail filled in meanwhile by another worker is seen, not
    overwritten. A customer the contact adds nothing to is not locked, so calls from a
    known number do not queue behind each other.
    """
    if found is None or not _adds_to(found, contact.details):
        return found
    return session.scalars(
        select(Customer)
        .where(Customer.id == found.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _adds_to(customer: Customer, given: Details) -> bool:
    return (
        (customer.email is None and given.email is not None)
        or (customer.phone is None and given.phone is not None)
        or (customer.name is None and given.name is not None)
    )


def _create(session: Session, contact: Contact, *, holds_phone: bool) -> Customer:
    details = contact.details
    customer = Customer(
        company_id=contact.company_id,
        email=details.email,
        phone=details.phone or contact.raw_phone,
        phone_key=details.phone if holds_phone else None,
        person_key=_person_key(details) if not holds_phone else None,
        name=details.name,
    )
    session.add(customer)
    try:
        session.flush()
    except IntegrityError as error:
        raise RaceLost("a customer with this e-mail or number was created concurrently") from (
            error
        )
    return customer


def _person_key(details: Details) -> str | None:
    """The key of a second person on a held number; only without an e-mail (the e-mail
    is the key then), with a valid number and a name (without one, rule 2 links the
    holder: nothing contradicts)."""
    if details.email is not None or details.phone is None or details.name is None:
        return None
    return person_key(details.phone, details.name)


def _fill(session: Session, customer: Customer, contact: Contact) -> None:
    """Fill what ``customer`` lacks from the contact; log what disagrees (kept as is)."""
    given = contact.details
    clash = conflicts(Details.of(customer), given)
    if clash:
        log.warning(
            "customer detail conflicts",
            extra={"customer_id": customer.id, "conflicting": ",".join(clash)},
        )
    for kind in clash:
        # A phone given with another name may be that other person's (a receptionist
        # booking for Herr Schulz with his number): kept, but it links no calls.
        as_kind = "other_phone" if kind == "phone" and "name" in clash else kind
        record_detail(session, customer, as_kind, getattr(given, kind))
    if customer.email is None and given.email is not None:
        customer.email = given.email
    if customer.name is None and given.name is not None:
        customer.name = given.name
    if customer.phone is None and given.phone is not None:
        customer.phone = given.phone
        # The number's holder if it has none yet (the unique key settles a race).
        if _find(session, Customer.phone_key == given.phone, contact) is None:
            customer.phone_key = given.phone
    try:
        session.flush()
    except IntegrityError as error:
        raise RaceLost(f"customer {customer.id} was completed concurrently") from error

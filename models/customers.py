"""``customers``: the people who call and book, one row per person per company.

The identity rule that fills this table is :func:`workers.domain.customers.find_or_create_customer`;
the table holds the two keys that make the rule safe under concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, validates

from models.base import Base, Timestamped, UTCDateTime, optional_link, utcnow
from models.business import EMAIL_MAX, normalize_email
from models.phones import PHONE_MAX, stored_phone

# What "no company" is in the unique keys: NULLs never collide in a UNIQUE index (on
# MariaDB or SQLite), so a NULL company would let two workers create the same caller.
NO_COMPANY = 0
PERSON_KEY_MAX = 240  # an E.164 number (at most 16), a space, a name of up to 200


def person_key(phone: str, name: str) -> str:
    """Who a person without an e-mail on a shared number is: the number and the name
    compared as :func:`conflicts` compares names (case and spacing ignored)."""
    return f"{phone} {plain_name(name)}"[:PERSON_KEY_MAX]


def identity_text(length: int) -> String:
    """A column compared byte for byte. MariaDB's default ``utf8mb4_general_ci`` (and
    ``utf8mb4_unicode_ci``) compare ``jürgen`` equal to ``Jurgen``; ``utf8mb4_bin``
    compares what was stored, already normalized by the model. SQLite's default
    collation is BINARY already."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


class Customer(Timestamped, Base):
    """A caller or booker of one company. ``phone`` is E.164 when ``phone_valid``;
    else as given.

    ``company_key`` is the company the customer was created for (``company_id``, or 0
    for a caller of a number no branch owns) and is what the unique keys use. Deleting
    the company sets ``company_id`` NULL but leaves the key, so its former customers
    are never mixed with the company-less ones. ``email`` (see ``normalize_email``) is
    UNIQUE per company, NULL when unknown (many allowed). ``phone_key`` is the valid phone this
    customer is *found by*: set for the first customer of the company who gave the
    number, NULL for the others sharing it (a family landline) — UNIQUE per company,
    so concurrent first contacts from one number create one customer. ``person_key``
    (:func:`person_key`: number and folded name) is set for a customer created without
    an e-mail on a number someone else holds — a family member on the landline —
    UNIQUE per company, so concurrent first contacts of that person create one
    customer too. NULL otherwise (the e-mail or ``phone_key`` is the key then).
    """

    __tablename__ = "customers"
    __table_args__ = (
        UniqueConstraint("company_key", "email"),
        UniqueConstraint("company_key", "phone_key"),
        UniqueConstraint("company_key", "person_key"),
        Index(None, "company_id", "phone"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int | None] = optional_link("companies")
    company_key: Mapped[int] = mapped_column(
        Integer, default=NO_COMPANY, server_default=str(NO_COMPANY)
    )
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    email: Mapped[str | None] = mapped_column(identity_text(EMAIL_MAX), default=None)
    phone: Mapped[str | None] = mapped_column(identity_text(PHONE_MAX), default=None)
    phone_key: Mapped[str | None] = mapped_column(identity_text(PHONE_MAX), default=None)
    person_key: Mapped[str | None] = mapped_column(identity_text(PERSON_KEY_MAX), default=None)
    phone_type: Mapped[str | None] = mapped_column(String(32), default=None)
    phone_valid: Mapped[bool] = mapped_column(Boolean, default=False)

    @validates("company_id")
    def _company_key(self, _key: str, value: int | None) -> int | None:
        self.company_key = NO_COMPANY if value is None else value
        return value

    @validates("phone")
    def _normalize_phone(self, _key: str, value: str | None) -> str | None:
        phone = stored_phone(value)
        if phone is None:
            self.phone_type, self.phone_valid = None, False
            return None
        self.phone_type, self.phone_valid = phone.type, phone.valid
        return phone.value

    @validates("email")
    def _normalize_email(self, _key: str, value: str | None) -> str | None:
        return normalize_email(value)

    def completeness(self) -> int:
        """How much is known: the integrity merge keeps the most complete record."""
        return sum(bool(v) for v in (self.name, self.email, self.phone, self.phone_valid))

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.email or self.phone}>"


DETAIL_MAX = 255


class CustomerDetail(Base):
    """A detail an event gave for a customer that the customer row does not hold: a
    conflicting name, phone or e-mail (``kind``: ``name``, ``phone``, ``email``;
    ``other_phone`` for a phone given with another name), an
    e-mail that is no address, or a phone as given when it is no valid number. Kept so
    nothing anyone said is dropped; ``hookfleet integrity check`` lists customers with
    other names on record as candidates to split. ``value`` as given (phones in E.164
    when valid), at most 255 characters; ``first_seen_at`` when it was first given.
    A phone recorded here links later calls from it to the customer (see
    ``workers.domain.customers``)."""

    __tablename__ = "customer_details"
    __table_args__ = (
        UniqueConstraint("customer_id", "kind", "value"),
        Index(None, "kind", "value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(identity_text(DETAIL_MAX))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class Details:
    """What identifies a person: e-mail (normalized), phone (E.164 when valid), name."""

    email: str | None = None
    phone: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, customer: Customer) -> Details:
        return cls(normalize_email(customer.email), customer.phone, customer.name or None)


def conflicts(a: Details, b: Details) -> list[str]:
    """The details both know and disagree on, of ``email``, ``phone``, ``name`` (names
    compared ignoring case and spacing). Empty: nothing says they are two people."""
    different = []
    for name in ("email", "phone", "name"):
        mine, theirs = getattr(a, name), getattr(b, name)
        if mine is None or theirs is None:
            continue
        if name == "name":
            mine, theirs = plain_name(mine), plain_name(theirs)
        if mine != theirs:
            different.append(name)
    return different


def plain_name(name: str) -> str:
    """A name as identity compares it: spacing collapsed, case folded."""
    return " ".join(name.split()).casefold()

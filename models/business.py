"""The businesses Hookfleet serves: companies, branches, staff, services, agents."""

from __future__ import annotations

import enum
import re
import unicodedata
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from models.base import (
    Base,
    PortableJSON,
    Timestamped,
    UTCDateTime,
    exact_text,
    optional_link,
)
from models.phones import PHONE_MAX, stored_phone


class Company(Timestamped, Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str | None] = mapped_column(String(64), default=None)

    branches: Mapped[list[Branch]] = relationship(back_populates="company")


class Branch(Timestamped, Base):
    """A location with its own phone number, Retell agent and Cal.com event type.

    ``phone`` is stored in E.164 whenever it is a valid number (models.phones.stored_phone).
    """

    __tablename__ = "branches"
    __table_args__ = (
        Index(None, "company_id", "is_active"),
        Index(None, "phone"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(PHONE_MAX), default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    working_hours: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON(), default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    retell_agent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    calcom_event_type_id: Mapped[int | None] = mapped_column(Integer, default=None)

    company: Mapped[Company] = relationship(back_populates="branches")

    @validates("phone")
    def _normalize_phone(self, _key: str, value: str | None) -> str | None:
        phone = stored_phone(value)
        return phone.value if phone else None


class Staff(Timestamped, Base):
    """Someone who takes appointments (a Cal.com organizer is matched by email)."""

    __tablename__ = "staff"
    __table_args__ = (Index(None, "company_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    branch_id: Mapped[int | None] = optional_link("branches")
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(191), default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    @validates("email")
    def _lower_email(self, _key: str, value: str | None) -> str | None:
        return normalize_email(value)


class Service(Timestamped, Base):
    """What a company offers, with how long it takes (a Cal.com event type, often)."""

    __tablename__ = "services"
    __table_args__ = (Index(None, "company_id", "is_active"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    branch_id: Mapped[int | None] = optional_link("branches")
    name: Mapped[str] = mapped_column(String(200))
    duration_minutes: Mapped[int | None] = mapped_column(Integer, default=None)
    price_cents: Mapped[int | None] = mapped_column(Integer, default=None)
    calcom_event_type_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class AgentStatus(enum.StrEnum):
    """Where a branch's agent stands (``agents.status``; workers.provisioning)."""

    DRAFT = "draft"  # the row exists; nothing was sent to Retell yet
    PROVISIONING = "provisioning"  # a run holds the claim
    ACTIVE = "active"  # Retell's agent matches the branch
    RETRYING = "retrying"  # a transient failure (Retell down, 429): the task tries again
    FAILED = "failed"  # the last run failed for good; last_error says why
    INVALID = "invalid"  # never provisioned: the validator refused


class Agent(Timestamped, Base):
    """The Retell voice agent that answers one branch's phone.

    One per branch (UNIQUE branch_id), so provisioning twice updates, never duplicates.
    ``config_digest`` is the SHA-256 of what was last sent to Retell: an unchanged branch
    costs no API call.
    """

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    branch_id: Mapped[int] = mapped_column(
        ForeignKey("branches.id", ondelete="CASCADE"), unique=True
    )
    retell_agent_id: Mapped[str | None] = mapped_column(exact_text(64), default=None, unique=True)
    retell_llm_id: Mapped[str | None] = mapped_column(String(64), default=None)
    phone_number: Mapped[str | None] = mapped_column(String(PHONE_MAX), default=None)
    name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(16), default="de-DE")
    voice_id: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(32), default=AgentStatus.DRAFT)
    config_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    provisioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


# The longest address there is: RFC 5321 §4.5.3.1.3 limits a path to 256 octets, two of
# them the angle brackets. A longer "address" is no address; it identifies no one.
EMAIL_MAX = 254


_LABEL = re.compile(r"^(?!-)[^\W_](?:[\w-]{0,61}[^\W_])?$")
_LOCAL = re.compile(r"^[^\s@\"(),:;<>\[\]\\]{1,64}$")


def valid_email(address: str | None) -> bool:
    r"""Whether a (normalized) address can be a mailbox: the strict, documented subset
    of RFC 5321 §4.1.2 / RFC 6531 that people type. One ``@``; a local part of 1-64
    characters without spaces, quotes or the specials ``"(),:;<>[]\``, not starting or
    ending with a dot and without ``..``; a domain of at least two labels (``example``
    alone, ``localhost`` or an IP literal are no address a salon's customer gives),
    each 1-63 letters, digits or inner hyphens (Unicode letters: IDN, RFC 5890), the
    last not all digits; 254 characters at most (RFC 5321 §4.5.3.1.3). Quoted local
    parts are refused: they identify no one a booking form lets through."""
    if not address or len(address) > EMAIL_MAX or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def normalize_email(value: str | None) -> str | None:
    """An e-mail address as Hookfleet stores and compares it; None (unknown) when blank.

    Trimmed, Unicode NFC (RFC 6532 §3.1: the composed and decomposed spellings of
    ``ü`` are one address) and lower-cased — nothing else. Lower-casing the local part
    is a decision: RFC 5321 §2.4 lets a mail server tell ``Ada@`` from ``ada@`` but
    calls relying on it "discouraged", no common provider does, and people type their
    address in any case, so a case-sensitive key would split one person. No accent
    or other folding: ``jürgen@`` and ``jurgen@`` are different mailboxes, so different
    people (``str.lower``, not ``casefold``: ``straße@`` stays distinct from ``strasse@``).
    Empty means unknown (NULL), so the unique key allows many.
    """
    if value is None:
        return None
    text = unicodedata.normalize("NFC", value.strip()).lower()
    return text or None

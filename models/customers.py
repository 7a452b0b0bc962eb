"""``customers``: the people who call and book, found again by email or phone."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, validates

from models.base import Base, UTCDateTime, optional_link, utcnow
from models.business import normalize_email
from models.phones import normalize_phone


class Customer(Base):
    """A caller or booker. ``phone`` is E.164 when ``phone_valid``; else as given.

    ``email`` is UNIQUE and NULL when unknown (both backends allow many NULLs).
    ``company_id`` is NULL for a caller of a number no branch owns.
    """

    __tablename__ = "customers"
    __table_args__ = (Index(None, "company_id", "phone"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int | None] = optional_link("companies")
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    email: Mapped[str | None] = mapped_column(String(191), default=None, unique=True)
    phone: Mapped[str | None] = mapped_column(String(32), default=None)
    phone_type: Mapped[str | None] = mapped_column(String(32), default=None)
    phone_valid: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @validates("phone")
    def _normalize_phone(self, _key: str, value: str | None) -> str | None:
        if value is None or not value.strip():
            self.phone_type, self.phone_valid = None, False
            return None
        phone = normalize_phone(value)
        self.phone_type, self.phone_valid = phone.type, phone.valid
        return phone.value[:32]

    @validates("email")
    def _lower_email(self, _key: str, value: str | None) -> str | None:
        return normalize_email(value)

    def completeness(self) -> int:
        """How much is known: the integrity merge keeps the most complete record."""
        return sum(bool(v) for v in (self.name, self.email, self.phone, self.phone_valid))

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.email or self.phone}>"

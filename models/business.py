"""The businesses Hookfleet serves: companies and their branches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from models.base import Base, PortableJSON, UTCDateTime, utcnow
from models.phones import normalize_phone


class Company(Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    branches: Mapped[list[Branch]] = relationship(back_populates="company")


class Branch(Base):
    """A location with its own phone number, Retell agent and Cal.com event type.

    ``phone`` is stored in E.164 whenever it is a valid number (see models.phones).
    """

    __tablename__ = "branches"
    __table_args__ = (
        Index(None, "company_id", "is_active"),
        Index(None, "phone"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32), default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    working_hours: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON(), default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    retell_agent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    calcom_event_type_id: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    company: Mapped[Company] = relationship(back_populates="branches")

    @validates("phone")
    def _normalize_phone(self, _key: str, value: str | None) -> str | None:
        return None if value is None else normalize_phone(value).value

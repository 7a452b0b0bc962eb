"""The declarative base and the column types every table shares."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    event,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, Mapper, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations name the same things on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# MariaDB's byte-for-byte collation without trailing-space padding.
EXACT_COLLATION = "utf8mb4_nopad_bin"


def exact_text(length: int) -> String:
    """A natural key compared byte for byte: an id a provider chose (a Retell
    ``call_id``, a Stripe ``evt_`` id, a Cal.com uid), where ``callAbC`` and ``callabc``,
    or ``é`` and ``e``, or ``id`` and ``id `` are two things. MariaDB's default
    ``utf8mb4_general_ci`` folds case and accents (a UNIQUE index would then collapse
    two ids into one row), and even ``utf8mb4_bin`` ignores trailing spaces (a PAD SPACE
    collation); ``utf8mb4_nopad_bin`` (MariaDB 10.2+) compares the bytes stored.
    SQLite's default collation is BINARY."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation=EXACT_COLLATION), "mysql", "mariadb"
    )


# TEXT tops out at 64 KiB on MariaDB; a Retell transcript can pass that.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

# An id of webhook_events (its key, and the replay cursor that points into it): BIGINT on
# MariaDB, INTEGER on SQLite, where only an INTEGER PRIMARY KEY is the autoincrementing
# rowid.
EventId = BigInteger().with_variant(Integer, "sqlite")


def status_column(values: type[enum.StrEnum]) -> Enum:
    """A status column of ``values``: their strings in a VARCHAR(16), not a native ENUM
    (SQLite has none; a new status then needs no ALTER of the column's type)."""
    return Enum(
        values, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
    )


class PortableJSON(TypeDecorator[Any]):
    """JSON kept as text on every backend.

    MariaDB's JSON is LONGTEXT underneath anyway and SQLite has no JSON type; one
    representation keeps migrations and backups identical across the two.
    """

    impl = LongText
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        # Non-ASCII as UTF-8, not \uXXXX: "é" is 2 bytes, not 6 (7 once escaped in SQL),
        # so a stored document is never much larger than the body it came from.
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored naive in UTC and always handed back timezone-aware.

    MariaDB and SQLite keep no zone; storing UTC and re-attaching it on the way out
    keeps comparisons right whatever the server's time zone is.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def optional_link(table: str) -> MappedColumn[Any]:
    """A nullable link to ``table``'s row that becomes NULL when that row is deleted:
    the record (a call, a booking) outlives what it points at."""
    return mapped_column(ForeignKey(f"{table}.id", ondelete="SET NULL"), default=None)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


@event.listens_for(Mapper, "before_configured")
def _load_every_table() -> None:
    """Before SQLAlchemy first configures the mappers (a first query or new row), every
    table is loaded: a module that imported one table module still flushes rows whose
    foreign keys name tables of others (``models`` loads them lazily)."""
    from models import load_tables

    load_tables()


class Timestamped:
    """``created_at`` (set on insert) and ``updated_at`` (set on insert and on every ORM
    update), both :class:`UTCDateTime` filled in by Python, not by the database (no
    server default: the migrations have none). A mixin, as SQLAlchemy's
    ``declarative_mixins`` shows: a table opts in by listing it before ``Base``."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, sort_order=1)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, sort_order=1
    )

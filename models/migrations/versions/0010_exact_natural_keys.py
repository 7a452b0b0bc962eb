"""Natural keys compared byte for byte on MariaDB.

MariaDB's default ``utf8mb4_general_ci`` folds case and accents: a Retell ``call_id``
``callAbC`` and ``callabc``, or Stripe ``evt_`` / Standard ``webhook-id`` values that
differ only in case, were one row in a UNIQUE index while Redis dedup (byte keys) let
both through: the second delivery was silently lost. These columns become
``utf8mb4_nopad_bin`` (``utf8mb4_bin`` would still take ``id`` and ``id `` for one):
``webhook_events.provider`` and ``event_id``, ``calls.call_id``,
``appointments.calcom_uid`` and ``rescheduled_from_uid``,
``appointment_attendees.seat_uid``, ``agents.retell_agent_id``. SQLite compares BINARY
already: nothing to do there.

Downgrade folds again: it fails while two keys differ only in case or accents.

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, length, nullable); types frozen here rather than imported (see 0001).
COLUMNS = (
    ("webhook_events", "provider", 32, False),
    ("webhook_events", "event_id", 191, False),
    ("calls", "call_id", 128, False),
    ("appointments", "calcom_uid", 128, False),
    ("appointments", "rescheduled_from_uid", 128, True),
    ("appointment_attendees", "seat_uid", 128, True),
    ("agents", "retell_agent_id", 64, True),
)


def _binary(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column, length, nullable in COLUMNS:
        op.alter_column(
            table,
            column,
            type_=_binary(length),
            existing_type=sa.String(length),
            existing_nullable=nullable,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column, length, nullable in COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(length),
            existing_type=_binary(length),
            existing_nullable=nullable,
        )

"""E-mail columns as long as an address can be (254, RFC 5321 §4.5.3.1.3) on customers
and appointment_attendees; appointment_attendees.status_at (the ``createdAt`` of the
Cal.com event that last set a seat's status, so a seat given up and booked again is
booked again); appointments.customer_at (the ``createdAt`` of the booking event that
named the appointment's customer, so the first seat's holder wins whatever order the
seats' events arrive in).

UNIQUE (company_key, email) and UNIQUE (appointment_id, email) still fit InnoDB's
3072-byte key limit: 254 characters x 4 bytes (utf8mb4_bin) + a 4-byte integer.

Revision ID: 0009
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types frozen here rather than imported from models (see 0001).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _email(length: int) -> sa.types.TypeEngine[str]:
    """customers.email (0005)."""
    return sa.String(length=length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _attendee_email(length: int) -> sa.types.TypeEngine[str]:
    """appointment_attendees.email (0006)."""
    return sa.String(length=length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=_email(191), type_=_email(254), existing_nullable=True
        )
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.alter_column(
            "email",
            existing_type=_attendee_email(191),
            type_=_attendee_email(254),
            existing_nullable=True,
        )
        batch_op.add_column(sa.Column("status_at", TIMESTAMP, nullable=True))


def downgrade() -> None:
    # Refused (MariaDB strict mode) while an address longer than 191 characters is
    # stored: shorten or remove those first.
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.drop_column("status_at")
        batch_op.alter_column(
            "email",
            existing_type=_attendee_email(254),
            type_=_attendee_email(191),
            existing_nullable=True,
        )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.alter_column(
            "email", existing_type=_email(254), type_=_email(191), existing_nullable=True
        )
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_column("customer_at")

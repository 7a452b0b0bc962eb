"""appointment_attendees (one row per attendee / seat) and the appointment columns every
Cal.com trigger needs: Cal.com's numeric booking id, payment, meeting start/end, host
no-show.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types frozen here rather than imported from models (see 0001).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Compared as written on MariaDB too (its default collation equates jürgen@ and jurgen@).
EXACT_EMAIL = sa.String(length=191).with_variant(
    mysql.VARCHAR(191, collation="utf8mb4_bin"), "mysql", "mariadb"
)
TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("calcom_booking_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("started_at", TIMESTAMP, nullable=True))
        batch_op.add_column(sa.Column("ended_at", TIMESTAMP, nullable=True))
        batch_op.add_column(sa.Column("payment_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("host_no_show", sa.Boolean(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_appointments_calcom_booking_id"), ["calcom_booking_id"], unique=False
        )

    op.create_table(
        "appointment_attendees",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=False),
        sa.Column("email", EXACT_EMAIL, nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("seat_uid", sa.String(length=128), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("no_show", sa.Boolean(), nullable=True),
        sa.Column("no_show_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_appointment_attendees_appointment_id_appointments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_appointment_attendees_customer_id_customers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointment_attendees")),
        sa.UniqueConstraint(
            "appointment_id", "email", name=op.f("uq_appointment_attendees_appointment_id_email")
        ),
        **TABLE_OPTIONS,
    )
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_appointment_attendees_seat_uid"), ["seat_uid"], unique=False
        )


def downgrade() -> None:
    op.drop_table("appointment_attendees")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_appointments_calcom_booking_id"))
        batch_op.drop_column("host_no_show")
        batch_op.drop_column("payment_status")
        batch_op.drop_column("ended_at")
        batch_op.drop_column("started_at")
        batch_op.drop_column("calcom_booking_id")

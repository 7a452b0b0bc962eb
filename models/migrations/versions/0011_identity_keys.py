"""Unique keys for people without an e-mail: ``customers.person_key`` (the number and
the folded name of a customer created without an e-mail on a number another customer
holds) with UNIQUE (company_key, person_key), and ``appointment_attendees.name_key``
(``name:`` + the folded name of an attendee without an e-mail) with UNIQUE
(appointment_id, name_key). Without them two workers applying first contacts of one
such person at once both inserted her (the look-ups are plain reads).

``customer_details``: what an event said about a customer that the customer row does
not hold (a conflicting name, phone or e-mail; an invalid e-mail or phone as given), so
nothing is dropped (``models.customers.CustomerDetail``).

Existing rows keep NULL keys (NULLs never collide): duplicates made before this
revision are left for ``hookfleet integrity fix``. Key sizes fit InnoDB's 3072 bytes:
240 and 210 characters x 4 bytes (utf8mb4_bin) + a 4-byte integer.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _exact(length: int) -> sa.types.TypeEngine[str]:
    """Compared byte for byte (``models.customers.identity_text``); frozen here (see 0001)."""
    return sa.String(length=length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "customer_details",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", _exact(255), nullable=False),
        sa.Column("first_seen_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name="fk_customer_details_customer_id_customers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_customer_details"),
        sa.UniqueConstraint(
            "customer_id", "kind", "value", name="uq_customer_details_customer_id_kind_value"
        ),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index("ix_customer_details_kind_value", "customer_details", ["kind", "value"])
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("person_key", _exact(240), nullable=True))
        batch_op.create_unique_constraint(
            "uq_customers_company_key_person_key", ["company_key", "person_key"]
        )
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", _exact(210), nullable=True))
        batch_op.create_unique_constraint(
            "uq_appointment_attendees_appointment_id_name_key", ["appointment_id", "name_key"]
        )


def downgrade() -> None:
    op.drop_index("ix_customer_details_kind_value", table_name="customer_details")
    op.drop_table("customer_details")
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.drop_constraint("uq_appointment_attendees_appointment_id_name_key", type_="unique")
        batch_op.drop_column("name_key")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_constraint("uq_customers_company_key_person_key", type_="unique")
        batch_op.drop_column("person_key")

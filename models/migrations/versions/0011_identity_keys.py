"""Unique keys for people without an e-mail: ``customers.person_key`` (the number and
the folded name of a customer created without an e-mail on a number another customer
holds) with UNIQUE (company_key, person_key), and ``appointment_attendees.name_key``
(``name:`` + the folded name of an attendee without an e-mail) with UNIQUE
(appointment_id, name_key). Without them two workers applying first contacts of one
such person at once both inserted her (the look-ups are plain reads).

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
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _exact(length: int) -> sa.types.TypeEngine[str]:
    """Compared byte for byte (``models.customers.identity_text``); frozen here (see 0001)."""
    return sa.String(length=length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
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
    with op.batch_alter_table("appointment_attendees", schema=None) as batch_op:
        batch_op.drop_constraint("uq_appointment_attendees_appointment_id_name_key", type_="unique")
        batch_op.drop_column("name_key")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_constraint("uq_customers_company_key_person_key", type_="unique")
        batch_op.drop_column("person_key")

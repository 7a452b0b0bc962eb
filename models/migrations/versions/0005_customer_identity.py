"""customers: identity keys per company, compared byte for byte.

- ``company_key`` (company_id, or 0 for none): NULLs never collide in a UNIQUE index,
  so "no company" needs a value for the keys below to hold.
- ``phone_key``: the valid phone a customer is found by; UNIQUE (company_key, phone_key)
  makes concurrent first contacts from one number create one customer. Filled here
  for the oldest customer of each (company, valid phone).
- UNIQUE (company_key, email) replaces the global UNIQUE (email).
- On MariaDB, ``email``, ``phone`` and ``phone_key`` use ``utf8mb4_bin``: the server's
  ``utf8mb4_general_ci``/``unicode_ci`` compare ``jürgen@`` and ``jurgen@`` equal.
  SQLite compares BINARY by default.

Downgrade restores the global UNIQUE (email): it fails while one address is a customer
of two companies (merge or delete those first).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _binary(length: int) -> sa.types.TypeEngine[str]:
    # Frozen here rather than imported from models (see 0001).
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _on_mariadb() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("company_key", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("phone_key", _binary(32), nullable=True))
    op.execute("UPDATE customers SET company_key = COALESCE(company_id, 0)")
    # The derived table: MariaDB cannot read the table an UPDATE writes in a subquery.
    op.execute(
        "UPDATE customers SET phone_key = phone WHERE id IN (SELECT first_id FROM ("
        " SELECT MIN(id) AS first_id FROM customers"
        " WHERE phone_valid = 1 AND phone IS NOT NULL GROUP BY company_key, phone"
        ") AS firsts)"
    )
    if _on_mariadb():
        for name, length in (("email", 191), ("phone", 32)):
            op.alter_column(
                "customers",
                name,
                type_=_binary(length),
                existing_type=sa.String(length),
                existing_nullable=True,
            )
    with op.batch_alter_table("customers") as batch:
        batch.drop_constraint("uq_customers_email", type_="unique")
        batch.create_unique_constraint("uq_customers_company_key_email", ["company_key", "email"])
        batch.create_unique_constraint(
            "uq_customers_company_key_phone_key", ["company_key", "phone_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_constraint("uq_customers_company_key_phone_key", type_="unique")
        batch.drop_constraint("uq_customers_company_key_email", type_="unique")
    if _on_mariadb():
        for name, length in (("email", 191), ("phone", 32)):
            op.alter_column(
                "customers",
                name,
                type_=sa.String(length),
                existing_type=_binary(length),
                existing_nullable=True,
            )
    with op.batch_alter_table("customers") as batch:
        batch.create_unique_constraint("uq_customers_email", ["email"])
        batch.drop_column("phone_key")
        batch.drop_column("company_key")

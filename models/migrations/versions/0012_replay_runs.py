"""replay_runs: each ``hookfleet replay``, its selection, cursor and counts, so an
interrupted replay resumes where it stopped (``models.replays``); and an index on
``webhook_events.correlation_id``, the id every log line carries, so
``hookfleet events list --correlation-id`` finds its event without a scan.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here (see 0001).
LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "replay_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("selection", LONGTEXT, nullable=False),
        sa.Column("up_to_id", EVENT_ID, nullable=False),
        sa.Column("cursor", EVENT_ID, nullable=False),
        sa.Column("rate_per_s", sa.Float(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "interrupted",
                "finished",
                name="runstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("estimated", sa.Integer(), nullable=False),
        sa.Column("replayed", sa.Integer(), nullable=False),
        sa.Column("counts", LONGTEXT, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("interrupted_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_replay_runs"),
        sa.UniqueConstraint("token", name="uq_replay_runs_token"),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index("ix_webhook_events_correlation_id", "webhook_events", ["correlation_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_correlation_id", "webhook_events")
    op.drop_table("replay_runs")

"""The directory, the edges, the matches and their outbox, tombstones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The edges have one layout per backend (see ``docs/matching.md``): sorted
``bigint[]`` runs with a GIN index on PostgreSQL, one row per edge on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("pending")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "matching_person",
        sa.Column("person_key", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("person_id", sa.String(128), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("x_id", sa.BigInteger(), nullable=True),
        sa.Column("x_username", sa.String(64), nullable=True),
        sa.Column("x_verified", sa.Boolean(), nullable=False),
        sa.Column("trust", sa.String(16), nullable=False),
        sa.Column("import_key", sa.Integer(), nullable=True),
        sa.Column("import_id", sa.String(128), nullable=True),
        sa.Column("import_sent_at", sa.Float(), nullable=True),
        sa.Column("consent_matching", sa.Boolean(), nullable=False),
        sa.Column("consent_auto_follow", sa.Boolean(), nullable=False),
        sa.Column("consent_notifications", sa.Boolean(), nullable=False),
        sa.Column("consent_revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_matching_person_person_id", "matching_person", ["person_id"], unique=True)
    op.create_index("ix_matching_person_x_id", "matching_person", ["x_id"])
    op.create_index(
        "ix_matching_person_import_key", "matching_person", ["import_key"], unique=True
    )

    op.create_table(
        "matching_account",
        sa.Column("person_key", sa.Integer(), primary_key=True),
        sa.Column("network", sa.SmallInteger(), primary_key=True),
        sa.Column("account", sa.String(512), nullable=True),
        sa.Column("handle", sa.String(512), nullable=True),
        sa.Column("event_at", sa.Float(), nullable=False),
    )
    op.create_index(
        "ix_matching_account_network_account", "matching_account", ["network", "account"]
    )

    if postgres:
        op.create_table(
            "matching_edge_run",
            sa.Column("import_key", sa.Integer(), primary_key=True),
            sa.Column("direction", sa.SmallInteger(), primary_key=True),
            sa.Column("part", sa.Integer(), primary_key=True),
            sa.Column("ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        )
        # Runs are written once and read whole or not at all: no compression to pay.
        op.execute("ALTER TABLE matching_edge_run ALTER COLUMN ids SET STORAGE EXTERNAL")
        op.execute("CREATE INDEX ix_matching_edge_run_ids ON matching_edge_run USING gin (ids)")
    else:
        op.create_table(
            "matching_edge",
            sa.Column("edge_id", sa.Integer(), primary_key=True),
            sa.Column("import_key", sa.Integer(), nullable=False),
            sa.Column("direction", sa.SmallInteger(), nullable=False),
            sa.Column("x_id", sa.BigInteger(), nullable=False),
        )
        op.create_index("ix_matching_edge_x_id", "matching_edge", ["x_id"])
        op.create_index("ix_matching_edge_import_key", "matching_edge", ["import_key"])

    op.create_table(
        "matching_match",
        sa.Column("person_key", sa.Integer(), primary_key=True),
        sa.Column("network", sa.SmallInteger(), primary_key=True),
        sa.Column("target_key", sa.Integer(), primary_key=True),
        sa.Column("directions", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("target_account", sa.String(512), nullable=True),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_matching_match_target", "matching_match", ["target_key", "network"])
    op.create_index(
        "ix_matching_match_pending",
        "matching_match",
        ["person_key"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )

    op.create_table(
        "matching_tombstone",
        sa.Column("person_digest", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "matching_sequence",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO matching_sequence (name, value) VALUES ('import_key', 0)")


def downgrade() -> None:
    for table in (
        "matching_sequence",
        "matching_tombstone",
        "matching_match",
        "matching_edge",
        "matching_edge_run",
        "matching_account",
        "matching_person",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")

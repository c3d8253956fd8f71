"""People, their linked accounts and their archive imports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_person",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locale", sa.String(16), nullable=True),
        sa.Column("consent_matching", sa.Boolean(), nullable=False),
        sa.Column("consent_auto_follow", sa.Boolean(), nullable=False),
        sa.Column("consent_notifications", sa.Boolean(), nullable=False),
        sa.Column("consent_revision", sa.Integer(), nullable=False),
        sa.Column("x_account_id", sa.String(20), nullable=True),
        sa.Column("x_username", sa.String(64), nullable=True),
    )
    op.create_table(
        "ingest_linked_account",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "person_id",
            sa.String(32),
            sa.ForeignKey("ingest_person.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("account", sa.String(512), nullable=False),
        sa.Column("handle", sa.String(512), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("network", "account"),
    )
    op.create_index("ix_ingest_linked_account_person_id", "ingest_linked_account", ["person_id"])
    op.create_table(
        "ingest_archive_import",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "person_id",
            sa.String(32),
            sa.ForeignKey("ingest_person.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("x_account_id", sa.String(20), nullable=True),
        sa.Column("following_count", sa.Integer(), nullable=False),
        sa.Column("followers_count", sa.Integer(), nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ingest_archive_import_person_id", "ingest_archive_import", ["person_id"])
    op.create_index(
        "ix_ingest_archive_import_payload_sha256", "ingest_archive_import", ["payload_sha256"]
    )


def downgrade() -> None:
    op.drop_table("ingest_archive_import")
    op.drop_table("ingest_linked_account")
    op.drop_table("ingest_person")

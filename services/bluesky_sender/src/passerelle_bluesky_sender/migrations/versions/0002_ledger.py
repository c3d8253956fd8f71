"""Linked accounts, the follow ledger, budgets, known follows and target statuses.

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

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bluesky_account",
        sa.Column("did", sa.String(2048), primary_key=True),
        sa.Column("person_id", sa.String(128), nullable=False),
        sa.Column("handle", sa.String(512), nullable=False),
        sa.Column("pds_url", sa.String(2048), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("broken_reason", sa.String(64), nullable=True),
        sa.Column("app_password", sa.String(), nullable=False),
        sa.Column("access_jwt", sa.String(), nullable=True),
        sa.Column("refresh_jwt", sa.String(), nullable=True),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("access_expires_at", sa.Float(), nullable=True),
        sa.Column("session_issued_at", sa.Float(), nullable=True),
        sa.Column("login_times", sa.String(), nullable=False),
        sa.Column("records_cursor", sa.String(64), nullable=True),
        sa.Column("synced_at", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("linked_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index(
        "ix_bluesky_account_person_id", "bluesky_account", ["person_id"], unique=True
    )
    op.create_table(
        "bluesky_follow",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(2048), nullable=False),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("follow_id", sa.String(32), nullable=False),
        sa.Column("person_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.Float(), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=True),
        sa.Column("record_uri", sa.String(4096), nullable=True),
        sa.Column("result_pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("actor", "target", name="uq_bluesky_follow_actor_target"),
    )
    op.create_index("ix_bluesky_follow_person_id", "bluesky_follow", ["person_id"])
    op.create_index("ix_bluesky_follow_work", "bluesky_follow", ["actor", "state", "next_try_at"])
    op.create_index(
        "ix_bluesky_follow_unpublished",
        "bluesky_follow",
        ["id"],
        sqlite_where=sa.text("result_pending"),
        postgresql_where=sa.text("result_pending"),
    )
    op.create_table(
        "bluesky_budget_spend",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("did", sa.String(2048), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
    )
    op.create_index("ix_bluesky_budget_spend_did_at", "bluesky_budget_spend", ["did", "at"])
    op.create_table(
        "bluesky_known_follow",
        sa.Column("actor", sa.String(2048), primary_key=True),
        sa.Column("subject", sa.String(2048), primary_key=True),
    )
    op.create_table(
        "bluesky_target",
        sa.Column("did", sa.String(2048), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("checked_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bluesky_target")
    op.drop_table("bluesky_known_follow")
    op.drop_index("ix_bluesky_budget_spend_did_at", "bluesky_budget_spend")
    op.drop_table("bluesky_budget_spend")
    op.drop_table("bluesky_follow")
    op.drop_index("ix_bluesky_account_person_id", "bluesky_account")
    op.drop_table("bluesky_account")

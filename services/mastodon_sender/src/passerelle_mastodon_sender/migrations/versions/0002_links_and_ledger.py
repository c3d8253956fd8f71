"""Instances, OAuth apps, links, pending sign-ins, the follow ledger, resolved ids.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
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
        "mastodon_instance",
        sa.Column("domain", sa.String(253), primary_key=True),
        sa.Column("acct_domain", sa.String(253), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("authorize_endpoint", sa.Text(), nullable=False),
        sa.Column("token_endpoint", sa.Text(), nullable=False),
        sa.Column("revoke_endpoint", sa.Text(), nullable=False),
        sa.Column("granular_scopes", sa.Boolean(), nullable=False),
        sa.Column("checked_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "mastodon_app",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("client_secret_enc", sa.Text(), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("domain", "redirect_uri", name="uq_mastodon_app_redirect"),
    )
    op.create_table(
        "mastodon_link",
        sa.Column("person_id", sa.String(64), primary_key=True),
        sa.Column("acct", sa.String(512), nullable=False, unique=True),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("followers_count", sa.Integer(), nullable=False),
        sa.Column("following_count", sa.Integer(), nullable=False),
        sa.Column("profile_at", sa.Float(), nullable=False),
        sa.Column("requests_window_end", sa.Float(), nullable=False),
        sa.Column("requests_reserved", sa.Integer(), nullable=False),
        sa.Column("linked_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "mastodon_pending_link",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("acct", sa.String(512), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("followers_count", sa.Integer(), nullable=False),
        sa.Column("following_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "mastodon_follow",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("follow_id", sa.String(32), nullable=False, unique=True),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("target_x_id", sa.String(20), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.Float(), nullable=False),
        sa.Column("target_account_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("done_at", sa.Float(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("person_id", "target", name="uq_mastodon_follow_person_target"),
    )
    op.create_index(
        "ix_mastodon_follow_due", "mastodon_follow", ["person_id", "state", "next_try_at"]
    )
    op.create_index("ix_mastodon_follow_unpublished", "mastodon_follow", ["published", "state"])
    op.create_table(
        "mastodon_resolved",
        sa.Column("domain", sa.String(253), primary_key=True),
        sa.Column("acct", sa.String(512), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mastodon_resolved")
    op.drop_index("ix_mastodon_follow_unpublished", "mastodon_follow")
    op.drop_index("ix_mastodon_follow_due", "mastodon_follow")
    op.drop_table("mastodon_follow")
    op.drop_table("mastodon_pending_link")
    op.drop_table("mastodon_link")
    op.drop_table("mastodon_app")
    op.drop_table("mastodon_instance")

"""The outbox found by target too: a partial index of pending requests per target.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("pending")


def upgrade() -> None:
    op.create_index(
        "ix_matching_match_pending_target",
        "matching_match",
        ["target_key"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_matching_match_pending_target", "matching_match")

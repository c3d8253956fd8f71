"""PostgreSQL: the target index of the edges becomes segments built in bulk; an
archive's bookkeeping is one server-side call.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

The GIN index on the runs (an entry per edge, maintained as each archive
arrives) is replaced by segments of sorted postings, built by compaction
(``docs/matching.md``). Existing runs are above the watermark (0), so the first
compaction indexes them. SQLite keeps one row per edge and its B-tree.

``matching_import_begin`` does, in one round trip, what an archive needs before
its runs are copied (``MatchingStore.import_archive`` does the same in Python
on SQLite): take the write lock, refuse erased people and older imports, create
the directory entry, take the next import key, record the claim, and recompute
the trust of everyone claiming the new or the old X id.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("INSERT INTO matching_sequence (name, value) VALUES ('compacted_import_key', 0)")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_matching_edge_run_ids")
    op.create_table(
        "matching_edge_segment",
        sa.Column("segment", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("postings", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "matching_edge_block",
        sa.Column("segment", sa.Integer(), primary_key=True),
        sa.Column("block", sa.Integer(), primary_key=True),
        sa.Column("first_x", sa.BigInteger(), nullable=False),
        sa.Column("last_x", sa.BigInteger(), nullable=False),
        sa.Column("xs", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("refs", postgresql.ARRAY(sa.Integer()), nullable=True),
    )
    op.execute("ALTER TABLE matching_edge_block ALTER COLUMN xs SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE matching_edge_block ALTER COLUMN refs SET STORAGE EXTERNAL")
    # No query is planned on the arrays' contents: ANALYZE need not read them
    # (at 23 M edges that was 30 s of detoasting for statistics nobody uses).
    for table, column in (
        ("matching_edge_run", "ids"),
        ("matching_edge_block", "xs"),
        ("matching_edge_block", "refs"),
    ):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS 0")
    op.create_index(
        "ix_matching_edge_block_first_x", "matching_edge_block", ["segment", "first_x"]
    )
    op.execute(IMPORT_BEGIN)


IMPORT_BEGIN = """
CREATE OR REPLACE FUNCTION matching_import_begin(
    p_lock bigint, p_person_id text, p_digest text, p_region text, p_import_id text,
    p_sent_at double precision, p_x_id bigint, p_username text, p_now double precision,
    p_claimed text, p_disputed text, p_verified text
) RETURNS TABLE (status text, person_key integer, import_key integer, old_x bigint,
                 old_import integer, claimants integer[], consenting boolean[],
                 claimed_x bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    p matching_person%ROWTYPE;
    k integer;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF EXISTS (SELECT 1 FROM matching_tombstone t WHERE t.person_digest = p_digest) THEN
        RETURN QUERY SELECT 'erased'::text, NULL::integer, NULL::integer, NULL::bigint,
            NULL::integer, NULL::integer[], NULL::boolean[], NULL::bigint[];
        RETURN;
    END IF;
    SELECT * INTO p FROM matching_person m WHERE m.person_id = p_person_id;
    IF NOT FOUND THEN
        INSERT INTO matching_person (person_id, region, x_verified, trust, consent_matching,
            consent_auto_follow, consent_notifications, consent_revision, created_at,
            updated_at)
        VALUES (p_person_id, p_region, false, p_claimed, false, false, false, -1, p_now, p_now)
        RETURNING * INTO p;
    END IF;
    IF p.import_sent_at IS NOT NULL AND p.import_id IS DISTINCT FROM p_import_id
            AND NOT p_sent_at > p.import_sent_at THEN
        RETURN QUERY SELECT 'stale'::text, p.person_key, NULL::integer, NULL::bigint,
            NULL::integer, NULL::integer[], NULL::boolean[], NULL::bigint[];
        RETURN;
    END IF;
    UPDATE matching_sequence s SET value = s.value + 1 WHERE s.name = 'import_key'
        RETURNING s.value INTO k;
    UPDATE matching_person m SET x_id = p_x_id, x_username = p_username, import_key = k,
        import_id = p_import_id, import_sent_at = p_sent_at, updated_at = p_now
        WHERE m.person_key = p.person_key;
    RETURN QUERY
    WITH changed AS (
        UPDATE matching_person m SET trust = CASE
            WHEN m.x_verified THEN p_verified
            WHEN (SELECT count(*) FROM matching_person q WHERE q.x_id = m.x_id) > 1
                THEN p_disputed
            ELSE p_claimed END
        WHERE m.x_id IN (p_x_id, p.x_id)
        RETURNING m.person_key, m.consent_matching, m.x_id
    )
    SELECT 'applied'::text, p.person_key, k, p.x_id, p.import_key,
        coalesce(array_agg(c.person_key ORDER BY c.person_key), '{}'),
        coalesce(array_agg(c.consent_matching ORDER BY c.person_key), '{}'),
        coalesce(array_agg(c.x_id ORDER BY c.person_key), '{}')
    FROM changed c;
END
$$
"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS matching_import_begin")
        op.drop_table("matching_edge_block")
        op.drop_table("matching_edge_segment")
        op.execute("CREATE INDEX ix_matching_edge_run_ids ON matching_edge_run USING gin (ids)")
    op.execute("DELETE FROM matching_sequence WHERE name = 'compacted_import_key'")

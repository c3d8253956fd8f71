"""The matching service's tables (its own database; nobody else reads it).

Small integers stand for the few enumerations, so that the two big tables
(edges and matches) stay narrow; the codes are below and nowhere else. Times are
epoch seconds (floats), stored the same way on SQLite and PostgreSQL.

- ``matching_person``: the directory, one row per person of this node: the X id
  their own archive claims (``x_id``, the unsigned id stored as a signed 64-bit
  integer, see :mod:`passerelle_matching.ids`), its trust level, their consents
  and which archive import their edges come from (``import_key``).
- ``matching_account``: the person's linked account per network (Bluesky DID or
  Mastodon acct, and the handle people recognise). A row with ``account`` NULL
  remembers an unlink, so a late ``identity.linked`` cannot undo it.
- edges — the X ids a person's archive lists, per direction, keyed by
  ``import_key`` (a new import gets a new key; the old edges are deleted in the
  same transaction). Two layouts, one per backend (``docs/matching.md``):
  ``matching_edge_run`` on PostgreSQL (one row per decoded batch: a sorted
  ``bigint[]``), found by target through segments of sorted postings built in
  bulk (``matching_edge_segment``, ``matching_edge_block``), and
  ``matching_edge`` on SQLite (one row per edge, a B-tree on the target).
- ``matching_match``: one row per (person, network, target person): which
  directions (bit mask), the state, the target account once requested, and
  ``pending`` — the outbox flag of the follow request still to publish.
- ``matching_tombstone``: a one-way digest of each erased person id, so that a
  late message about them cannot bring them back.
- ``matching_sequence``: counters (the next ``import_key``; the last one compacted).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, SmallInteger, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field, SQLModel

from passerelle_contracts.base import Network
from passerelle_contracts.events import Direction
from passerelle_contracts.rpc import MatchState, TrustLevel

metadata = SQLModel.metadata

# --- codes ---------------------------------------------------------------------------

#: Direction bits (``matching_edge*.direction`` holds one, ``matching_match.directions`` a mask).
FOLLOWING = 1
"""The person followed the target on X."""
FOLLOWER = 2
"""The target followed the person on X."""
DIRECTION_BITS: dict[Direction, int] = {"following": FOLLOWING, "follower": FOLLOWER}

NETWORK_CODES: dict[Network, int] = {"bluesky": 1, "mastodon": 2}
NETWORK_NAMES: dict[int, Network] = {v: k for k, v in NETWORK_CODES.items()}

PROPOSED = 0
SELECTED = 1
REQUESTED = 2
FOLLOWED = 3
ALREADY_FOLLOWING = 4
FAILED = 5
DECLINED = 6
STATE_CODES: dict[MatchState, int] = {
    "proposed": PROPOSED,
    "selected": SELECTED,
    "requested": REQUESTED,
    "followed": FOLLOWED,
    "already_following": ALREADY_FOLLOWING,
    "failed": FAILED,
    "declined": DECLINED,
}
STATE_NAMES: dict[int, MatchState] = {v: k for k, v in STATE_CODES.items()}
UNACTED = (PROPOSED, SELECTED, DECLINED)
"""States nothing was done for yet: such a match disappears when its reason does."""

VERIFIED: TrustLevel = "verified"
CLAIMED: TrustLevel = "claimed"
DISPUTED: TrustLevel = "disputed"

#: The outbox condition (the partial index and its queries must say the same).
PENDING = "pending"


def codes(values: tuple[int, ...]) -> str:
    """``(0, 1, 6)`` as SQL text ``0,1,6`` (our own integer constants only)."""
    return ",".join(str(int(v)) for v in values)


# --- tables --------------------------------------------------------------------------


class MatchingPerson(SQLModel, table=True):
    __tablename__ = "matching_person"
    __table_args__ = (
        Index("ix_matching_person_x_id", "x_id"),
        Index("ix_matching_person_import_key", "import_key", unique=True),
        {"sqlite_autoincrement": True},
    )

    person_key: int | None = Field(default=None, primary_key=True)
    person_id: str = Field(unique=True, max_length=128)
    region: str = Field(max_length=32)
    x_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    x_username: str | None = Field(default=None, max_length=64)
    x_verified: bool = False
    trust: str = Field(default=CLAIMED, max_length=16)
    import_key: int | None = None
    import_id: str | None = Field(default=None, max_length=128)
    import_sent_at: float | None = None
    consent_matching: bool = False
    consent_auto_follow: bool = False
    consent_notifications: bool = False
    consent_revision: int = -1
    created_at: float
    updated_at: float


class MatchingAccount(SQLModel, table=True):
    __tablename__ = "matching_account"
    __table_args__ = (Index("ix_matching_account_network_account", "network", "account"),)

    person_key: int = Field(primary_key=True)
    network: int = Field(primary_key=True, sa_type=SmallInteger)
    account: str | None = Field(default=None, max_length=512)
    handle: str | None = Field(default=None, max_length=512)
    event_at: float
    """``sent_at`` of the last identity event applied (older ones are ignored)."""


class MatchingEdgeRun(SQLModel, table=True):
    """PostgreSQL only: a sorted run of X ids of one import and direction."""

    __tablename__ = "matching_edge_run"

    import_key: int = Field(primary_key=True)
    direction: int = Field(primary_key=True, sa_type=SmallInteger)
    part: int = Field(primary_key=True)
    ids: list[int] = Field(sa_column=Column(ARRAY(BigInteger), nullable=False))


class MatchingEdgeSegment(SQLModel, table=True):
    """PostgreSQL only: one segment of the target index (``edges.PostgresRuns``)."""

    __tablename__ = "matching_edge_segment"

    segment: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    postings: int = Field(sa_column=Column(BigInteger, nullable=False))


class MatchingEdgeBlock(SQLModel, table=True):
    """PostgreSQL only: a block of a segment's sorted postings (X id → ``ref``)."""

    __tablename__ = "matching_edge_block"
    __table_args__ = (Index("ix_matching_edge_block_first_x", "segment", "first_x"),)

    segment: int = Field(primary_key=True)
    block: int = Field(primary_key=True)
    first_x: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_x: int = Field(sa_column=Column(BigInteger, nullable=False))
    xs: list[int] | None = Field(default=None, sa_column=Column(ARRAY(BigInteger)))
    refs: list[int] | None = Field(default=None, sa_column=Column(ARRAY(Integer)))


class MatchingEdge(SQLModel, table=True):
    """SQLite only: one row per edge."""

    __tablename__ = "matching_edge"
    __table_args__ = (
        Index("ix_matching_edge_x_id", "x_id"),
        Index("ix_matching_edge_import_key", "import_key"),
    )

    edge_id: int | None = Field(default=None, primary_key=True)
    import_key: int
    direction: int = Field(sa_type=SmallInteger)
    x_id: int = Field(sa_column=Column(BigInteger, nullable=False))


class MatchingMatch(SQLModel, table=True):
    __tablename__ = "matching_match"
    __table_args__ = (
        Index("ix_matching_match_target", "target_key", "network"),
        Index(
            "ix_matching_match_pending",
            "person_key",
            sqlite_where=text(PENDING),
            postgresql_where=text(PENDING),
        ),
        Index(
            "ix_matching_match_pending_target",
            "target_key",
            sqlite_where=text(PENDING),
            postgresql_where=text(PENDING),
        ),
    )

    person_key: int = Field(primary_key=True)
    network: int = Field(primary_key=True, sa_type=SmallInteger)
    target_key: int = Field(primary_key=True)
    directions: int = Field(sa_type=SmallInteger)
    state: int = Field(sa_type=SmallInteger)
    reason: str | None = Field(default=None, max_length=200)
    target_account: str | None = Field(default=None, max_length=512)
    """The account a follow was requested for (frozen then; NULL before)."""
    pending: bool = False
    created_at: float
    updated_at: float


class MatchingTombstone(SQLModel, table=True):
    __tablename__ = "matching_tombstone"

    person_digest: str = Field(primary_key=True, max_length=64)
    erased_at: float


class MatchingSequence(SQLModel, table=True):
    __tablename__ = "matching_sequence"

    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))

"""The bluesky sender service's tables (its own database; nobody else reads it).

Times are epoch seconds on the service's clock (floats), so a fast test clock and the
real one are stored the same way.

- ``bluesky_account``: a linked account: its DID, person, PDS, encrypted credentials
  (app password and session tokens), login history (createSession budget) and how far
  its follow records were read.
- ``bluesky_follow``: the ledger, one row per (account DID, target DID). Its ``state``
  is the work's truth: ``pending`` → ``in_flight`` (a call may be under way) → ``done``
  or ``failed``; ``result_pending`` marks the outbox of ``follow.result``.
- ``bluesky_budget_spend``: points spent per account (sliding hour and day windows).
- ``bluesky_known_follow``: the account's follow records as read from its repo.
- ``bluesky_target``: what was learnt about a target account (active, deleted...).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata

# Ledger states.
PENDING = "pending"
IN_FLIGHT = "in_flight"
DONE = "done"
FAILED = "failed"
OPEN_STATES = (PENDING, IN_FLIGHT)

# Account states.
ACTIVE = "active"
#: The outbox condition (the partial index and its queries must say the same).
UNPUBLISHED = "result_pending"
BROKEN = "broken"


class BlueskyAccount(SQLModel, table=True):
    __tablename__ = "bluesky_account"

    did: str = Field(primary_key=True, max_length=2048)
    person_id: str = Field(index=True, unique=True, max_length=128)
    handle: str = Field(max_length=512)
    pds_url: str = Field(max_length=2048)
    state: str = Field(default=ACTIVE, max_length=16)
    broken_reason: str | None = Field(default=None, max_length=64)
    app_password: str
    """Encrypted (Fernet)."""
    access_jwt: str | None = None
    """Encrypted (Fernet)."""
    refresh_jwt: str | None = None
    """Encrypted (Fernet)."""
    key_id: str = Field(max_length=16)
    """Fingerprint of the key that encrypted the three fields above."""
    access_expires_at: float | None = None
    session_issued_at: float | None = None
    login_times: str = "[]"
    """JSON list of the times of our createSession calls in the last day."""
    records_cursor: str | None = Field(default=None, max_length=64)
    """The highest record key read from the account's follow collection."""
    synced_at: float | None = None
    lease_owner: str | None = Field(default=None, max_length=64)
    """The replica working on the account now (one at a time)."""
    lease_until: float | None = None
    linked_at: float
    updated_at: float


class BlueskyFollow(SQLModel, table=True):
    __tablename__ = "bluesky_follow"
    __table_args__ = (
        UniqueConstraint("actor", "target", name="uq_bluesky_follow_actor_target"),
        Index("ix_bluesky_follow_work", "actor", "state", "next_try_at"),
        Index(
            "ix_bluesky_follow_unpublished",
            "id",
            sqlite_where=text(UNPUBLISHED),
            postgresql_where=text(UNPUBLISHED),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    actor: str = Field(max_length=2048)
    target: str = Field(max_length=2048)
    follow_id: str = Field(max_length=32)
    person_id: str = Field(index=True, max_length=128)
    state: str = Field(default=PENDING, max_length=16)
    outcome: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    next_try_at: float
    batch_id: str | None = Field(default=None, max_length=32)
    record_uri: str | None = Field(default=None, max_length=4096)
    result_pending: bool = False
    """A ``follow.result`` waits to be published (the row just finished)."""
    created_at: float
    updated_at: float


class BlueskyBudgetSpend(SQLModel, table=True):
    __tablename__ = "bluesky_budget_spend"
    __table_args__ = (Index("ix_bluesky_budget_spend_did_at", "did", "at"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    did: str = Field(max_length=2048)
    at: float
    points: int
    kind: str = Field(default="write", max_length=16)
    """``write`` (our calls) or ``external`` (points the server says were spent elsewhere)."""


class BlueskyKnownFollow(SQLModel, table=True):
    __tablename__ = "bluesky_known_follow"

    actor: str = Field(primary_key=True, max_length=2048)
    subject: str = Field(primary_key=True, max_length=2048)


class BlueskyTarget(SQLModel, table=True):
    __tablename__ = "bluesky_target"

    did: str = Field(primary_key=True, max_length=2048)
    status: str = Field(max_length=32)
    """``active``, ``not_found``, ``deleted``, ``deactivated``, ``takendown``, ``suspended``."""
    checked_at: float

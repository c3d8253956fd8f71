"""The mastodon sender service's tables (its own database; nobody else reads it).

Times are epoch seconds on the service's clock (floats), so the scheduler can
compare them without conversions. Secrets are Fernet tokens (``*_enc``).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata


class MastodonInstance(SQLModel, table=True):
    """What an instance said about itself, and how its OAuth behaves."""

    __tablename__ = "mastodon_instance"

    domain: str = Field(primary_key=True, max_length=253)
    acct_domain: str = Field(max_length=253)
    """The domain in its accounts' addresses (``user@acct_domain``)."""
    version: str = Field(default="", max_length=200)
    authorize_endpoint: str = Field(sa_column=Column(Text, nullable=False))
    token_endpoint: str = Field(sa_column=Column(Text, nullable=False))
    revoke_endpoint: str = Field(sa_column=Column(Text, nullable=False))
    granular_scopes: bool = True
    """False once the server refused or did not honour granular scopes."""
    checked_at: float


class MastodonApp(SQLModel, table=True):
    """Our OAuth app on an instance, one per redirect URI."""

    __tablename__ = "mastodon_app"
    __table_args__ = (UniqueConstraint("domain", "redirect_uri", name="uq_mastodon_app_redirect"),)

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(max_length=253)
    redirect_uri: str = Field(sa_column=Column(Text, nullable=False))
    client_id: str = Field(sa_column=Column(Text, nullable=False))
    client_secret_enc: str = Field(sa_column=Column(Text, nullable=False))
    scopes: str = Field(max_length=500)
    """The scopes the app was registered with (authorizations ask for a subset)."""
    created_at: float


class MastodonLink(SQLModel, table=True):
    """A person's Mastodon account and its access token."""

    __tablename__ = "mastodon_link"

    person_id: str = Field(primary_key=True, max_length=64)
    acct: str = Field(unique=True, max_length=512)
    """``user@domain``, as published in ``identity.linked``."""
    domain: str = Field(max_length=253)
    """The instance we call (the web domain, may differ from the acct's)."""
    account_id: str = Field(max_length=64)
    app_id: int
    token_enc: str = Field(sa_column=Column(Text, nullable=False))
    scopes: str = Field(max_length=500)
    status: str = Field(default="active", max_length=16)
    """``active``; ``revoked`` (the server refused the token); ``reauthorize`` (scopes)."""
    code_hash: str = Field(default="", max_length=64)
    """The authorization code it was made with (hashed): a repeated link is idempotent."""
    followers_count: int = 0
    following_count: int = 0
    profile_at: float = 0.0
    """When the counts were read."""
    requests_window_end: float = 0.0
    requests_reserved: int = 0
    """Calls counted ahead in that window: after a restart the count resumes from here."""
    linked_at: float
    lease_owner: str | None = Field(default=None, max_length=255)
    """The replica working on the account (one at a time), or that last did."""
    lease_until: float | None = None
    """Real epoch seconds: until then only ``lease_owner`` works on the account (renewed
    before each call; 0 once given back; a parked account's budget is spent until then)."""


class MastodonPendingLink(SQLModel, table=True):
    """A verified sign-in waiting for the edge to say whose it is (short-lived)."""

    __tablename__ = "mastodon_pending_link"

    code_hash: str = Field(primary_key=True, max_length=64)
    domain: str = Field(max_length=253)
    acct: str = Field(max_length=512)
    account_id: str = Field(max_length=64)
    app_id: int
    token_enc: str = Field(sa_column=Column(Text, nullable=False))
    scopes: str = Field(max_length=500)
    followers_count: int = 0
    following_count: int = 0
    created_at: float
    """Real epoch seconds (expiry is about the person's browser, not the budget clock)."""


class MastodonFollow(SQLModel, table=True):
    """The ledger: one follow per (person, target), its state and its story."""

    __tablename__ = "mastodon_follow"
    __table_args__ = (
        UniqueConstraint("person_id", "target", name="uq_mastodon_follow_person_target"),
        Index("ix_mastodon_follow_due", "person_id", "state", "next_try_at"),
        Index("ix_mastodon_follow_unpublished", "published", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    follow_id: str = Field(unique=True, max_length=32)
    person_id: str = Field(max_length=64)
    target: str = Field(max_length=512)
    """``user@domain`` to follow (not indexed alone: only erasure looks rows up by it)."""
    target_x_id: str = Field(max_length=20)
    state: str = Field(default="pending", max_length=16)
    """``pending`` → ``working`` → ``done`` | ``failed`` (``pending`` again to retry)."""
    outcome: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    next_try_at: float = 0.0
    target_account_id: str | None = Field(default=None, max_length=64)
    """The target's id on the person's instance, once resolved."""
    created_at: float
    done_at: float | None = None
    published: bool = False
    """Whether ``follow.result`` was published for the final state."""


class MastodonResolved(SQLModel, table=True):
    """Cache: an address's account id on an instance (ids are per instance)."""

    __tablename__ = "mastodon_resolved"

    domain: str = Field(primary_key=True, max_length=253)
    acct: str = Field(primary_key=True, max_length=512)
    account_id: str = Field(max_length=64)
    resolved_at: float

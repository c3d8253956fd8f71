"""The ingest service's tables (its own database; nobody else reads it).

Only what a purpose needs: a person's consents and linked accounts (to sign them
in and route requests), and per import its state and counts. No edges, no
archive content: those go to the Object Store for matching and nowhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel, UniqueConstraint

metadata = SQLModel.metadata


def _now() -> datetime:
    return datetime.now(UTC)


class Person(SQLModel, table=True):
    """Someone who signed in here, with their consents per purpose."""

    __tablename__ = "ingest_person"

    id: str = Field(primary_key=True, max_length=32)
    created_at: datetime = Field(default_factory=_now)
    locale: str | None = Field(default=None, max_length=16)
    consent_matching: bool = False
    consent_auto_follow: bool = False
    consent_notifications: bool = False
    consent_revision: int = 0
    x_account_id: str | None = Field(default=None, max_length=20)
    x_username: str | None = Field(default=None, max_length=64)


class LinkedAccount(SQLModel, table=True):
    """An account a person proved they own on a network (their identity here)."""

    __tablename__ = "ingest_linked_account"
    __table_args__ = (UniqueConstraint("network", "account"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: str = Field(foreign_key="ingest_person.id", index=True, ondelete="CASCADE")
    network: str = Field(max_length=16)
    account: str = Field(max_length=512)
    handle: str = Field(max_length=512)
    linked_at: datetime = Field(default_factory=_now)


class ArchiveImport(SQLModel, table=True):
    """One upload: its state, what it held (counts only), and its payload's hash."""

    __tablename__ = "ingest_archive_import"

    id: str = Field(primary_key=True, max_length=32)
    person_id: str = Field(foreign_key="ingest_person.id", index=True, ondelete="CASCADE")
    state: str = Field(max_length=16)
    """``parsing`` → ``published`` | ``failed`` (``duplicate`` imports are not stored)."""
    error_code: str | None = Field(default=None, max_length=64)
    x_account_id: str | None = Field(default=None, max_length=20)
    following_count: int = 0
    followers_count: int = 0
    payload_sha256: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

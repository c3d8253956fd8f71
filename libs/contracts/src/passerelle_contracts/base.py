"""The shape every message on the bus shares."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Network = Literal["bluesky", "mastodon"]
NETWORKS: tuple[Network, ...] = ("bluesky", "mastodon")

#: An X (Twitter) account id: a decimal string, possibly beyond 2**53.
XId = str
X_ID_PATTERN = r"^[0-9]{1,20}$"

#: A region is a short lowercase tag such as ``fr`` or ``hub``.
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every message: frozen, strict about unknown fields, versioned.

    Subclasses set ``type`` to a literal naming the message and declare the NATS
    ``subject`` it travels on. ``region`` is the region of the node that sent it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: ClassVar[str]

    type: str
    version: Literal[1] = 1
    region: str = Field(pattern=REGION_PATTERN)
    sent_at: datetime = Field(default_factory=utcnow)


class Event(Message):
    """A fact published on a JetStream stream, consumed by durable consumers."""

    def dedupe_id(self) -> str:
        """The ``Nats-Msg-Id``: the same fact published twice is stored once."""
        raise NotImplementedError


class Request(Message):
    """A request/reply question, sent over core NATS (never stored in a stream)."""


class Reply(Message):
    """The answer to a :class:`Request`."""


def stable_id(*parts: str) -> str:
    """A deterministic, opaque id for a tuple of parts (32 hex characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:32]

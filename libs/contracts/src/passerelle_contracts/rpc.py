"""Request/reply messages: questions the edge asks services over core NATS.

These subjects are never captured by a stream: an answer is only useful now.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer

from passerelle_contracts.base import Network, Reply, Request
from passerelle_contracts.events import Direction, PersonId

SERVICES: tuple[str, ...] = ("ingest", "matching", "bluesky_sender", "mastodon_sender")


def health_subject(service: str) -> str:
    """The subject a service answers :class:`HealthRequest` on."""
    return f"rpc.health.{service}"


class HealthRequest(Request):
    """Are you there? Sent by the edge to each service."""

    subject: ClassVar[str] = "rpc.health.*"
    type: Literal["health.request"] = "health.request"


class HealthReply(Reply):
    """A service's name, version and region, and whether its dependencies are fine."""

    subject: ClassVar[str] = "rpc.health.*"
    type: Literal["health.reply"] = "health.reply"

    service: str
    service_version: str
    status: Literal["up", "degraded"]
    started_at: datetime
    checks: dict[str, bool] = Field(default_factory=dict)


class RpcError(BaseModel):
    """An expected failure, told to the person: a stable code and a message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: str


# --- Bluesky linking (bluesky_sender) -------------------------------------------------


class BlueskyLinkRequest(Request):
    """Link a Bluesky account with an app password (never the main password)."""

    subject: ClassVar[str] = "rpc.bluesky.link"
    type: Literal["bluesky.link.request"] = "bluesky.link.request"

    person_id: PersonId | None = None
    """``None`` at first sign-in: the sender answers with the proven account only."""
    identifier: str = Field(min_length=3, max_length=256)
    """A handle (``alice.bsky.social``) or a DID."""
    app_password: SecretStr

    @field_serializer("app_password", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        # Travels once, over request/reply (never stored in a stream); repr stays masked.
        return value.get_secret_value()


class LinkReply(Reply):
    """The proven account, or why it could not be linked."""

    subject: ClassVar[str] = "rpc.*.link"
    type: Literal["link.reply"] = "link.reply"

    network: Network
    account: str | None = None
    handle: str | None = None
    error: RpcError | None = None


class UnlinkRequest(Request):
    """Forget the person's credentials for a network."""

    subject: ClassVar[str] = "rpc.*.unlink"
    type: Literal["unlink.request"] = "unlink.request"

    person_id: PersonId
    network: Network


class UnlinkReply(Reply):
    """Whether there was something to forget."""

    subject: ClassVar[str] = "rpc.*.unlink"
    type: Literal["unlink.reply"] = "unlink.reply"

    removed: bool


# --- Mastodon linking (mastodon_sender) -----------------------------------------------


class MastodonAuthorizeRequest(Request):
    """Start OAuth on an instance: the sender registers (or reuses) the app there."""

    subject: ClassVar[str] = "rpc.mastodon.authorize"
    type: Literal["mastodon.authorize.request"] = "mastodon.authorize.request"

    instance: str = Field(min_length=3, max_length=253)
    redirect_uri: str
    state: str = Field(min_length=16, max_length=128)


class MastodonAuthorizeReply(Reply):
    """Where to send the person's browser, or why the instance cannot be used."""

    subject: ClassVar[str] = "rpc.mastodon.authorize"
    type: Literal["mastodon.authorize.reply"] = "mastodon.authorize.reply"

    authorize_url: str | None = None
    error: RpcError | None = None


class MastodonLinkRequest(Request):
    """Finish OAuth: exchange the code, verify the account, store the token."""

    subject: ClassVar[str] = "rpc.mastodon.link"
    type: Literal["mastodon.link.request"] = "mastodon.link.request"

    person_id: PersonId | None = None
    instance: str
    code: SecretStr
    redirect_uri: str

    @field_serializer("code", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        return value.get_secret_value()


# --- Matches (matching) ----------------------------------------------------------------

MatchState = Literal[
    "proposed", "selected", "requested", "followed", "already_following", "failed", "declined"
]
TrustLevel = Literal["verified", "claimed", "disputed"]


class MatchSummaryRequest(Request):
    """Counts of a person's matches per network, direction and state."""

    subject: ClassVar[str] = "rpc.matching.summary"
    type: Literal["matching.summary.request"] = "matching.summary.request"

    person_id: PersonId


class MatchCount(BaseModel):
    """One cell of the summary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: Network
    direction: Direction
    state: MatchState
    count: int


class MatchSummaryReply(Reply):
    """The summary; empty when the person has no archive yet."""

    subject: ClassVar[str] = "rpc.matching.summary"
    type: Literal["matching.summary.reply"] = "matching.summary.reply"

    counts: tuple[MatchCount, ...] = ()


class MatchListRequest(Request):
    """One page of a person's matches, filtered."""

    subject: ClassVar[str] = "rpc.matching.list"
    type: Literal["matching.list.request"] = "matching.list.request"

    person_id: PersonId
    network: Network
    direction: Direction | None = None
    states: tuple[MatchState, ...] = ()
    search: str | None = Field(default=None, max_length=100)
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=50, ge=1, le=500)


class MatchItem(BaseModel):
    """A person one may follow on a network, and where that stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str
    handle: str
    directions: tuple[Direction, ...]
    state: MatchState
    trust: TrustLevel
    reason: str | None = None


class MatchListReply(Reply):
    """A page of matches and the total for the filter."""

    subject: ClassVar[str] = "rpc.matching.list"
    type: Literal["matching.list.reply"] = "matching.list.reply"

    total: int
    items: tuple[MatchItem, ...]


class MatchSelectRequest(Request):
    """Select or deselect matches (some by target, or all in a network/direction)."""

    subject: ClassVar[str] = "rpc.matching.select"
    type: Literal["matching.select.request"] = "matching.select.request"

    person_id: PersonId
    network: Network
    selected: bool
    targets: tuple[str, ...] = Field(default=(), max_length=1000)
    all_in_direction: Direction | Literal["both"] | None = None


class MatchRequestFollows(Request):
    """Turn the person's selection on a network into follow requests."""

    subject: ClassVar[str] = "rpc.matching.request_follows"
    type: Literal["matching.request_follows.request"] = "matching.request_follows.request"

    person_id: PersonId
    network: Network


class CountReply(Reply):
    """How many rows a command changed."""

    subject: ClassVar[str] = "rpc.matching.*"
    type: Literal["count.reply"] = "count.reply"

    count: int


ALL_RPC: tuple[type[Request] | type[Reply], ...] = (
    HealthRequest,
    HealthReply,
    BlueskyLinkRequest,
    LinkReply,
    UnlinkRequest,
    UnlinkReply,
    MastodonAuthorizeRequest,
    MastodonAuthorizeReply,
    MastodonLinkRequest,
    MatchSummaryRequest,
    MatchSummaryReply,
    MatchListRequest,
    MatchListReply,
    MatchSelectRequest,
    MatchRequestFollows,
    CountReply,
)

"""Events: the facts services publish on JetStream, one class per subject."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from passerelle_contracts.base import X_ID_PATTERN, Event, Network, XId, stable_id

PersonId = str
"""An opaque id for a person of this node, issued by ``ingest`` at first sign-in."""

Direction = Literal["following", "follower"]
"""``following``: the person followed the target on X; ``follower``: the target followed them."""


class ArchiveImported(Event):
    """A person's X archive was parsed; its edges wait in the Object Store.

    Two objects in ``bucket``, one per direction, each an edge payload in the
    format named by ``payload_format`` (``passerelle_xarchive.payload``: a header,
    then strictly ascending uint64 X ids). They never hold anything but X ids.
    ``payload_sha256`` covers both (following first), so equal archives compare equal.
    """

    subject: ClassVar[str] = "archive.imported"
    type: Literal["archive.imported"] = "archive.imported"

    person_id: PersonId
    import_id: str
    x_account_id: XId = Field(pattern=X_ID_PATTERN)
    x_username: str = Field(max_length=64)
    following_count: int = Field(ge=0)
    followers_count: int = Field(ge=0)
    bucket: str
    following_object: str
    """The ids this person followed on X."""
    followers_object: str
    """The ids that followed this person on X."""
    payload_format: Literal["edges-u64le-v1"] = "edges-u64le-v1"
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def dedupe_id(self) -> str:
        return f"archive:{self.import_id}"


class ConsentChanged(Event):
    """A person's consents, per purpose, after a change (the whole set, not a delta)."""

    subject: ClassVar[str] = "consent.changed"
    type: Literal["consent.changed"] = "consent.changed"

    person_id: PersonId
    matching: bool = False
    """Appear in other people's results."""
    auto_follow: bool = False
    """Let passerelle follow one's matches without picking them one by one."""
    notifications: bool = False
    revision: int = Field(ge=0)
    """Increases with each change, so a late redelivery never undoes a newer choice."""

    def dedupe_id(self) -> str:
        return f"consent:{self.person_id}:{self.revision}"


class IdentityLinked(Event):
    """A person proved they own an account on a network (checked against the real server)."""

    subject: ClassVar[str] = "identity.linked"
    type: Literal["identity.linked"] = "identity.linked"

    person_id: PersonId
    network: Network
    account: str = Field(min_length=3, max_length=512)
    """The Bluesky DID (``did:plc:…``) or the full Mastodon acct (``user@instance``)."""
    handle: str = Field(min_length=1, max_length=512)
    """What people recognise: the Bluesky handle, or the Mastodon acct again."""

    def dedupe_id(self) -> str:
        return f"linked:{self.person_id}:{self.network}:{self.account}"


class IdentityUnlinked(Event):
    """A link ended: the person unlinked it, or its credential stopped working."""

    subject: ClassVar[str] = "identity.unlinked"
    type: Literal["identity.unlinked"] = "identity.unlinked"

    person_id: PersonId
    network: Network
    account: str
    reason: Literal["unlinked", "credential_revoked"]

    def dedupe_id(self) -> str:
        return stable_id("unlinked", self.person_id, self.network, self.account, self.reason)


def follow_id(person_id: PersonId, network: Network, target: str) -> str:
    """The deterministic id of one follow: the same (person, network, target) is one follow."""
    return stable_id("follow", person_id, network, target)


class FollowRequest(BaseModel):
    """One follow to make: ``person_id``'s account ``actor`` follows ``target``.

    ``follow_id`` (:func:`follow_id`) names the follow everywhere: a sender's ledger
    keeps one row per follow id, so a follow asked for twice is made once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    follow_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    person_id: PersonId
    actor: str
    """The person's own account on the network (DID or acct), who follows."""
    target: str
    """The account to follow (DID or acct)."""
    target_x_id: XId = Field(pattern=X_ID_PATTERN)
    directions: tuple[Direction, ...] = Field(min_length=1, max_length=2)


class FollowRequested(Event):
    """Version 1: one follow per message (still read by the senders; matching now
    publishes version 2, :class:`FollowsRequested`). Subclasses fix the network."""

    subject: ClassVar[str] = ""
    network: Network

    follow_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    person_id: PersonId
    actor: str
    """The person's own account on the network (DID or acct), who follows."""
    target: str
    """The account to follow (DID or acct)."""
    target_x_id: XId = Field(pattern=X_ID_PATTERN)
    directions: tuple[Direction, ...] = Field(min_length=1, max_length=2)

    def dedupe_id(self) -> str:
        return f"follow:{self.follow_id}"

    def requests(self) -> tuple[FollowRequest, ...]:
        """The follow this message asks for."""
        return (
            FollowRequest(
                follow_id=self.follow_id,
                person_id=self.person_id,
                actor=self.actor,
                target=self.target,
                target_x_id=self.target_x_id,
                directions=self.directions,
            ),
        )


class BlueskyFollowRequested(FollowRequested):
    """A follow to create on Bluesky (version 1)."""

    subject: ClassVar[str] = "follow.requested.bluesky"
    type: Literal["follow.requested.bluesky"] = "follow.requested.bluesky"
    network: Literal["bluesky"] = "bluesky"


class MastodonFollowRequested(FollowRequested):
    """A follow to make on Mastodon (version 1)."""

    subject: ClassVar[str] = "follow.requested.mastodon"
    type: Literal["follow.requested.mastodon"] = "follow.requested.mastodon"
    network: Literal["mastodon"] = "mastodon"


MAX_FOLLOWS_PER_MESSAGE = 1000
"""At about 250 bytes a follow, a message stays well under NATS's 1 MB default."""


class FollowsRequested(Event):
    """Version 2: several follows on one network in one message.

    A newcomer awaited by thousands emits thousands of follows at once; one
    message (and one PubAck) per follow costs more than the match itself. Each
    follow keeps its own ``follow_id``, which the senders' ledgers keep unique;
    the message's ``Nats-Msg-Id`` is derived from the ids it carries, so the same
    message published again is stored once, and a follow sent again in another
    message is recorded once by the sender.
    """

    subject: ClassVar[str] = ""
    version: Literal[2] = 2  # type: ignore[assignment]  # version 2 of the subject's message
    network: Network
    follows: tuple[FollowRequest, ...] = Field(min_length=1, max_length=MAX_FOLLOWS_PER_MESSAGE)

    def dedupe_id(self) -> str:
        if len(self.follows) == 1:
            return f"follow:{self.follows[0].follow_id}"
        return "follows:" + stable_id("follows", *sorted(f.follow_id for f in self.follows))

    def requests(self) -> tuple[FollowRequest, ...]:
        """The follows this message asks for."""
        return self.follows


class BlueskyFollowsRequested(FollowsRequested):
    """Follows to create on Bluesky."""

    subject: ClassVar[str] = "follow.requested.bluesky"
    type: Literal["follow.requested.bluesky"] = "follow.requested.bluesky"
    network: Literal["bluesky"] = "bluesky"


class MastodonFollowsRequested(FollowsRequested):
    """Follows to make on Mastodon."""

    subject: ClassVar[str] = "follow.requested.mastodon"
    type: Literal["follow.requested.mastodon"] = "follow.requested.mastodon"
    network: Literal["mastodon"] = "mastodon"


_READERS: dict[Network, TypeAdapter[FollowRequested | FollowsRequested]] = {
    "bluesky": TypeAdapter(
        Annotated[BlueskyFollowRequested | BlueskyFollowsRequested, Field(discriminator="version")]
    ),
    "mastodon": TypeAdapter(
        Annotated[
            MastodonFollowRequested | MastodonFollowsRequested, Field(discriminator="version")
        ]
    ),
}


def read_follow_requests(network: Network, data: bytes) -> tuple[FollowRequest, ...]:
    """The follows a ``follow.requested.<network>`` message asks for, whichever its
    version (raises :class:`pydantic.ValidationError` if it is neither)."""
    return _READERS[network].validate_json(data).requests()


FollowOutcome = Literal["followed", "already_following", "failed"]


class FollowResult(Event):
    """What became of one :class:`FollowRequested`."""

    subject: ClassVar[str] = "follow.result"
    type: Literal["follow.result"] = "follow.result"

    follow_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    person_id: PersonId
    network: Network
    target: str
    outcome: FollowOutcome
    reason: str | None = Field(default=None, max_length=200)
    """For failures: a short machine reason (``target_not_found``, ``follow_cap`` …)."""

    def dedupe_id(self) -> str:
        return f"result:{self.follow_id}:{self.outcome}"


class UserErased(Event):
    """A person asked to be forgotten: every service deletes everything about them."""

    subject: ClassVar[str] = "user.erased"
    type: Literal["user.erased"] = "user.erased"

    person_id: PersonId
    x_account_id: XId | None = Field(default=None, pattern=X_ID_PATTERN)

    def dedupe_id(self) -> str:
        return f"erased:{self.person_id}"


ALL_EVENTS: tuple[type[Event], ...] = (
    ArchiveImported,
    ConsentChanged,
    IdentityLinked,
    IdentityUnlinked,
    BlueskyFollowRequested,
    MastodonFollowRequested,
    BlueskyFollowsRequested,
    MastodonFollowsRequested,
    FollowResult,
    UserErased,
)

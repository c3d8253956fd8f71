"""The federated directory: the only messages that cross regions.

A region publishes, for each person who consented to be found, one
:class:`DirectoryEntry` (their X id and the accounts they proved on the
networks), and a :class:`DirectoryTombstone` when they leave (erasure, consent
withdrawn, nothing linked any more). Both travel on the person's own subject,
``directory.<region>.<key>``, so the newest message on a subject is the
person's state, and a tombstone supersedes the entry everywhere it was copied.
Nothing else crosses: no edges, archives, credentials or ledgers.

Streams (JetStream, one domain per region and one for the hub; the accounts,
permissions and mirroring are in ``deploy/nats/`` and ``docs/federation.md``):

- ``DIRECTORY_<REGION>`` in the region: its own entries and tombstones;
- ``DIRECTORY`` in the hub: *sources* every region's stream;
- ``DIRECTORY_GLOBAL`` in each region: a *mirror* of the hub's ``DIRECTORY``,
  which the region's matching consumes (it keeps working while the hub is away).

These streams live in the FEDERATION account, not with the services' streams
(:data:`passerelle_contracts.streams.STREAMS`), so no service creates them.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from passerelle_contracts.base import (
    REGION_PATTERN,
    X_ID_PATTERN,
    Event,
    Network,
    XId,
    stable_id,
)
from passerelle_contracts.rpc import TrustLevel
from passerelle_contracts.streams import DAY, Stream

KEY_PATTERN = r"^[0-9a-f]{32}$"

#: Every directory subject, all regions: ``directory.<region>.<key>``.
DIRECTORY_SUBJECTS = "directory.*.*"


def directory_key(region: str, person_id: str) -> str:
    """The opaque, stable key of one person's entry: the last token of its subject."""
    return stable_id("directory", region, person_id)


def directory_subject(region: str, key: str) -> str:
    """The subject of one person's entry and tombstone."""
    return f"directory.{region}.{key}"


def region_directory_subjects(region: str) -> str:
    """What ``region`` may publish, and what the hub takes from it."""
    return f"directory.{region}.*"


class DirectoryAccount(BaseModel):
    """One account a person proved they own (the sender checked it on the real server)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: Network
    account: str = Field(min_length=3, max_length=512)
    """The Bluesky DID (``did:plc:…``) or the full Mastodon acct (``user@instance``)."""
    handle: str = Field(min_length=1, max_length=512)
    """What people recognise: the Bluesky handle, or the Mastodon acct again."""


class _DirectoryMessage(Event):
    """What entries and tombstones share: the person's key, on the person's subject.

    ``sent_at`` is the time of the change; a receiver keeps, per key, the message
    with the latest ``sent_at`` (a tombstone wins a tie), so a late redelivery
    never resurrects a person.
    """

    subject: ClassVar[str] = DIRECTORY_SUBJECTS

    key: str = Field(pattern=KEY_PATTERN)

    def directory_subject(self) -> str:
        """The concrete subject this message is published on."""
        return directory_subject(self.region, self.key)


class DirectoryEntry(_DirectoryMessage):
    """A person of ``region`` who consented to be found by people of every region."""

    type: Literal["directory.entry"] = "directory.entry"

    x_account_id: XId = Field(pattern=X_ID_PATTERN)
    trust: TrustLevel
    """How sure the publishing region is that this person owns the X id."""
    accounts: tuple[DirectoryAccount, ...] = Field(min_length=1, max_length=2)
    """At most one per network."""

    def dedupe_id(self) -> str:
        # Short: the header crosses the hub with every copy of the message.
        return stable_id("directory", self.key, self.sent_at.isoformat())


class DirectoryTombstone(_DirectoryMessage):
    """The person of ``key`` is no longer in the directory: forget their entry.

    It carries no X id and no account: only the key of the entry it removes.
    """

    type: Literal["directory.tombstone"] = "directory.tombstone"

    reason: Literal["erased", "withdrawn"]
    """``erased``: the person asked to be forgotten; ``withdrawn``: they withdrew
    the consent to be found, or unlinked every network."""

    def dedupe_id(self) -> str:
        return stable_id("directory-tombstone", self.key, self.sent_at.isoformat())


DirectoryMessage = Annotated[DirectoryEntry | DirectoryTombstone, Field(discriminator="type")]
"""Either message, told apart by ``type`` (``TypeAdapter(DirectoryMessage)`` parses one)."""

FEDERATION_EVENTS: tuple[type[Event], ...] = (DirectoryEntry, DirectoryTombstone)

#: JetStream domain of the hub; each region's domain is its region tag.
HUB_DOMAIN = "hub"


def regional_directory_stream(region: str) -> Stream:
    """``DIRECTORY_<REGION>``: a region's own entries and tombstones (in its domain)."""
    if not _is_region(region):
        raise ValueError(f"not a region tag: {region!r}")
    return Stream(
        f"DIRECTORY_{region.upper().replace('-', '_')}",
        (region_directory_subjects(region),),
        f"Directory entries and tombstones of region {region}, sourced by the hub.",
        max_age_seconds=0,
        max_msg_size=16 * 1024,
        duplicate_window_seconds=DAY,
    )


GLOBAL_DIRECTORY = Stream(
    "DIRECTORY",
    (),
    "Every region's directory, sourced from each DIRECTORY_<REGION> (hub domain).",
    max_age_seconds=0,
    max_msg_size=16 * 1024,
    duplicate_window_seconds=DAY,
)

DIRECTORY_MIRROR = Stream(
    "DIRECTORY_GLOBAL",
    (),
    "A region's mirror of the hub's DIRECTORY: what matching reads, hub or no hub.",
    max_age_seconds=0,
    max_msg_size=16 * 1024,
)


def _is_region(region: str) -> bool:
    return re.fullmatch(REGION_PATTERN, region) is not None

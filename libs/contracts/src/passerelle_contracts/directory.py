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

**On the wire** every copy of a message crosses the hub once per region, so it
is written compactly (:func:`encode_directory_message`): the region and the key
are the subject's tokens and are not repeated, the time is an integer of
microseconds, and short keys name the fields (an entry, then a tombstone)::

    {"at":1764072000000000,"x":"1234","t":"v",
     "a":[["b","did:plc:…","ann.bsky.social"],["m","ann@mastodon.example"]]}
    {"at":1764072000000000,"gone":"erased"}

``t``: trust (``v`` verified, ``c`` claimed, ``d`` disputed); ``a``: the accounts,
``[network, account, handle]`` with ``b`` Bluesky and ``m`` Mastodon, the handle
left out when it is the account itself (a Mastodon acct). A future version adds
``"v": 2``; no ``v`` is version 1. :func:`decode_directory_message` reads this
form, and also the full JSON of the models (``model_dump_json``), whose region
and key must then agree with the subject.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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

# --- the wire form ---------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TRUST_CODES: dict[TrustLevel, str] = {"verified": "v", "claimed": "c", "disputed": "d"}
_TRUST_NAMES = {code: name for name, code in _TRUST_CODES.items()}
_NETWORK_CODES: dict[Network, str] = {"bluesky": "b", "mastodon": "m"}
_NETWORK_NAMES = {code: name for name, code in _NETWORK_CODES.items()}
_ACCOUNT = Annotated[str, Field(min_length=3, max_length=512)]
_HANDLE = Annotated[str, Field(min_length=1, max_length=512)]


class _WireEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    at: int = Field(ge=0)
    x: str = Field(pattern=X_ID_PATTERN)
    t: Literal["v", "c", "d"]
    a: list[tuple[Literal["b", "m"], _ACCOUNT] | tuple[Literal["b", "m"], _ACCOUNT, _HANDLE]] = (
        Field(min_length=1, max_length=2)
    )


class _WireTombstone(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    at: int = Field(ge=0)
    gone: Literal["erased", "withdrawn"]


_WIRE: TypeAdapter[_WireEntry | _WireTombstone] = TypeAdapter(_WireEntry | _WireTombstone)
_FULL: TypeAdapter[DirectoryMessage] = TypeAdapter(DirectoryMessage)


class DirectoryDecodeError(ValueError):
    """Bytes that are not a directory message for the subject they came on."""


def _microseconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def encode_directory_message(message: DirectoryEntry | DirectoryTombstone) -> bytes:
    """The compact wire form of ``message`` (its region and key travel in the subject)."""
    body: dict[str, object] = {"at": _microseconds(message.sent_at)}
    if isinstance(message, DirectoryEntry):
        body["x"] = message.x_account_id
        body["t"] = _TRUST_CODES[message.trust]
        body["a"] = [
            [_NETWORK_CODES[a.network], a.account] + ([] if a.handle == a.account else [a.handle])
            for a in message.accounts
        ]
    else:
        body["gone"] = message.reason
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_directory_message(region: str, key: str, data: bytes) -> DirectoryMessage:
    """The message stored on ``directory.<region>.<key>``, from either form.

    Raises :class:`DirectoryDecodeError` if the bytes are not a directory message,
    or (full form) name another region or key than the subject.
    """
    try:
        if b'"type"' in data:
            full = _FULL.validate_json(data)
            if full.region != region or full.key != key:
                raise DirectoryDecodeError(f"payload is for {full.region}/{full.key}")
            return full
        wire = _WIRE.validate_json(data)
        sent_at = _EPOCH + wire.at * _MICROSECOND
        if isinstance(wire, _WireTombstone):
            return DirectoryTombstone(region=region, key=key, sent_at=sent_at, reason=wire.gone)
        return DirectoryEntry(
            region=region,
            key=key,
            sent_at=sent_at,
            x_account_id=wire.x,
            trust=_TRUST_NAMES[wire.t],
            accounts=tuple(
                DirectoryAccount(
                    network=_NETWORK_NAMES[item[0]],
                    account=item[1],
                    handle=item[2] if len(item) == 3 else item[1],
                )
                for item in wire.a
            ),
        )
    except ValidationError as error:
        raise DirectoryDecodeError("not a directory message") from error


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

"""passerelle's protocol: every message, subject, stream and consumer, in one place.

No I/O here. Services depend on this package and on nothing of each other.
"""

from passerelle_contracts.base import NETWORKS, Event, Message, Network, Reply, Request, stable_id
from passerelle_contracts.directory import (
    FEDERATION_EVENTS,
    DirectoryAccount,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    directory_key,
    directory_subject,
)
from passerelle_contracts.events import (
    ALL_EVENTS,
    ArchiveImported,
    BlueskyFollowRequested,
    ConsentChanged,
    Direction,
    FollowRequested,
    FollowResult,
    IdentityLinked,
    IdentityUnlinked,
    MastodonFollowRequested,
    PersonId,
    UserErased,
    follow_id,
)
from passerelle_contracts.rpc import (
    ALL_RPC,
    SERVICES,
    HealthReply,
    HealthRequest,
    health_subject,
)
from passerelle_contracts.streams import CONSUMERS, STREAMS, Consumer, Stream, stream_for_subject

__all__ = [
    "ALL_EVENTS",
    "ALL_RPC",
    "CONSUMERS",
    "FEDERATION_EVENTS",
    "NETWORKS",
    "SERVICES",
    "STREAMS",
    "ArchiveImported",
    "BlueskyFollowRequested",
    "ConsentChanged",
    "Consumer",
    "Direction",
    "DirectoryAccount",
    "DirectoryEntry",
    "DirectoryMessage",
    "DirectoryTombstone",
    "Event",
    "FollowRequested",
    "FollowResult",
    "HealthReply",
    "HealthRequest",
    "IdentityLinked",
    "IdentityUnlinked",
    "MastodonFollowRequested",
    "Message",
    "Network",
    "PersonId",
    "Reply",
    "Request",
    "Stream",
    "UserErased",
    "directory_key",
    "directory_subject",
    "follow_id",
    "health_subject",
    "stable_id",
    "stream_for_subject",
]

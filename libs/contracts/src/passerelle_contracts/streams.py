"""JetStream streams and durable consumers: declared once, here.

Every event subject belongs to exactly one stream; request/reply subjects
(``rpc.>``) belong to none. Services create or update these at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Retention = Literal["limits", "workqueue", "interest"]

DAY = 24 * 3600


@dataclass(frozen=True)
class Stream:
    """A JetStream stream: its name, the subjects it captures and its limits."""

    name: str
    subjects: tuple[str, ...]
    description: str
    retention: Retention = "limits"
    max_age_seconds: int = 30 * DAY
    max_bytes: int = -1
    max_msg_size: int = 1024 * 1024
    duplicate_window_seconds: int = 3600
    replicas: int = 1


ARCHIVES = Stream(
    "ARCHIVES",
    ("archive.imported",),
    "Archives parsed by ingest; the edges themselves live in the Object Store.",
    max_age_seconds=7 * DAY,
)
ACCOUNTS = Stream(
    "ACCOUNTS",
    ("identity.*", "consent.changed"),
    "Proven identities on the networks and consents per purpose.",
)
FOLLOW_REQUESTS = Stream(
    "FOLLOW_REQUESTS",
    ("follow.requested.bluesky", "follow.requested.mastodon"),
    "Follows to make, one work queue per network, several per message; the follow ids"
    " a message carries give its Nats-Msg-Id.",
    retention="workqueue",
    duplicate_window_seconds=DAY,
)
FOLLOW_RESULTS = Stream(
    "FOLLOW_RESULTS",
    ("follow.result",),
    "What became of each follow request.",
    max_age_seconds=7 * DAY,
)
ERASURES = Stream(
    "ERASURES",
    ("user.erased",),
    "Erasure tombstones: every service forgets the person.",
    max_age_seconds=90 * DAY,
)
DEAD_LETTERS = Stream(
    "DEAD_LETTERS",
    ("deadletter.>",),
    "Messages a consumer gave up on, kept for operators to inspect and replay.",
    max_age_seconds=30 * DAY,
)

#: JetStream's own notices that a message used up its deliveries. Kept in a stream
#: (not only sent to whoever listens at that moment) so a service that was down or
#: disconnected when a message ran out of deliveries still parks it afterwards.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
DELIVERY_ADVISORIES = Stream(
    "DELIVERY_ADVISORIES",
    (f"{MAX_DELIVERIES_ADVISORY}.>",),
    "Notices that a message exhausted its deliveries, until its service dead-letters it.",
    retention="workqueue",
    max_age_seconds=30 * DAY,
)

STREAMS: tuple[Stream, ...] = (
    ARCHIVES,
    ACCOUNTS,
    FOLLOW_REQUESTS,
    FOLLOW_RESULTS,
    ERASURES,
    DEAD_LETTERS,
    DELIVERY_ADVISORIES,
)

#: Object Store bucket holding archive edge payloads (ingest writes, matching reads).
ARCHIVE_EDGES_BUCKET = "archive-edges"


def dead_letter_subject(stream: str, consumer: str) -> str:
    """Where a message that exhausted its deliveries on ``consumer`` is parked."""
    return f"deadletter.{stream}.{consumer}"


def max_deliveries_subject(stream: str, consumer: str) -> str:
    """Where JetStream announces that a message on ``consumer`` exhausted its deliveries."""
    return f"{MAX_DELIVERIES_ADVISORY}.{stream}.{consumer}"


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer with explicit acks, filtered on one subject (wildcards allowed).

    ``backoff_seconds`` spaces redeliveries of a failing message; after
    ``max_deliver`` deliveries it goes to the dead-letter stream.
    """

    durable: str
    stream: Stream
    filter_subject: str
    service: str
    ack_wait_seconds: float = 60.0
    max_deliver: int = 8
    backoff_seconds: tuple[float, ...] = field(default=(1.0, 5.0, 15.0, 60.0, 300.0))
    max_ack_pending: int = 1000
    batch_size: int = 16


MATCHING_ARCHIVES = Consumer(
    "matching-archives", ARCHIVES, "archive.imported", "matching", ack_wait_seconds=300.0
)
MATCHING_IDENTITIES = Consumer("matching-identities", ACCOUNTS, "identity.*", "matching")
MATCHING_CONSENTS = Consumer("matching-consents", ACCOUNTS, "consent.changed", "matching")
MATCHING_RESULTS = Consumer("matching-results", FOLLOW_RESULTS, "follow.result", "matching")
MATCHING_ERASURES = Consumer("matching-erasures", ERASURES, "user.erased", "matching")
BLUESKY_FOLLOWS = Consumer(
    "bluesky-follows",
    FOLLOW_REQUESTS,
    "follow.requested.bluesky",
    "bluesky_sender",
    batch_size=200,
    max_ack_pending=20000,
)
BLUESKY_ERASURES = Consumer("bluesky-erasures", ERASURES, "user.erased", "bluesky_sender")
MASTODON_FOLLOWS = Consumer(
    "mastodon-follows",
    FOLLOW_REQUESTS,
    "follow.requested.mastodon",
    "mastodon_sender",
    batch_size=50,
    max_ack_pending=20000,
)
MASTODON_ERASURES = Consumer("mastodon-erasures", ERASURES, "user.erased", "mastodon_sender")

CONSUMERS: tuple[Consumer, ...] = (
    MATCHING_ARCHIVES,
    MATCHING_IDENTITIES,
    MATCHING_CONSENTS,
    MATCHING_RESULTS,
    MATCHING_ERASURES,
    BLUESKY_FOLLOWS,
    BLUESKY_ERASURES,
    MASTODON_FOLLOWS,
    MASTODON_ERASURES,
)


def stream_for_subject(subject: str) -> Stream:
    """The one stream capturing ``subject`` (exact subjects or a trailing ``>``)."""
    found = [s for s in STREAMS if any(_matches(p, subject) for p in s.subjects)]
    if len(found) != 1:
        raise LookupError(f"{subject!r} is captured by {len(found)} streams, expected 1")
    return found[0]


def _matches(pattern: str, subject: str) -> bool:
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(p_tokens):
        if part == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (part not in ("*", s_tokens[i])):
            return False
    return len(p_tokens) == len(s_tokens)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching (``*`` one token, ``>`` the rest)."""
    return _matches(pattern, subject)

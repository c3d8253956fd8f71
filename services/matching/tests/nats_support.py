"""The matching service in-process on a real nats-server, and the people around it.

``ingest`` and the senders are played by a plain broker that publishes what they
would (archives with their Object Store payloads, identities, consents); the
follow requests are read back from the ``FOLLOW_REQUESTS`` stream itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
from faststream.nats import NatsBroker

from passerelle_contracts import (
    ArchiveImported,
    BlueskyFollowRequested,
    BlueskyFollowsRequested,
    ConsentChanged,
    Event,
    IdentityLinked,
    MastodonFollowRequested,
    MastodonFollowsRequested,
    Network,
)
from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET, CONSUMERS, FOLLOW_REQUESTS
from passerelle_matching.app import create_service
from passerelle_matching.service import MatchingService
from passerelle_matching.settings import Settings
from passerelle_platform.broker import ensure_streams, publish_event
from passerelle_xarchive import EdgeSet
from services.matching.tests.world import account_of

FOLLOWS_REQUESTED: dict[tuple[str, int], type[Event]] = {
    ("bluesky", 1): BlueskyFollowRequested,
    ("bluesky", 2): BlueskyFollowsRequested,
    ("mastodon", 1): MastodonFollowRequested,
    ("mastodon", 2): MastodonFollowsRequested,
}


def payload(ids: Iterable[int]) -> bytes:
    with EdgeSet.from_ids(sorted(set(ids))) as edges:
        return b"".join(edges.iter_payload())


class Edge:
    """Publishes what ingest and the senders would, on a real NATS."""

    def __init__(self, broker: NatsBroker, js: Any) -> None:
        self.broker = broker
        self.js = js
        self._revisions: dict[str, int] = {}

    async def archive(
        self, person: str, x_id: int, following: Iterable[int], followers: Iterable[int]
    ) -> ArchiveImported:
        """Store the payloads and build the event (not yet published)."""
        import_id = uuid.uuid4().hex
        store = await self.js.create_object_store(ARCHIVE_EDGES_BUCKET)
        first, second = payload(following), payload(followers)
        await store.put(f"{import_id}.following", first)
        await store.put(f"{import_id}.followers", second)
        return ArchiveImported(
            region="local",
            person_id=person,
            import_id=import_id,
            x_account_id=str(x_id),
            x_username=person,
            following_count=len(set(following)),
            followers_count=len(set(followers)),
            bucket=ARCHIVE_EDGES_BUCKET,
            following_object=f"{import_id}.following",
            followers_object=f"{import_id}.followers",
            payload_sha256=hashlib.sha256(first + second).hexdigest(),
        )

    def linked(self, person: str, network: Network) -> IdentityLinked:
        account = account_of(person, network)
        return IdentityLinked(
            region="local", person_id=person, network=network, account=account, handle=account
        )

    def consent(self, person: str, *, auto_follow: bool) -> ConsentChanged:
        revision = self._revisions.get(person, 0) + 1
        self._revisions[person] = revision
        return ConsentChanged(
            region="local",
            person_id=person,
            matching=True,
            auto_follow=auto_follow,
            revision=revision,
        )

    async def publish(self, event: Event, *, again_as: str | None = None) -> None:
        """Publish once (``again_as``: a second copy under another Nats-Msg-Id)."""
        await publish_event(self.broker, event)
        if again_as is not None:
            await self.broker.publish(
                event,
                event.subject,
                stream="ARCHIVES" if isinstance(event, ArchiveImported) else "ACCOUNTS",
                headers={"Nats-Msg-Id": again_as},
            )

    async def follow_requests(self) -> list[dict[str, Any]]:
        """Every follow requested in the FOLLOW_REQUESTS stream, oldest first: one dict
        per follow (a message may carry several), with its message's ``type``,
        ``region``, ``network``, ``version`` and ``_headers``."""
        return [follow for message in await self.follow_messages() for follow in message]

    async def follow_messages(self) -> list[list[dict[str, Any]]]:
        """The messages in the FOLLOW_REQUESTS stream, oldest first, each as its follows."""
        info = await self.js.stream_info(FOLLOW_REQUESTS.name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await self.js.get_msg(FOLLOW_REQUESTS.name, seq)
            body = json.loads(msg.data)
            # Each message is the contract's, its Nats-Msg-Id the one it should have.
            model = FOLLOWS_REQUESTED[body["network"], body["version"]]
            event = model.model_validate_json(msg.data)
            assert event.dedupe_id() == (msg.headers or {}).get("Nats-Msg-Id")
            envelope = {
                "type": body["type"],
                "version": body["version"],
                "region": body["region"],
                "network": body["network"],
                "_headers": dict(msg.headers or {}),
            }
            follows = body.get("follows", [body])
            out.append([{**follow, **envelope} for follow in follows])
        return out

    async def settled_except(self, durable: str, within: float = 30.0) -> None:
        """:meth:`settled`, leaving out one consumer (one that keeps a bad message)."""
        await self.settled(within, leave_out=durable)

    async def settled(self, within: float = 30.0, *, leave_out: str = "") -> None:
        """Wait until matching's consumers have nothing pending or unacknowledged."""
        deadline = time.monotonic() + within
        mine = [c for c in CONSUMERS if c.service == "matching" and c.durable != leave_out]
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = False
            for consumer in mine:
                info = await self.js.consumer_info(consumer.stream.name, consumer.durable)
                busy |= bool(info.num_pending or info.num_ack_pending)
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since > 0.5:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("matching did not settle")


@asynccontextmanager
async def running_matching(
    nats_url: str, database_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[MatchingService]:
    settings = Settings(
        env="dev",
        nats_url=nats_url,
        data_dir=tmp_path / "data",
        database_url=database_url,  # type: ignore[arg-type]
        nats_connect_retry_seconds=0.2,
        **overrides,
    )
    service = create_service(settings)
    await service.runtime.start()
    try:
        deadline = time.monotonic() + 30
        while service.runtime.health().status != "up":
            if time.monotonic() > deadline:
                raise AssertionError(f"matching not ready: {service.runtime.checks()}")
            await asyncio.sleep(0.05)
        yield service
    finally:
        await service.runtime.stop()


@asynccontextmanager
async def edge(nats_url: str) -> AsyncIterator[Edge]:
    broker = NatsBroker(nats_url, logger=None)
    await broker.connect()
    await ensure_streams(broker)
    connection = await nats.connect(nats_url)
    try:
        yield Edge(broker, connection.jetstream())
    finally:
        await connection.close()
        await broker.stop()

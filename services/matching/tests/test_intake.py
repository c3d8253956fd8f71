"""The batched intake of ``archive.imported``, and publication in windows, on a real
nats-server.

Archives waiting in the stream are fetched together and loaded in one
transaction; a message whose payloads do not match its digest is nacked alone
(the others of its batch are acked); a batch whose follow requests could not be
published after the commit is redelivered whole, and every follow is still
requested exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, cast

import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy
from sqlalchemy import text

from passerelle_contracts import IdentityLinked, Network
from passerelle_contracts.streams import FOLLOW_REQUESTS
from passerelle_matching.edges import EdgeBatch
from passerelle_matching.service import MatchingService
from passerelle_matching.store import Archive, MatchingStore, Outcome, Scope
from passerelle_platform.broker import stream_config
from services.matching.tests.nats_support import Edge, edge, running_matching
from services.matching.tests.test_nats import AUTO, GRAPH, LINKS, expected, seen
from services.matching.tests.world import World, account_of
from tests.support.nats import NatsServer


def handled(service: MatchingService, outcome: str) -> float:
    value = service.runtime.metrics.registry.get_sample_value(
        "passerelle_messages_handled_total",
        {"consumer": "matching-archives", "outcome": outcome},
    )
    return value or 0.0


async def test_archives_are_loaded_in_batches_a_bad_one_alone_is_redelivered(
    nats_server: NatsServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with edge(nats_server.url) as ingest:
        # Consents and links first, handled by a first run of the service.
        async with running_matching(
            nats_server.url, database_url, tmp_path, trust_archive_claims=True
        ):
            for person in GRAPH:
                await ingest.publish(ingest.consent(person, auto_follow=AUTO[person]))
            for person, networks in LINKS.items():
                for network in networks:
                    await ingest.publish(ingest.linked(person, cast(Network, network)))
            await ingest.settled()

        # While the service is down, the archives arrive (bob's twice, under two
        # message ids), and one whose payloads do not match its digest.
        archives = [await ingest.archive(p, *GRAPH[p]) for p in GRAPH]
        bad = (await ingest.archive("dave", 4, [1, 2], [])).model_copy(
            update={"payload_sha256": "0" * 64}
        )
        for event in archives:
            await ingest.publish(event)
        await ingest.publish(archives[1], again_as="copy-of-bob")
        await ingest.publish(bad)

        sizes: list[int] = []
        real_import = MatchingStore.import_archives

        def recording(
            self: MatchingStore,
            items: Sequence[tuple[Archive, Iterable[EdgeBatch]]],
            *,
            match: bool = True,
        ) -> list[Outcome]:
            sizes.append(len(items))
            return real_import(self, items, match=match)

        failures: list[int] = []
        real_publish = MatchingService._publish  # noqa: SLF001 - the failure injected

        async def flaky_publish(self: MatchingService, requests: Any) -> None:
            if not failures:
                failures.append(len(requests))
                raise ConnectionError("NATS went away after the commit")
            await real_publish(self, requests)

        monkeypatch.setattr(MatchingStore, "import_archives", recording)
        monkeypatch.setattr(MatchingService, "_publish", flaky_publish)

        async with running_matching(
            nats_server.url, database_url, tmp_path, trust_archive_claims=True
        ) as matching:
            deadline = time.monotonic() + 60
            while handled(matching, "ack") < len(archives) + 1:
                assert time.monotonic() < deadline, "the archives were not all acked"
                await asyncio.sleep(0.1)
            await ingest.settled_except("matching-archives")
            # The first delivery loaded the four good archives in one transaction,
            # then could not publish: the whole batch came back and was loaded again.
            assert failures, "the failure was injected"
            assert sizes[0] == len(archives) + 1
            assert sizes.count(len(archives) + 1) >= 2
            # dave's archive never loads, and is nacked by itself each time.
            assert handled(matching, "nack") >= len(archives) + 2
            assert await asyncio.to_thread(matching.store.archive_is_current, "dave", "x", 0.0)
            assert seen(await ingest.follow_requests()) == expected()


async def test_a_message_whose_puback_fails_stays_in_the_outbox_and_lands_once_later(
    nats_server: NatsServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages of two follows; JetStream refuses the third message: the follows of the
    first two are cleared, the last two stay pending and are published again later,
    each follow stored once.

    (nats-py raises an error PubAck inside its reply callback instead of failing the
    future, so a refused message surfaces as the PubAck wait timing out.)"""
    monkeypatch.setattr("passerelle_matching.service.PUBLISH_ACK_SECONDS", 1.0)
    async with (
        two_follows_a_message(nats_server.url, database_url, tmp_path) as matching,
        edge(nats_server.url) as ingest,
    ):
        world = World(matching.store)
        targets = six_targets(world)
        world.join("alice", 1, following=[10 + i for i in range(6)], auto_follow=True)
        scope = Scope(owners={person_key(matching.store, "alice")})
        assert len(await asyncio.to_thread(matching.store.pending_requests, scope)) == 6

        await refuse_a_third_message(ingest)
        with pytest.raises((TimeoutError, nats.js.errors.Error)):
            await matching.flush(scope)
        await matching.cleared()
        assert len(await asyncio.to_thread(matching.store.pending_requests, scope)) == 2
        assert [len(m) for m in await ingest.follow_messages()] == [2, 2]

        await accept_every_message(ingest)
        assert await matching.flush(scope) == 2
        assert [len(m) for m in await ingest.follow_messages()] == [2, 2, 2]
        await matching.cleared()
        assert await asyncio.to_thread(matching.store.pending_requests, scope) == []
        assert_followed_once_each(await ingest.follow_requests(), targets)


async def test_a_link_whose_requests_were_refused_publishes_them_when_redelivered(
    nats_server: NatsServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice links Bluesky and six requests are due; JetStream refuses the third
    message, so the handler fails (its message would be redelivered). The same
    ``identity.linked`` again makes nothing new due, yet publishes the two that
    waited: every follow is stored once."""
    monkeypatch.setattr("passerelle_matching.service.PUBLISH_ACK_SECONDS", 1.0)
    async with (
        two_follows_a_message(nats_server.url, database_url, tmp_path) as matching,
        edge(nats_server.url) as ingest,
    ):
        world = World(matching.store)
        targets = six_targets(world)
        world.consent("alice", matching=True, auto_follow=True)
        world.archive("alice", 1, following=[10 + i for i in range(6)])
        account = account_of("alice", "bluesky")
        link = IdentityLinked(
            region="local", person_id="alice", network="bluesky", account=account, handle=account
        )

        await refuse_a_third_message(ingest)
        with pytest.raises((TimeoutError, nats.js.errors.Error)):
            await matching.on_identity_linked(link)
        await matching.cleared()
        scope = Scope(owners={person_key(matching.store, "alice")})
        assert len(await asyncio.to_thread(matching.store.pending_requests, scope)) == 2

        await accept_every_message(ingest)
        await matching.on_identity_linked(link)  # the redelivery
        await matching.cleared()
        assert await asyncio.to_thread(matching.store.pending_requests, scope) == []
        assert [len(m) for m in await ingest.follow_messages()] == [2, 2, 2]
        assert_followed_once_each(await ingest.follow_requests(), targets)


def two_follows_a_message(
    nats_url: str, database_url: str, tmp_path: Path
) -> AbstractAsyncContextManager[MatchingService]:
    """Matching publishing two follows a message, with no periodic drain."""
    return running_matching(
        nats_url,
        database_url,
        tmp_path,
        trust_archive_claims=True,
        follows_per_message=2,
        outbox_interval_seconds=3600,
    )


def six_targets(world: World) -> list[str]:
    """Six people already here (X ids 10 to 15), for alice to follow."""
    targets = [f"t{i}" for i in range(6)]
    for i, target in enumerate(targets):
        world.join(target, 10 + i)
    return targets


async def refuse_a_third_message(ingest: Edge) -> None:
    """The follow-request stream keeps two messages and refuses any more."""
    limited = dataclasses.replace(
        stream_config(FOLLOW_REQUESTS), max_msgs=2, discard=DiscardPolicy.NEW
    )
    await ingest.js.update_stream(limited)


async def accept_every_message(ingest: Edge) -> None:
    await ingest.js.update_stream(stream_config(FOLLOW_REQUESTS))


def assert_followed_once_each(published: list[dict[str, Any]], targets: list[str]) -> None:
    assert sorted(m["target"] for m in published) == sorted(
        account_of(t, "bluesky") for t in targets
    )


def person_key(store: MatchingStore, person_id: str) -> int:
    with store.engine.connect() as c:
        return int(
            c.execute(
                text("SELECT person_key FROM matching_person WHERE person_id = :p"),
                {"p": person_id},
            ).scalar_one()
        )

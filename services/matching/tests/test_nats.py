"""On a real nats-server: events in any order, redelivered, give each follow request once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker

from passerelle_contracts import BlueskyFollowsRequested, FollowRequest, follow_id
from passerelle_contracts.rpc import (
    CountReply,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchSummaryReply,
    MatchSummaryRequest,
)
from services.matching.tests.nats_support import edge, running_matching
from services.matching.tests.world import account_of
from tests.support.nats import NatsServer

# alice (X 1) follows bob and carol, bob follows her back; bob follows carol.
GRAPH = {
    "alice": (1, [2, 3], [2]),
    "bob": (2, [1, 3], [1]),
    "carol": (3, [], [1, 2]),
}
LINKS = {"alice": ["bluesky"], "bob": ["bluesky", "mastodon"], "carol": ["mastodon"]}
AUTO = {"alice": True, "bob": True, "carol": False}


def expected() -> Counter[tuple[str, str, str, str, tuple[str, ...]]]:
    """Each follow once: (network, actor, target, person, directions)."""
    want = [
        ("bluesky", "alice", "bob", ("following", "follower")),
        ("bluesky", "bob", "alice", ("following", "follower")),
        ("mastodon", "bob", "carol", ("following",)),
    ]
    return Counter(
        (network, account_of(a, network), account_of(t, network), a, directions)  # type: ignore[arg-type]
        for network, a, t, directions in want
    )


ENVELOPE = ("type", "version", "region", "network", "_headers")


def seen(messages: list[dict[str, Any]]) -> Counter[tuple[str, str, str, str, tuple[str, ...]]]:
    for m in messages:
        assert m["follow_id"] == follow_id(m["person_id"], m["network"], m["target"])
        # As a sender sees it: the contract's model (version 2), traced (the message
        # id was checked against the message by ``follow_messages``).
        headers = m["_headers"]
        follow = {k: v for k, v in m.items() if k not in ENVELOPE}
        assert FollowRequest.model_validate(follow).follow_id == m["follow_id"]
        assert m["version"] == 2
        assert headers["content-type"] == "application/json"
        assert headers["traceparent"].startswith("00-")
    return Counter(
        (m["network"], m["actor"], m["target"], m["person_id"], tuple(m["directions"]))
        for m in messages
    )


@pytest.mark.parametrize("order", ["archives_first", "links_first"])
async def test_archives_and_links_in_any_order_redelivered_request_each_follow_once(
    nats_server: NatsServer, database_url: str, tmp_path: Path, order: str
) -> None:
    async with (
        running_matching(
            nats_server.url, database_url, tmp_path, trust_archive_claims=True
        ) as matching,
        edge(nats_server.url) as ingest,
    ):
        # The first flush of an identity or archive fails after its transaction
        # committed (as if the process died before publishing): it is redelivered.
        real_flush, failures = matching.flush, []

        async def flaky_flush(scope: Any, read: Any = None) -> int:
            if scope is not None and scope.owners and not failures:
                failures.append(scope)
                raise RuntimeError("crashed before publishing")
            return await real_flush(scope, read)

        matching.flush = flaky_flush  # type: ignore[method-assign]

        archives = [await ingest.archive(p, *GRAPH[p]) for p in GRAPH]
        links = [ingest.linked(p, n) for p in LINKS for n in LINKS[p]]
        consents = [ingest.consent(p, auto_follow=AUTO[p]) for p in GRAPH]
        for event in consents:
            await ingest.publish(event)
        await ingest.settled()
        first, second = (archives, links) if order == "archives_first" else (links, archives)
        for event in first:
            await ingest.publish(event, again_as=f"copy-{event.dedupe_id()}")
        await ingest.settled()
        for event in second:
            await ingest.publish(event, again_as=f"copy-{event.dedupe_id()}")
        await ingest.settled()

        assert failures, "the failure was injected"
        assert seen(await ingest.follow_requests()) == expected()

        # The whole story again (a replay of every message) changes nothing.
        for event in [*archives, *links]:
            await ingest.publish(event, again_as=f"replay-{event.dedupe_id()}")
        await ingest.settled()
        assert seen(await ingest.follow_requests()) == expected()

        # The gauges count every match once per direction, and each request once.
        await matching.count_totals()
        registry = matching.runtime.metrics.registry
        totals = await asyncio.to_thread(matching.store.totals)
        for network in ("bluesky", "mastodon"):
            for direction in ("following", "follower"):
                want = sum(n for net, dirs, _, n in totals if net == network and direction in dirs)
                labels = {"network": network, "direction": direction}
                assert registry.get_sample_value("passerelle_matching_matches", labels) == want
        requested = [
            registry.get_sample_value(
                "passerelle_matching_follow_requests", {"network": n, "state": "requested"}
            )
            for n in ("bluesky", "mastodon")
        ]
        assert sum(v or 0 for v in requested) == sum(expected().values())


async def test_the_edge_reads_selects_and_requests_over_request_reply(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    async with (
        running_matching(nats_server.url, database_url, tmp_path) as matching,
        edge(nats_server.url) as ingest,
    ):
        for person, graph in GRAPH.items():
            await ingest.publish(ingest.consent(person, auto_follow=False))
            for network in LINKS[person]:
                await ingest.publish(ingest.linked(person, network))
            await ingest.publish(await ingest.archive(person, *graph))
        await ingest.settled()

        async def ask(request: Any, reply_type: Any) -> Any:
            response = await ingest.broker.request(request, request.subject, timeout=5)
            return reply_type.model_validate_json(response.body)

        summary = await ask(MatchSummaryRequest(region="local", person_id="bob"), MatchSummaryReply)
        cells = {(c.network, c.direction, c.state): c.count for c in summary.counts}
        assert cells == {
            ("bluesky", "following", "proposed"): 1,
            ("bluesky", "follower", "proposed"): 1,
            ("mastodon", "following", "proposed"): 1,
        }
        page = await ask(
            MatchListRequest(region="local", person_id="bob", network="mastodon"), MatchListReply
        )
        assert page.total == 1
        assert page.items[0].target == account_of("carol", "mastodon")
        assert page.items[0].trust == "claimed"
        assert page.region == matching.settings.region
        selected = await ask(
            MatchSelectRequest(
                region="local",
                person_id="bob",
                network="mastodon",
                selected=True,
                all_in_direction="following",
            ),
            CountReply,
        )
        assert selected.count == 1
        requested = await ask(
            MatchRequestFollows(region="local", person_id="bob", network="mastodon"), CountReply
        )
        assert requested.count == 1
        await ingest.settled()
        for _ in range(100):
            messages = await ingest.follow_requests()
            if messages:
                break
            await asyncio.sleep(0.05)
        assert seen(messages) == Counter(
            {
                (
                    "mastodon",
                    account_of("bob", "mastodon"),
                    account_of("carol", "mastodon"),
                    "bob",
                    ("following",),
                ): 1
            }
        )


async def test_a_senders_faststream_subscriber_reads_the_requests(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    received: list[FollowRequest] = []
    sender = NatsBroker(nats_server.url, logger=None)

    @sender.subscriber("follow.requested.bluesky")
    async def on_follow(event: BlueskyFollowsRequested) -> None:
        received.extend(event.follows)

    database = f"sqlite:///{tmp_path / 'matching.sqlite3'}"
    async with (
        running_matching(nats_server.url, database, tmp_path, trust_archive_claims=True),
        edge(nats_server.url) as ingest,
    ):
        await sender.start()
        try:
            for person in ("alice", "bob"):
                await ingest.publish(ingest.consent(person, auto_follow=True))
                await ingest.publish(ingest.linked(person, "bluesky"))
            await ingest.publish(await ingest.archive("alice", 1, [2], []))
            await ingest.publish(await ingest.archive("bob", 2, [], []))
            await ingest.settled()
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
        finally:
            await sender.stop()
    assert [(e.person_id, e.actor, e.target, e.directions) for e in received] == [
        ("alice", account_of("alice", "bluesky"), account_of("bob", "bluesky"), ("following",))
    ]

"""The real ``passerelle-matching`` process, killed (SIGKILL) in the middle of a burst
of events and started again: every follow the rules call for is requested (a follow
published just before the kill may be published again; its sender records it once)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from passerelle_matching.rules import Person, expected_matches
from services.matching.tests.nats_support import edge
from services.matching.tests.world import account_of
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


def population(seed: int, size: int) -> list[Person]:
    rng = random.Random(seed)
    people = []
    for i in range(size):
        networks = rng.choice([("bluesky",), ("mastodon",), ("bluesky", "mastodon")])
        people.append(
            Person(
                person_id=f"p{i:02d}",
                x_id=1000 + i,  # distinct: no disputes, so every state is certain
                accounts={n: account_of(f"p{i:02d}", n) for n in networks},
                matching=rng.random() < 0.9,
                auto_follow=rng.random() < 0.7,
                following=frozenset(1000 + j for j in rng.sample(range(size), 8) if j != i),
                followers=frozenset(1000 + j for j in rng.sample(range(size), 6) if j != i),
            )
        )
    return people


async def test_a_killed_process_requests_every_follow(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    people = population(seed=7, size=24)
    expected = Counter(
        (m.person_id, m.network, account_of(m.target_id, m.network))
        for m in expected_matches(people, trust_archive_claims=True).values()
        if m.state == "requested"
    )
    assert len(expected) > 30
    matching = ServiceProcess(
        "matching", nats_server.url, tmp_path, env={"PASSERELLE_TRUST_ARCHIVE_CLAIMS": "true"}
    )
    matching.start()
    try:
        await asyncio.to_thread(matching.wait_http, "/readyz")
        async with edge(nats_server.url) as ingest:
            # Consents and archives first; then the links, which make the matches
            # and the follow requests: the process is killed in the middle of those
            # (identity messages in flight come back after the consumer's ack_wait).
            for p in people:
                consent = ingest.consent(p.person_id, auto_follow=p.auto_follow)
                await ingest.publish(consent.model_copy(update={"matching": p.matching}))
                await ingest.publish(
                    await ingest.archive(p.person_id, p.x_id, p.following, p.followers)
                )
            await ingest.settled()
            links: list[Any] = [ingest.linked(p.person_id, n) for p in people for n in p.accounts]
            random.Random(3).shuffle(links)
            for event in links:
                await ingest.publish(event)
            # Kill it once it has started on the links and before it has finished.
            for _ in range(2000):
                info = await ingest.js.consumer_info("ACCOUNTS", "matching-identities")
                started = info.delivered.consumer_seq > info.ack_floor.consumer_seq or (
                    info.num_pending < len(links)
                )
                if started and info.num_pending + info.num_ack_pending > 0:
                    break
                await asyncio.sleep(0.002)
            matching.kill()
            assert info.num_pending + info.num_ack_pending > 0, "killed while busy"
            matching.start()
            await asyncio.to_thread(matching.wait_http, "/readyz")
            await ingest.settled(within=90)
            deadline = time.monotonic() + 30
            while True:
                messages = await ingest.follow_messages()
                got = Counter(
                    (m["person_id"], m["network"], m["target"]) for ms in messages for m in ms
                )
                if set(got) == set(expected) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            # Every follow the rules call for is requested, nothing else. One whose
            # message was stored just before the kill, its outbox flag not yet cleared,
            # is published again after the restart, possibly grouped with others in
            # another message (another Nats-Msg-Id): the senders' ledgers record each
            # follow id once (tests/bluesky, tests/mastodon test exactly that).
            assert set(got) == set(expected)
            for message in messages:
                assert len({m["follow_id"] for m in message}) == len(message)
    finally:
        matching.stop()

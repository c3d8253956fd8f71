"""Fairness: a person with a huge backlog does not hold up a person with a small one.

Against the fake Bluesky of the benchmark (a write takes 0.3 s there), the sender may
have one call in flight at a time: the small backlog's batch goes right after the big
one's current batch, not after the whole big backlog.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bluesky.fake_bluesky import FakeBluesky
from tests.bluesky.support import (
    bus,
    fake_did,
    new_person,
    request_for,
    results_of,
    sender_env,
    start_sender,
)
from tests.support.nats import NatsServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def fake() -> Iterator[FakeBluesky]:
    server = FakeBluesky(time.time, write_delay=0.3).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_small_backlog_is_not_stuck_behind_a_big_one(
    fake: FakeBluesky, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = sender_env(
        fake.url,
        fake.url,
        PASSERELLE_BLUESKY_MAX_CONCURRENT_ACCOUNTS="1",
        PASSERELLE_BLUESKY_BATCH_LINGER_SECONDS="0.2",
    )
    sender = start_sender(nats_server, tmp_path, env)
    big, small = fake_did(), fake_did()
    fake.add_account("big.test", big, "big-password")
    fake.add_account("small.test", small, "small-password")
    try:
        async with bus(nats_server.url) as b:
            big_person, small_person = new_person(), new_person()
            assert (await b.link("big.test", "big-password", big_person)).error is None
            assert (await b.link("small.test", "small-password", small_person)).error is None
            await b.publish_all([request_for(big_person, big, fake_did()) for _ in range(1600)])
            await results_of(b, big_person, 200)  # the big backlog is under way
            published = time.time()
            await b.publish_all([request_for(small_person, small, fake_did()) for _ in range(50)])
            await results_of(b, small_person, 50, within=30)
    finally:
        sender.stop()
    # Eight batches of 200 take 2.4 s of writes alone; the small one went between them:
    # after at most the big one's current batch (0.3 s), its linger (0.2 s) and overheads.
    calls = [(at, did) for at, did, _ in fake.stats.log]
    first_small = next(i for i, (_, did) in enumerate(calls) if did == small)
    assert [did for _, did in calls[:first_small]].count(big) < 8, "it waited for all of big"
    assert calls[first_small][0] - published < 1.5

"""The real service as a process: killed in the middle of its work, restarted, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from passerelle_platform.broker import make_broker
from passerelle_platform.metrics import ServiceMetrics
from tests.mastodon.support import REGION, Harness
from tests.peers.mastodon.harness import MastodonFleet
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e

FOLLOWS = 120


@pytest.fixture
def sender_process(
    instances: MastodonFleet, nats_server: NatsServer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "mastodon_sender",
        nats_server.url,
        tmp_path,
        env={
            "PASSERELLE_REGION": REGION,
            "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(instances.peers_file),
            "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
            "PASSERELLE_MASTODON_RETRY_BASE_SECONDS": "0.5",
            "PASSERELLE_MASTODON_FLUSH_INTERVAL_SECONDS": "0.02",
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def edge(
    instances: MastodonFleet, nats_server: NatsServer, sender_process: ServiceProcess
) -> AsyncIterator[Harness]:
    await asyncio.to_thread(sender_process.wait_http, "/readyz")
    broker = make_broker(
        nats_server.url, "edge", TracerProvider(), ServiceMetrics("edge", "0", REGION)
    )
    await broker.connect()
    harness = Harness(sender=None, edge=broker, fleet=instances)
    for subject in ("follow.result", "identity.*"):
        await broker.connection.subscribe(subject, cb=harness.on_event)
    try:
        yield harness
    finally:
        await broker.stop()


async def test_killed_mid_work_then_restarted_follows_exactly_once(
    edge: Harness, sender_process: ServiceProcess
) -> None:
    alpha, beta, gamma = (edge.fleet[d] for d in ("alpha.test", "beta.test", "gamma.test"))
    alpha.create_account("alice")
    beta.create_accounts(FOLLOWS // 2, prefix="b")
    gamma.create_accounts(FOLLOWS // 2, prefix="g")
    actor = await edge.sign_in("alpha.test", "alice", "p-alice")
    targets = [f"b{i}@beta.test" for i in range(1, FOLLOWS // 2 + 1)] + [
        f"g{i}@gamma.test" for i in range(1, FOLLOWS // 2 + 1)
    ]
    # Slow follows down so that the kill lands in the middle of the work.
    alpha.inject_fault(path="/api/v1/accounts/*/follow", method="POST", latency=0.05, count=None)
    await edge.request_follows("p-alice", actor, targets)

    await edge.wait_for(lambda: len(edge.results) >= FOLLOWS // 4, within=60, what="some done")
    sender_process.kill()
    done_before = len(edge.results_for("p-alice"))
    assert done_before < FOLLOWS, "the kill came too late to prove anything"
    made_before = alpha.follows("alice")["summary"]["created"]
    assert 0 < made_before < FOLLOWS

    alpha.clear_faults()
    sender_process.start()
    results = await edge.wait_results("p-alice", FOLLOWS, within=120)
    assert set(results) == set(targets)
    assert {r.outcome for r in results.values()} == {"followed"}
    summary = alpha.follows("alice")["summary"]
    assert summary["created"] == FOLLOWS
    assert summary["duplicate"] == 0
    assert summary["violations"] == 0
    follows = alpha.follows("alice")["follows"]
    assert len({f["target"] for f in follows}) == len(follows) == FOLLOWS
    # Results may be published twice around a crash, never contradicting each other.
    by_target: dict[str, set[str]] = {}
    for r in edge.results:
        by_target.setdefault(r.target, set()).add(r.outcome)
    assert all(outcomes == {"followed"} for outcomes in by_target.values())

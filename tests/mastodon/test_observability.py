"""Metrics and traces of the real service (a process, as deployed): what operators see.

A span per call to an instance (``mastodon <operation>``, the instance's domain, the
status), the intake's span, follow counters by outcome; never a token, a code, an
app secret or an account address in a span or a metric label.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from passerelle_platform.broker import make_broker
from passerelle_platform.metrics import ServiceMetrics
from tests.mastodon.support import REGION, Harness
from tests.peers.mastodon.harness import MastodonFleet
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def spans_file(tmp_path: Path) -> Path:
    return tmp_path / "spans.jsonl"


@pytest.fixture
def sender_process(
    instances: MastodonFleet, nats_server: NatsServer, tmp_path: Path, spans_file: Path
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "mastodon_sender",
        nats_server.url,
        tmp_path,
        env={
            "PASSERELLE_REGION": REGION,
            "PASSERELLE_TRACE_FILE": str(spans_file),
            "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(instances.peers_file),
            "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
            "PASSERELLE_MASTODON_METRICS_INTERVAL_SECONDS": "0.2",
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


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


async def test_metrics_and_spans(
    edge: Harness, sender_process: ServiceProcess, spans_file: Path
) -> None:
    alpha, beta = edge.fleet["alpha.test"], edge.fleet["beta.test"]
    alpha.create_account("alice")
    alpha.create_account("carol")
    beta.create_account("bob")
    actor = await edge.sign_in("alpha.test", "alice", "p-alice")
    targets = ["bob@beta.test", "carol@alpha.test", "ghost@beta.test"]
    await edge.request_follows("p-alice", actor, targets)
    results = await edge.wait_results("p-alice", len(targets), within=60)
    assert {t: r.outcome for t, r in results.items()} == {
        "bob@beta.test": "followed",
        "carol@alpha.test": "followed",
        "ghost@beta.test": "failed",
    }

    async def scrape() -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(sender_process.base_url + "/metrics")).text

    def counters_ready(text: str) -> bool:
        return (
            metric(text, 'passerelle_follows_total{network="mastodon",outcome="followed"') == 2
            and metric(text, "passerelle_mastodon_links ") == 1
            # A gauge refreshed periodically: it may lag the counters by one period.
            and metric(text, 'passerelle_follow_backlog{network="mastodon"}') == 0
        )

    text = await scrape()
    for _ in range(100):
        if counters_ready(text):
            break
        await asyncio.sleep(0.1)
        text = await scrape()
    assert counters_ready(text), text[-3000:]
    failed = (
        'passerelle_follows_total{network="mastodon",outcome="failed",reason="target_not_found"}'
    )
    assert metric(text, failed) == 1
    assert metric(text, 'passerelle_mastodon_calls_total{operation="follow",result="ok"}') == 2
    assert metric(text, 'passerelle_mastodon_calls_total{operation="search",result="ok"}') >= 3
    # No label names a person, an account or an instance.
    for needle in ("alice", "bob", "carol", "ghost", "alpha.test", "beta.test", "p-alice"):
        assert needle not in "\n".join(
            line for line in text.splitlines() if not line.startswith("#")
        ), needle

    sender_process.stop()  # flushes the spans still buffered
    everything = await asyncio.to_thread(spans_file.read_text)
    recorded = [json.loads(line) for line in everything.splitlines() if line.strip()]
    by_name: dict[str, list[dict[str, object]]] = {}
    for span in recorded:
        by_name.setdefault(str(span.get("name")), []).append(span)
    for name in (
        "mastodon instance",
        "mastodon register_app",
        "mastodon token",
        "mastodon verify_credentials",
        "mastodon search",
        "mastodon relationships",
        "mastodon follow",
        "mastodon intake",
    ):
        assert name in by_name, f"no {name!r} span among {sorted(by_name)}"
    assert len(by_name["mastodon follow"]) == 2
    for span in by_name["mastodon follow"]:
        attributes = span.get("attributes")
        assert isinstance(attributes, dict)
        assert attributes.get("server.address") == "alpha.test"
        assert attributes.get("http.response.status_code") == 200
    token = alpha.tokens()[0]["token"]
    secret = alpha.apps()[0]["client_secret"]
    assert token not in everything
    assert secret not in everything
    for span in recorded:
        attributes = json.dumps(span.get("attributes", {}))
        for needle in ("bob@beta.test", "carol@alpha.test", "ghost@beta.test", "p-alice"):
            assert needle not in attributes, (span.get("name"), needle)

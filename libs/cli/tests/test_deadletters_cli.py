"""``passerelle deadletters`` on a real nats-server: a poison message is listed, replayed
to its original subject, and purged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nats

from passerelle_contracts import UserErased
from passerelle_contracts.streams import DEAD_LETTERS, ERASURES, dead_letter_subject
from tests.support.nats import NatsServer

CLI = str(Path(sys.executable).parent / "passerelle")


async def park_one(url: str) -> None:
    """Put a message in DEAD_LETTERS exactly as the runtime does."""
    from opentelemetry.sdk.trace import TracerProvider

    from passerelle_platform.broker import ensure_streams, make_broker
    from passerelle_platform.metrics import ServiceMetrics

    broker = make_broker(url, "t", TracerProvider(), ServiceMetrics("t", "0", "fr"))
    await broker.connect()
    await ensure_streams(broker)
    await broker.stop()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.publish(
        dead_letter_subject(ERASURES.name, "matching-erasures"),
        UserErased(region="fr", person_id="p1").model_dump_json().encode(),
        headers={"Passerelle-Original-Subject": "user.erased", "Passerelle-Deliveries": "8"},
    )
    await nc.close()


async def count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_list_replay_purge(nats_server: NatsServer) -> None:
    asyncio.run(park_one(nats_server.url))
    listed = run("deadletters", "list", "--json", "--nats", nats_server.url)
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert letter["original_subject"] == "user.erased"
    assert letter["deliveries"] == 8
    assert "p1" not in listed.stdout  # bodies are never shown

    replayed = run("deadletters", "replay", "--nats", nats_server.url)
    assert replayed.stdout.strip() == "replayed 1 message(s)"
    assert asyncio.run(count(nats_server.url, ERASURES.name)) == 1
    assert asyncio.run(count(nats_server.url, DEAD_LETTERS.name)) == 0

    asyncio.run(park_one(nats_server.url))
    purged = run("deadletters", "purge", "--yes", "--nats", nats_server.url)
    assert purged.stdout.strip() == "purged 1 message(s)"
    assert asyncio.run(count(nats_server.url, DEAD_LETTERS.name)) == 0


def test_stream_name_matches_the_contracts() -> None:
    from passerelle_cli.deadletters import DEAD_LETTERS_STREAM

    assert DEAD_LETTERS.name == DEAD_LETTERS_STREAM

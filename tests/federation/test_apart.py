"""Apart and back: regions keep working without the hub, then everyone catches up.

JetStream sourcing (hub <- regions) and mirroring (regions <- hub) resume by
sequence on their own; nothing here replays or re-sends anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from passerelle_contracts import DirectoryMessage, DirectoryTombstone
from passerelle_contracts.directory import decode_directory_message
from passerelle_platform.federation import FederationLink
from tests.federation.conftest import Links
from tests.federation.support import Recorder, connect, entry, eventually, tombstone
from tests.federation.topology import Federation

pytestmark = pytest.mark.e2e


def _no_duplicates(recorder: Recorder) -> bool:
    seen = [(m.key, m.sent_at) for m in recorder.messages]
    return len(seen) == len(set(seen))


async def test_regions_keep_working_while_the_hub_is_down_and_converge_when_it_returns(
    federation: Federation, links: Links, hub_eraser: None
) -> None:
    fr, fr_seen = links["fr"]
    es, es_seen = links["es"]
    latest: dict[str, dict[str, DirectoryMessage]] = {"fr": {}, "es": {}}

    async def publish(message: DirectoryMessage) -> None:
        link = fr if message.region == "fr" else es
        await link.publish(message)
        latest[message.region][message.key] = message

    for i in range(10):
        await publish(entry("fr", f"f{i}", f"10{i}"))
        await publish(entry("es", f"e{i}", f"20{i}"))
    await eventually(lambda: len(fr_seen.messages) == len(es_seen.messages) == 10)

    federation.hub.kill()
    # Apart: each region publishes, updates and erases; its link keeps working.
    for i in range(10, 30):
        await publish(entry("fr", f"f{i}", f"10{i}"))
        await publish(entry("es", f"e{i}", f"20{i}"))
    for i in range(3):
        await publish(entry("fr", f"f{i}", f"10{i}", trust="claimed"))
    await publish(tombstone("fr", "f9"))
    await publish(tombstone("es", "e9", reason="withdrawn"))
    await asyncio.sleep(1.0)
    assert len(fr_seen.messages) == len(es_seen.messages) == 10, "nothing crosses without a hub"
    async with connect(federation.federation_url("fr")) as nc:
        mirror = await nc.jetstream().stream_info("DIRECTORY_GLOBAL")
    assert mirror.state.messages == 20, "what a region knew stays readable"

    federation.hub.start()
    waited = await eventually(
        lambda: es_seen.latest() == latest["fr"] and fr_seen.latest() == latest["es"],
        within=180,
        what="both regions caught up",
    )
    print(f"converged {waited:.1f}s after the hub came back")
    assert _no_duplicates(fr_seen)
    assert _no_duplicates(es_seen)

    async with connect(federation.hub_admin_url) as hub:
        js = hub.jetstream()

        async def hub_has_one_message_per_person() -> bool:
            info = await js.stream_info("DIRECTORY", subjects_filter="directory.>")
            return info.state.messages == len(latest["fr"]) + len(latest["es"])

        await eventually(hub_has_one_message_per_person, what="superseded messages erased")
        for region in ("fr", "es"):
            for message in latest[region].values():
                stored = await js.get_last_msg("DIRECTORY", message.directory_subject())
                stored_message = decode_directory_message(region, message.key, stored.data)
                assert stored_message == message


def _files_containing(roots: list[Path], needle: bytes) -> list[str]:
    return [
        str(path)
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


async def test_an_erasure_made_while_a_region_is_away_reaches_it_and_leaves_nothing_on_disk(
    federation: Federation, links: Links, hub_eraser: None
) -> None:
    fr, _ = links["fr"]
    es, es_seen = links["es"]
    x_id = "7391046258301746592"
    alice = entry("fr", "alice", x_id)
    await fr.publish(alice)
    await eventually(lambda: es_seen.latest().get(alice.key) == alice, what="alice in es")

    await es.stop()
    federation.regions["es"].kill()  # es is cut off (a crash, even)
    await fr.publish(tombstone("fr", "alice"))

    async with connect(federation.hub_admin_url) as hub:
        js = hub.jetstream()

        async def hub_holds_only_the_tombstone() -> bool:
            info = await js.stream_info("DIRECTORY", subjects_filter=alice.directory_subject())
            last = await js.get_last_msg("DIRECTORY", alice.directory_subject())
            return info.state.messages == 1 and b'"gone":"erased"' in last.data

        await eventually(hub_holds_only_the_tombstone, what="hub erased alice's entry")

    federation.regions["es"].start()
    federation.wait_leaf("es")
    back = FederationLink(federation.federation_url("es"), "es", es_seen, retry_seconds=0.5)
    await back.start()
    try:
        waited = await eventually(
            lambda: isinstance(es_seen.latest().get(alice.key), DirectoryTombstone),
            within=180,
            what="tombstone in es",
        )
        print(f"the tombstone reached es {waited:.1f}s after it came back")
        # The link erases the superseded entry after handing the tombstone over.
        await eventually(
            lambda: back.counters.erased >= 1, what="es erased alice's entry from its mirror"
        )
    finally:
        await back.stop()

    stores = [federation.hub.store_dir, *(n.store_dir for n in federation.regions.values())]
    for needle in (x_id.encode(), b"alice.test", b"did:plc:0000000000000000000alice"):
        assert _files_containing(stores, needle) == [], needle

"""The directory crosses regions through the hub, and nothing else does.

Three real ``nats-server`` processes configured by ``deploy/nats/``: a hub and
the regions fr and es as leaf nodes, each its own JetStream domain.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from nats.aio.msg import Msg

from passerelle_contracts import DirectoryAccount, DirectoryEntry, DirectoryTombstone
from passerelle_contracts.directory import (
    DirectoryDecodeError,
    decode_directory_message,
    encode_directory_message,
)
from passerelle_contracts.streams import STREAMS
from passerelle_platform.federation import parse_directory_message
from tests.federation.conftest import Links
from tests.federation.support import connect, entry, eventually, tombstone
from tests.federation.topology import Federation, rogue_config_dir

pytestmark = pytest.mark.e2e


async def test_an_entry_published_in_one_region_reaches_the_other_through_the_hub(
    federation: Federation, links: Links
) -> None:
    fr, fr_seen = links["fr"]
    _es, es_seen = links["es"]
    alice = entry("fr", "alice", "1001")

    assert await fr.publish(alice)
    assert not await fr.publish(alice), "the same fact is stored once (Nats-Msg-Id)"
    await eventually(lambda: es_seen.messages == [alice], what="alice in es")

    assert fr_seen.messages == [], "a region does not receive its own entries back"
    async with connect(federation.hub_admin_url) as hub:
        stored = await hub.jetstream().get_last_msg("DIRECTORY", alice.directory_subject())
    assert decode_directory_message("fr", alice.key, stored.data) == alice
    assert stored.headers["Nats-Stream-Source"].startswith("DIRECTORY_FR:")


async def test_a_tombstone_supersedes_the_entry_in_every_region(
    federation: Federation, links: Links
) -> None:
    fr, _ = links["fr"]
    _es, es_seen = links["es"]
    bob = entry("fr", "bob", "1002")
    await fr.publish(bob)
    await fr.publish(tombstone("fr", "bob"))

    await eventually(
        lambda: isinstance(es_seen.latest().get(bob.key), DirectoryTombstone), what="tombstone"
    )
    for url, stream in (
        (federation.federation_url("fr"), "DIRECTORY_FR"),
        (federation.hub_admin_url, "DIRECTORY"),
        (federation.federation_url("es"), "DIRECTORY_GLOBAL"),
    ):
        async with connect(url) as nc:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            last = await js.get_last_msg(stream, bob.directory_subject())
        assert json.loads(last.data)["gone"] == "erased", stream
        if stream != "DIRECTORY":  # the hub's eraser is not running in this test
            assert info.state.messages == 1, f"{stream} still holds bob's entry"


async def test_the_hub_holds_nothing_but_directory_entries_and_tombstones(
    federation: Federation, links: Links
) -> None:
    # The regions' services work as usual in their APP account...
    for region in federation.regions:
        async with connect(federation.services_url(region)) as services:
            js = services.jetstream()
            for stream in STREAMS:
                await js.add_stream(name=stream.name, subjects=list(stream.subjects))
            await js.publish("archive.imported", b'{"edges": "1001 1002 1003"}')
            await js.publish("identity.linked", b'{"account": "did:plc:secret"}')
            await js.publish("follow.requested.bluesky", b'{"target": "did:plc:x"}')
    # ...while their directories cross.
    for i in range(5):
        await links["fr"][0].publish(entry("fr", f"f{i}", f"200{i}"))
        await links["es"][0].publish(entry("es", f"e{i}", f"300{i}"))
    await eventually(lambda: len(links["es"][1].messages) == 5, what="fr entries in es")
    await eventually(lambda: len(links["fr"][1].messages) == 5, what="es entries in fr")
    await links["es"][0].publish(tombstone("es", "e0"))
    await eventually(lambda: len(links["fr"][1].messages) == 6, what="es tombstone in fr")

    # Every stream of every account on the hub, from its monitoring endpoint.
    jsz = federation.hub.monitor("jsz", {"accounts": "true", "streams": "true"})
    streams = {
        (account["name"], stream["name"])
        for account in jsz["account_details"]
        for stream in account.get("stream_detail") or []
    }
    assert streams == {("FEDERATION", "DIRECTORY")}

    kinds = []
    async with connect(federation.hub_admin_url) as hub:
        js = hub.jetstream()
        info = await js.stream_info("DIRECTORY")
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            stored = await js.get_msg("DIRECTORY", seq)
            message = parse_directory_message(stored.subject, stored.data, stored.headers)
            kinds.append(type(message).__name__)
    assert set(kinds) == {"DirectoryEntry", "DirectoryTombstone"}
    assert len(kinds) == 11

    # Even the hub's own operators, asking a region's JetStream domain directly
    # (with the reply prefix the hub's sourcing uses), see only the directory.
    async with connect(federation.hub_admin_url, inbox_prefix="$JSC.R") as hub:
        reply = await hub.request("$JS.fr.API.STREAM.NAMES", b"", timeout=3)
    assert sorted(json.loads(reply.data)["streams"]) == ["DIRECTORY_FR", "DIRECTORY_GLOBAL"]
    region_jsz = federation.regions["fr"].monitor("jsz", {"accounts": "true", "streams": "true"})
    app_streams = {
        s["name"]
        for a in region_jsz["account_details"]
        if a["name"] == "APP"
        for s in a.get("stream_detail") or []
    }
    assert {"ARCHIVES", "ACCOUNTS", "FOLLOW_REQUESTS"} <= app_streams


async def test_a_region_cannot_forge_another_regions_entries_even_with_its_own_rules_opened(
    federation: Federation, links: Links
) -> None:
    _es, es_seen = links["es"]
    await links["fr"][0].stop()
    # fr's operator opens every permission on its own server (same store, same leaf user).
    federation.restart_region("fr", rogue_config_dir(federation.work_dir))

    victim = entry("es", "eve", "4001")
    await links["es"][0].publish(victim)

    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    async with connect(federation.federation_url("fr"), error_cb=on_error) as nc:
        js = nc.jetstream()
        # 1. A forged entry for es, and a forged tombstone erasing es's person.
        forged = entry("es", "mallory", "4002")
        await nc.publish(forged.directory_subject(), forged.model_dump_json().encode())
        fake_erasure = tombstone("es", "eve")
        await nc.publish(fake_erasure.directory_subject(), fake_erasure.model_dump_json().encode())
        # 2. Another region's JetStream, and the hub's: delete or purge the directory.
        for subject in (
            "$JS.es.API.STREAM.DELETE.DIRECTORY_ES",
            "$JS.es.API.STREAM.NAMES",
            "$JS.hub.API.STREAM.DELETE.DIRECTORY",
            "$JS.hub.API.STREAM.PURGE.DIRECTORY",
        ):
            with pytest.raises(Exception) as refused:
                await nc.request(subject, b"{}", timeout=1)
            assert type(refused.value).__name__ in {"NoRespondersError", "TimeoutError"}
        # 3. Listening to everything it can, while es's services and directory work.
        overheard: list[tuple[str, bytes]] = []

        async def listen(msg: Msg) -> None:
            overheard.append((msg.subject, msg.data))

        listener = await nc.subscribe(">", cb=listen)
        await nc.flush()
        async with connect(federation.services_url("es")) as es_services:
            await es_services.publish("archive.imported", b'{"edges": "4001 4002"}')
            await es_services.publish("identity.linked", b'{"account": "did:plc:secret"}')
        late = entry("es", "zoe", "4003")
        await links["es"][0].publish(late)
        await asyncio.sleep(1.0)
        await listener.unsubscribe()
        # 4. Its own subject, another region's name inside.
        impostor = entry("es", "ivan", "4004").model_copy(
            update={"key": entry("fr", "ivan", "4004").key}
        )
        await js.publish(f"directory.fr.{impostor.key}", impostor.model_dump_json().encode())

    # The hub's source resumes on its own after fr's restart (JetStream retries, with backoff).
    waited = await eventually(
        lambda: links["es"][0].counters.rejected == 1, within=150, what="impostor rejected"
    )
    print(f"sourcing from fr resumed {waited:.1f}s after the forgery attempts")
    assert "payload is for es" in links["es"][0].counters.rejected_reasons[0]
    # fr hears the shared directory its mirror receives (zoe), and nothing else of es.
    assert overheard, "the rogue listener heard nothing at all"
    for subject, data in overheard:
        assert not subject.startswith(
            ("archive.", "identity.", "federation.in.es", "federation.out.es")
        )
        assert b"did:plc:secret" not in data
        assert b"4001 4002" not in data
    assert late.directory_subject() in {subject for subject, _ in overheard}
    assert impostor.key not in es_seen.seen_keys()
    async with connect(federation.hub_admin_url) as hub:
        js = hub.jetstream()
        info = await js.stream_info("DIRECTORY")
        subjects = set()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            subjects.add((await js.get_msg("DIRECTORY", seq)).subject)
    assert forged.directory_subject() not in subjects
    last_eve = None
    async with connect(federation.federation_url("es")) as es:
        js = es.jetstream()
        assert (await js.stream_info("DIRECTORY_ES")).state.messages == 2  # eve and zoe
        last_eve = await js.get_last_msg("DIRECTORY_ES", victim.directory_subject())
    assert "x" in json.loads(last_eve.data), "eve's entry, not a tombstone"


async def test_a_region_that_leaves_withdraws_its_people_everywhere(
    federation: Federation, links: Links
) -> None:
    fr, _ = links["fr"]
    _es, es_seen = links["es"]
    for i in range(3):
        await fr.publish(entry("fr", f"leaver{i}", f"500{i}"))
    await fr.publish(tombstone("fr", "leaver2"))
    await eventually(lambda: len(es_seen.latest()) == 3, what="fr's people in es")
    await links["fr"][0].stop()

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "passerelle_platform.federation", "leave", "--region", "fr"],
        env={**os.environ, "PASSERELLE_FEDERATION_NATS_URL": federation.federation_url("fr")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2 entries withdrawn" in done.stdout

    await eventually(
        lambda: all(isinstance(m, DirectoryTombstone) for m in es_seen.latest().values()),
        what="every fr person withdrawn in es",
    )


def test_the_wire_form_is_compact_and_says_the_same() -> None:
    anna = DirectoryEntry(
        region="fr",
        key=entry("fr", "anna", "1").key,
        x_account_id="18446744073709551615",
        trust="claimed",
        accounts=(
            DirectoryAccount(
                network="bluesky", account="did:plc:abcdefghijklmnopqrstuvwx", handle="anna.test"
            ),
            DirectoryAccount(
                network="mastodon", account="anna@mastodon.example", handle="anna@mastodon.example"
            ),
        ),
    )
    wire = encode_directory_message(anna)
    # No region, key, type or field names spelt out; the Mastodon handle is the acct.
    assert json.loads(wire)["a"] == [
        ["b", "did:plc:abcdefghijklmnopqrstuvwx", "anna.test"],
        ["m", "anna@mastodon.example"],
    ]
    assert len(wire) < len(anna.model_dump_json()) / 2
    assert decode_directory_message("fr", anna.key, wire) == anna
    gone = tombstone("fr", "anna")
    assert encode_directory_message(gone) == (
        b'{"at":%d,"gone":"erased"}' % json.loads(encode_directory_message(gone))["at"]
    )
    assert decode_directory_message("fr", gone.key, encode_directory_message(gone)) == gone
    # The full form of the models is read too, and must agree with the subject.
    assert decode_directory_message("fr", anna.key, anna.model_dump_json().encode()) == anna
    with pytest.raises(DirectoryDecodeError, match="payload is for fr"):
        decode_directory_message("es", anna.key, anna.model_dump_json().encode())
    for bad in (
        b'{"at":1,"gone":"erased","x":"1"}',
        b'{"at":"1","gone":"erased"}',
        b'{"at":1,"x":"1","t":"v","a":[]}',
        b'{"at":1,"x":"1","t":"v","a":[["x","did:plc:a"]]}',
        b"[]",
    ):
        with pytest.raises(DirectoryDecodeError):
            decode_directory_message("fr", anna.key, bad)


async def test_the_hubs_job_erases_superseded_messages_then_exits(
    federation: Federation, links: Links
) -> None:
    """``hub --until-idle``: what the Kubernetes CronJob runs at the hub."""
    fr, _ = links["fr"]
    _es, es_seen = links["es"]
    dan = entry("fr", "dan", "6001")
    await fr.publish(dan)
    await eventually(lambda: es_seen.latest().get(dan.key) == dan, what="dan in es")
    await fr.publish(tombstone("fr", "dan"))
    await eventually(
        lambda: isinstance(es_seen.latest().get(dan.key), DirectoryTombstone), what="dan gone"
    )
    command = [sys.executable, "-m", "passerelle_platform.federation", "hub"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "--regions", "fr,es", "--until-idle"],
        env={**os.environ, "HUB_NATS_URL": federation.hub_admin_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 superseded directory messages erased" in done.stdout
    async with connect(federation.hub_admin_url) as hub:
        info = await hub.jetstream().stream_info(
            "DIRECTORY", subjects_filter=dan.directory_subject()
        )
    assert info.state.messages == 1, "only dan's tombstone is left at the hub"

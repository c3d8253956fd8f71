"""Two regions, each with its four services as processes, and a person's journey across them.

Three ``nats-server`` processes configured by ``deploy/nats/`` (the hub, fr and
es as leaf nodes), the hub's own process (``python -m
passerelle_platform.federation hub``), and in each region ingest, matching,
bluesky_sender and mastodon_sender as their console scripts, configured only by
environment (their region, their NATS, matching's FEDERATION account). The
networks are shared, as they are in the world: one real local Bluesky PDS.

The journey goes through each region's web edge, with the HTTP API its pages
use: bruno is already in es; anna signs in in fr, gives her archive (she
followed bruno, and carla who has not arrived yet) and finds bruno; she follows
him, and the follow is on the PDS, made by fr's Bluesky sender with anna's own
session; carla arrives in es and anna finds her too; bruno deletes his account
in es, and he disappears from anna's matches in fr and from the hub.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle_platform.federation import ensure_stream, regional_stream_config
from tests.bluesky.support import sender_env
from tests.federation.support import connect
from tests.federation.topology import Federation
from tests.peers.mastodon.harness import MastodonFleet
from tests.peers.pds.fixtures import pds
from tests.peers.pds.harness import LocalPds
from tests.support.archivegen import ArchiveSpec, archive_bytes, make_id
from tests.support.services import ServiceProcess
from tests.web.stack import Stack, wait_for, x_id

pytestmark = pytest.mark.e2e

__all__ = ["pds"]

SERVICES = ("ingest", "matching", "bluesky_sender", "mastodon_sender")


@dataclass
class RegionStack(Stack):
    """:class:`Stack` on a region's own NATS (its APP account), its matching federated."""

    region: str = "local"
    nats_url: str = ""
    federation_url: str = ""

    def start(self, *, extra_env: dict[str, dict[str, str]] | None = None) -> RegionStack:
        self.work.mkdir(parents=True, exist_ok=True)
        common = {
            "PASSERELLE_REGION": self.region,
            "PASSERELLE_LOG_LEVEL": "INFO",
            "PASSERELLE_REQUEST_TIMEOUT_SECONDS": "10",
        }
        env = {
            "ingest": {**common, "PASSERELLE_OPERATOR_NAME": f"passerelle {self.region}"},
            "matching": {
                **common,
                "PASSERELLE_OUTBOX_INTERVAL_SECONDS": "0.5",
                "PASSERELLE_FEDERATION_NATS_URL": self.federation_url,
            },
            "bluesky_sender": {**common, **sender_env(self.pds.url, self.pds.plc_url)},
            "mastodon_sender": {
                **common,
                "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(self.fleet.peers_file),
                "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
            },
        }
        for name, values in (extra_env or {}).items():
            env[name].update(values)
        for name in SERVICES:
            process = ServiceProcess(name, self.nats_url, self.work, env[name])
            if name == "ingest":
                process.env["PASSERELLE_PUBLIC_URL"] = process.base_url
            self.services[name] = process.start()
        for process in self.services.values():
            process.wait_http("/readyz")
        return self


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[MastodonFleet]:
    with MastodonFleet(("alpha.test",), base_dir=tmp_path / "fleet") as running:
        yield running


@dataclass
class World:
    federation: Federation
    regions: dict[str, RegionStack]
    hub_process: subprocess.Popen[bytes]


async def _region_streams(federation: Federation) -> None:
    # Joining order (docs/federation.md): the regions' streams before the hub's sources.
    for region in federation.regions:
        async with connect(federation.federation_url(region)) as nc:
            await ensure_stream(nc.jetstream(), regional_stream_config(region))


async def _hub_directory_exists(federation: Federation) -> bool:
    async with connect(federation.hub_admin_url) as hub:
        try:
            info = await hub.jetstream().stream_info("DIRECTORY")
        except Exception:  # noqa: BLE001 - not there yet
            return False
        return len(info.config.sources or []) == len(federation.regions)


@pytest.fixture
def world(tmp_path: Path, pds: LocalPds, fleet: MastodonFleet) -> Iterator[World]:
    (tmp_path / "nats").mkdir()
    federation = Federation(tmp_path / "nats").start()
    regions: dict[str, RegionStack] = {}
    hub_log = (tmp_path / "hub-process.log").open("ab")
    hub_process = subprocess.Popen(
        [sys.executable, "-m", "passerelle_platform.federation", "hub", "--regions", "fr,es"],
        env={**os.environ, "HUB_NATS_URL": federation.hub_admin_url},
        stdout=hub_log,
        stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(_region_streams(federation))
        wait_for(
            lambda: asyncio.run(_hub_directory_exists(federation)),
            60,
            "the hub's process set DIRECTORY's sources",
            every=0.5,
        )
        for region in federation.regions:
            regions[region] = RegionStack(
                tmp_path / region,
                pds,
                fleet,
                region=region,
                nats_url=federation.services_url(region),
                federation_url=federation.federation_url(region),
            ).start()
        yield World(federation, regions, hub_process)
    finally:
        for stack in regions.values():
            stack.stop()
        hub_process.terminate()
        hub_process.wait(timeout=20)
        hub_log.close()
        federation.stop()


def _following(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/api/matches/bluesky", params={"direction": "following"})
    response.raise_for_status()
    return {item["target"]: item for item in response.json()["items"]}


async def _hub_directory(federation: Federation) -> list[bytes]:
    async with connect(federation.hub_admin_url) as hub:
        js = hub.jetstream()
        info = await js.stream_info("DIRECTORY")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append((await js.get_msg("DIRECTORY", seq)).data or b"")
            except Exception:  # noqa: BLE001 - erased (superseded)
                continue
        return out


# Eight services, three servers and a PDS start here: 252 s at load 22 on 2 cores.
@pytest.mark.timeout(900)
def test_a_person_in_fr_finds_follows_and_loses_people_of_es(world: World, pds: LocalPds) -> None:
    fr, es = world.regions["fr"], world.regions["es"]
    bruno_account, carla_account, anna_account = (
        pds.create_account(name) for name in ("bruno-es", "carla-es", "anna-fr")
    )
    bruno = es.seed_bluesky(bruno_account, 1)

    # anna signs in in fr, consents, and gives her archive: she followed bruno and carla.
    anna = fr.client()
    signed_in = anna.post(
        "/api/signin/bluesky",
        json={"identifier": anna_account.handle, "app_password": anna_account.app_password},
    )
    assert signed_in.status_code == 200, signed_in.text
    fr.consent(anna, matching=True)
    archive = archive_bytes(
        ArchiveSpec(
            account_id=make_id(7, 31337),
            username="anna",
            following_ids_override=(bruno.x_id, x_id(2), make_id(901, 777)),
            follower_ids_override=(make_id(902, 777),),
            seed=7,
        )
    )
    uploaded = anna.post(
        "/api/archive",
        files={"archive": ("twitter.zip", archive, "application/zip")},
        headers={"X-CSRF-Token": fr.csrf(anna)},
    )
    assert uploaded.status_code == 202, uploaded.text

    found = wait_for(
        lambda: _following(anna).get(bruno.account), 180, "bruno (es) among anna's matches"
    )
    assert found["handle"] == bruno.handle

    # She follows him: fr's Bluesky sender, with her own session, on the shared PDS.
    csrf = {"X-CSRF-Token": fr.csrf(anna)}
    selected = anna.post(
        "/api/matches/select",
        json={"network": "bluesky", "targets": [bruno.account]},
        headers=csrf,
    )
    assert selected.status_code == 200, selected.text
    requested = anna.post("/api/matches/follow", json={"network": "bluesky"}, headers=csrf)
    assert requested.status_code == 200, requested.text
    assert requested.json()["count"] == 1
    wait_for(
        lambda: bruno.account in pds.followed_dids(anna_account.did),
        180,
        "anna follows bruno on the PDS",
    )
    assert pds.followed_dids(bruno.account) == [], "nothing was done with bruno's session"

    # carla arrives in es later: anna, waiting in fr, finds her as she arrives.
    carla = es.seed_bluesky(carla_account, 2)
    wait_for(lambda: _following(anna).get(carla.account), 180, "carla (es) among anna's matches")

    # bruno deletes everything in es: he is gone from fr and from the hub.
    erased = bruno.client.delete("/api/me", headers={"X-CSRF-Token": es.csrf(bruno.client)})
    assert erased.status_code == 204, erased.text
    wait_for(lambda: bruno.account not in _following(anna), 180, "bruno gone from anna's matches")
    assert carla.account in _following(anna)
    wait_for(
        lambda: (
            not any(
                bruno.account.encode() in data
                for data in asyncio.run(_hub_directory(world.federation))
            )
        ),
        60,
        "bruno's entry erased at the hub",
    )
    assert world.hub_process.poll() is None, "the hub's process kept running"

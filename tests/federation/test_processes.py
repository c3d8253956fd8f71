"""The real ``passerelle-matching`` console script, one per region, federated by configuration.

The same image in every region: only the environment differs (its NATS, its
region, its FEDERATION account). ingest and the senders are played by the
helpers of matching's own tests, publishing in their region.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle_platform.federation import ensure_hub, ensure_stream, regional_stream_config
from services.matching.tests.nats_support import edge
from services.matching.tests.world import account_of
from tests.federation.support import connect, eventually
from tests.federation.topology import Federation
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


async def test_matching_processes_in_two_regions_match_across_them(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()
    federation = Federation(tmp_path / "nats").start()
    processes: dict[str, ServiceProcess] = {}
    try:
        for region in federation.regions:
            async with connect(federation.federation_url(region)) as nc:
                await ensure_stream(nc.jetstream(), regional_stream_config(region))
        async with connect(federation.hub_admin_url) as hub:
            await ensure_hub(hub, federation.regions)
        for region in federation.regions:
            (tmp_path / region).mkdir()
            processes[region] = ServiceProcess(
                "matching",
                federation.services_url(region),
                tmp_path / region,
                env={
                    "PASSERELLE_REGION": region,
                    "PASSERELLE_FEDERATION_NATS_URL": federation.federation_url(region),
                    "PASSERELLE_TRUST_ARCHIVE_CLAIMS": "true",
                },
            ).start()
        for process in processes.values():
            await asyncio.to_thread(process.wait_http, "/readyz")

        async with (
            edge(federation.services_url("fr")) as fr,
            edge(federation.services_url("es")) as es,
        ):
            for people, person, x_id, following in (
                (fr, "anna", 1001, [2002]),
                (es, "bruno", 2002, []),
            ):
                await people.publish(people.consent(person, auto_follow=True))
                await people.publish(people.linked(person, "bluesky"))
                await people.publish(await people.archive(person, x_id, following, []))

            wanted = (account_of("anna", "bluesky"), account_of("bruno", "bluesky"))

            async def requested_in_fr() -> bool:
                requests: list[dict[str, Any]] = await fr.follow_requests()
                return [(r["actor"], r["target"]) for r in requests] == [wanted]

            await eventually(requested_in_fr, within=60, what="anna → bruno requested in fr")
            assert await es.follow_requests() == []

        async with httpx.AsyncClient() as client:
            metrics = (await client.get(processes["fr"].base_url + "/metrics")).text
        assert (
            'passerelle_matching_directory_messages_total{direction="in",'
            'kind="directory.entry",outcome="applied"} 1.0'
        ) in metrics
    finally:
        for process in processes.values():
            process.stop()
        federation.stop()

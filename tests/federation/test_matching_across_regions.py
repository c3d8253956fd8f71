"""Cross-region matching: the real matching service in each region, federated.

Two matching services (fr and es), each on its own region's NATS (APP account
for its usual streams, FEDERATION account for the directory), each with its own
database; ingest and the senders are played by the helpers of matching's own
tests, publishing in their region. Nothing is shared but the hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from passerelle_contracts import UserErased, directory_key
from passerelle_contracts.rpc import MatchListRequest
from passerelle_matching.federation import FederatedMatchingService, remote_person_id
from passerelle_matching.service import MatchingService
from passerelle_platform.federation import ensure_hub, ensure_stream, regional_stream_config
from services.matching.tests.nats_support import Edge, edge, running_matching
from services.matching.tests.world import account_of
from tests.federation.support import connect, eventually
from tests.federation.topology import Federation

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def region_stack(
    federation: Federation, region: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[MatchingService, Edge]]:
    """matching in ``region`` (federated), and the people around it."""
    monkeypatch.setenv("PASSERELLE_FEDERATION_NATS_URL", federation.federation_url(region))
    url = federation.services_url(region)
    work = tmp_path / region
    work.mkdir()
    async with (
        running_matching(
            url,
            f"sqlite:///{work / 'matching.sqlite3'}",
            work,
            region=region,
            trust_archive_claims=True,
        ) as service,
        edge(url) as people,
    ):
        assert isinstance(service, FederatedMatchingService)
        await asyncio.wait_for(service.link.wait_ready(), 30)
        yield service, people


async def join(
    people: Edge, person: str, x_id: int, following: list[int], *, auto_follow: bool = True
) -> None:
    """Consent, link Bluesky, upload the archive (as ingest and the sender would)."""
    await people.publish(people.consent(person, auto_follow=auto_follow))
    await people.publish(people.linked(person, "bluesky"))
    await people.publish(await people.archive(person, x_id, following, []))


def follows(requests: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["actor"], r["target"]) for r in requests}


async def test_a_person_finds_the_people_they_followed_in_another_region_and_loses_them_on_erasure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nats").mkdir()
    federation = Federation(tmp_path / "nats").start()
    try:
        # Joining, in order: each region's stream, then the hub's sources.
        for region in federation.regions:
            async with connect(federation.federation_url(region)) as nc:
                await ensure_stream(nc.jetstream(), regional_stream_config(region))
        async with connect(federation.hub_admin_url) as hub:
            await ensure_hub(hub, federation.regions)

        async with AsyncExitStack() as stack:
            fr, fr_people = await stack.enter_async_context(
                region_stack(federation, "fr", tmp_path, monkeypatch)
            )
            es, es_people = await stack.enter_async_context(
                region_stack(federation, "es", tmp_path, monkeypatch)
            )

            # anna (fr, X 1001) followed bruno (X 2002) and carla (X 2003) on X.
            await join(fr_people, "anna", 1001, [2002, 2003])
            # bruno registers in es; he followed anna too.
            await join(es_people, "bruno", 2002, [1001])

            anna_to_bruno = (account_of("anna", "bluesky"), account_of("bruno", "bluesky"))
            bruno_to_anna = (account_of("bruno", "bluesky"), account_of("anna", "bluesky"))
            await eventually(
                lambda: _has(fr_people, anna_to_bruno), within=30, what="anna → bruno in fr"
            )
            await eventually(
                lambda: _has(es_people, bruno_to_anna), within=30, what="bruno → anna in es"
            )
            # Each follow is requested once, by the follower's own region only.
            assert follows(await fr_people.follow_requests()) == {anna_to_bruno}
            assert follows(await es_people.follow_requests()) == {bruno_to_anna}

            # carla arrives in es later: anna, waiting in fr, finds her as she arrives.
            started = time.monotonic()
            await join(es_people, "carla", 2003, [])
            anna_to_carla = (account_of("anna", "bluesky"), account_of("carla", "bluesky"))
            await eventually(lambda: _has(fr_people, anna_to_carla), within=30, what="anna → carla")
            print(f"newcomer in es to follow request in fr: {time.monotonic() - started:.2f}s")

            listed = await fr.list_matches(
                MatchListRequest(region="fr", person_id="anna", network="bluesky")
            )
            assert {i.target for i in listed.items} == {anna_to_bruno[1], anna_to_carla[1]}

            # bruno asks to be forgotten in es: fr forgets him too.
            await es_people.publish(UserErased(region="es", person_id="bruno", x_account_id="2002"))

            async def bruno_gone_from_fr() -> bool:
                page = await fr.list_matches(
                    MatchListRequest(region="fr", person_id="anna", network="bluesky")
                )
                return {i.target for i in page.items} == {anna_to_carla[1]}

            await eventually(bruno_gone_from_fr, within=30, what="bruno erased in fr")
            bruno = remote_person_id("es", directory_key("es", "bruno"))
            assert await asyncio.to_thread(_person_rows, fr, bruno) == 0
            assert await asyncio.to_thread(_person_rows, es, "bruno") == 0
    finally:
        federation.stop()


def _person_rows(service: MatchingService, person_id: str) -> int:
    with service.store.engine.connect() as c:
        return int(
            c.execute(
                text("SELECT count(*) FROM matching_person WHERE person_id = :p"),
                {"p": person_id},
            ).scalar_one()
        )


async def _has(people: Edge, follow: tuple[str, str]) -> bool:
    return follow in follows(await people.follow_requests())

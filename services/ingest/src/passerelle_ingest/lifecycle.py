"""What happens when a person changes consents or asks to be forgotten.

One implementation for the JSON API and the web pages alike.
"""

from __future__ import annotations

import asyncio

from faststream.nats import NatsBroker

from passerelle_contracts import ConsentChanged, UserErased
from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET
from passerelle_ingest.people import Consents, People
from passerelle_platform.broker import publish_event
from passerelle_platform.logging import get_logger

log = get_logger(__name__)


async def change_consents(
    broker: NatsBroker, people: People, region: str, person_id: str, consents: Consents
) -> int:
    """Store new consents and tell matching (``consent.changed``); returns the revision."""
    revision = await asyncio.to_thread(people.set_consents, person_id, consents)
    await publish_event(
        broker,
        ConsentChanged(
            region=region,
            person_id=person_id,
            matching=consents.matching,
            auto_follow=consents.auto_follow,
            notifications=consents.notifications,
            revision=revision,
        ),
    )
    return revision


async def erase_person(broker: NatsBroker, people: People, region: str, person_id: str) -> None:
    """Delete everything about a person here, and tell every service (``user.erased``).

    The tombstone goes first: if NATS is down this fails before anything is deleted,
    so the person can try again and nothing is half-erased.
    """
    person = await asyncio.to_thread(people.get, person_id)
    await publish_event(
        broker,
        UserErased(
            region=region,
            person_id=person_id,
            x_account_id=person.x_account_id if person is not None else None,
        ),
    )
    import_ids = await asyncio.to_thread(people.erase, person_id)
    store = await broker.object_storage(ARCHIVE_EDGES_BUCKET)
    for import_id in import_ids:
        for direction in ("following", "followers"):
            try:
                await store.delete(f"{import_id}.{direction}")
            except Exception:  # noqa: BLE001 - expired (TTL) or already removed
                log.info("edge payload already gone")

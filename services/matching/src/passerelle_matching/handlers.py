"""Thin typed subscribers: turn a message into a call on the matching logic."""

from __future__ import annotations

from typing import Annotated

from faststream.nats import NatsRouter
from pydantic import Field

from passerelle_contracts import (
    ArchiveImported,
    ConsentChanged,
    FollowResult,
    IdentityLinked,
    IdentityUnlinked,
    UserErased,
)
from passerelle_contracts.streams import (
    MATCHING_ARCHIVES,
    MATCHING_CONSENTS,
    MATCHING_ERASURES,
    MATCHING_IDENTITIES,
    MATCHING_RESULTS,
)
from passerelle_platform.broker import jetstream_subscriber
from passerelle_platform.runtime import ServiceRuntime

IdentityEvent = Annotated[IdentityLinked | IdentityUnlinked, Field(discriminator="type")]


def build_router(runtime: ServiceRuntime) -> NatsRouter:
    """The matching service's subscribers."""
    router = NatsRouter()
    log = runtime.log

    @jetstream_subscriber(router, MATCHING_ARCHIVES)
    async def on_archive(event: ArchiveImported) -> None:
        log.info("archive received", import_id=event.import_id)

    @jetstream_subscriber(router, MATCHING_IDENTITIES)
    async def on_identity(event: IdentityEvent) -> None:
        log.info("identity received", network=event.network, kind=event.type)

    @jetstream_subscriber(router, MATCHING_CONSENTS)
    async def on_consent(event: ConsentChanged) -> None:
        log.info("consent received", revision=event.revision)

    @jetstream_subscriber(router, MATCHING_RESULTS)
    async def on_result(event: FollowResult) -> None:
        log.info("result received", outcome=event.outcome)

    @jetstream_subscriber(router, MATCHING_ERASURES)
    async def on_erasure(event: UserErased) -> None:
        log.info("erasure received", kind=event.type)

    return router

"""Thin typed subscribers: turn a message into a call on the matching service."""

from __future__ import annotations

from typing import Annotated

from faststream.nats import NatsRouter
from pydantic import Field

from passerelle_contracts import (
    ConsentChanged,
    FollowResult,
    IdentityLinked,
    IdentityUnlinked,
    UserErased,
)
from passerelle_contracts.rpc import (
    CountReply,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchSummaryReply,
    MatchSummaryRequest,
)
from passerelle_contracts.streams import (
    MATCHING_CONSENTS,
    MATCHING_ERASURES,
    MATCHING_IDENTITIES,
    MATCHING_RESULTS,
)
from passerelle_matching.service import MatchingService
from passerelle_platform.broker import jetstream_subscriber

IdentityEvent = Annotated[IdentityLinked | IdentityUnlinked, Field(discriminator="type")]

#: Replicas share request/reply work (one answers each request).
RPC_QUEUE = "matching"


def build_router(service: MatchingService) -> NatsRouter:
    """The matching service's subscribers and request/reply responders.

    ``archive.imported`` is not here: :class:`passerelle_matching.intake.ArchiveIntake`
    takes archives in batches, several per transaction."""
    router = NatsRouter()

    @jetstream_subscriber(router, MATCHING_IDENTITIES)
    async def on_identity(event: IdentityEvent) -> None:
        if isinstance(event, IdentityLinked):
            await service.on_identity_linked(event)
        else:
            await service.on_identity_unlinked(event)

    @jetstream_subscriber(router, MATCHING_CONSENTS)
    async def on_consent(event: ConsentChanged) -> None:
        await service.on_consent(event)

    @jetstream_subscriber(router, MATCHING_RESULTS)
    async def on_result(event: FollowResult) -> None:
        await service.on_result(event)

    @jetstream_subscriber(router, MATCHING_ERASURES)
    async def on_erasure(event: UserErased) -> None:
        await service.on_erasure(event)

    @router.subscriber(MatchSummaryRequest.subject, queue=RPC_QUEUE)
    async def summary(request: MatchSummaryRequest) -> MatchSummaryReply:
        return await service.summary(request)

    @router.subscriber(MatchListRequest.subject, queue=RPC_QUEUE)
    async def list_matches(request: MatchListRequest) -> MatchListReply:
        return await service.list_matches(request)

    @router.subscriber(MatchSelectRequest.subject, queue=RPC_QUEUE)
    async def select(request: MatchSelectRequest) -> CountReply:
        return await service.select(request)

    @router.subscriber(MatchRequestFollows.subject, queue=RPC_QUEUE)
    async def request_follows(request: MatchRequestFollows) -> CountReply:
        return await service.request_follows(request)

    return router

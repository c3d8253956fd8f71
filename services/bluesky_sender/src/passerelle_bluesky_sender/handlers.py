"""Thin typed subscribers: turn a message into a call on the sender's logic."""

from __future__ import annotations

from faststream.exceptions import NackMessage
from faststream.nats import NatsRouter

from passerelle_contracts import BlueskyFollowRequested, UserErased
from passerelle_contracts.streams import BLUESKY_ERASURES, BLUESKY_FOLLOWS
from passerelle_platform.broker import jetstream_subscriber
from passerelle_platform.runtime import ServiceRuntime

#: Until the ledger exists, follow requests stay queued instead of being dropped.
NOT_READY_DELAY_SECONDS = 300.0


def build_router(runtime: ServiceRuntime) -> NatsRouter:
    """The bluesky sender's subscribers."""
    router = NatsRouter()
    log = runtime.log

    @jetstream_subscriber(router, BLUESKY_FOLLOWS)
    async def on_follow_requested(request: BlueskyFollowRequested) -> None:
        log.info("follow request kept for later", follow_id=request.follow_id)
        raise NackMessage(delay=NOT_READY_DELAY_SECONDS)

    @jetstream_subscriber(router, BLUESKY_ERASURES)
    async def on_erasure(event: UserErased) -> None:
        log.info("erasure received", kind=event.type)

    return router

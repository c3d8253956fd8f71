"""Thin typed subscribers: turn a message into a call on the sender's logic."""

from __future__ import annotations

from faststream.nats import NatsRouter

from passerelle_bluesky_sender.linking import UNLINK_SUBJECT
from passerelle_bluesky_sender.service import BlueskySender
from passerelle_contracts import UserErased
from passerelle_contracts.rpc import BlueskyLinkRequest, LinkReply, UnlinkReply, UnlinkRequest
from passerelle_contracts.streams import BLUESKY_ERASURES
from passerelle_platform.broker import jetstream_subscriber

#: Request/reply subscribers share a queue group: with several replicas, one answers.
RPC_QUEUE = "bluesky_sender"


def build_router(sender: BlueskySender) -> NatsRouter:
    """The bluesky sender's subscribers."""
    router = NatsRouter()
    # Follow requests are not here: BlueskySender reads them in batches (BatchConsumer).

    @jetstream_subscriber(router, BLUESKY_ERASURES)
    async def on_erasure(event: UserErased) -> None:
        await sender.erase(event.person_id)

    @router.subscriber(BlueskyLinkRequest.subject, queue=RPC_QUEUE)
    async def on_link(request: BlueskyLinkRequest) -> LinkReply:
        return await sender.linker.link(request)

    @router.subscriber(UNLINK_SUBJECT, queue=RPC_QUEUE)
    async def on_unlink(request: UnlinkRequest) -> UnlinkReply:
        return await sender.linker.unlink(request)

    return router

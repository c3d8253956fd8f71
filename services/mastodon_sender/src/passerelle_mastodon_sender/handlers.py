"""Thin typed subscribers: turn a message into a call on the sender's logic.

Follow requests are not here: :mod:`passerelle_mastodon_sender.intake` takes them
in batches.
"""

from __future__ import annotations

from faststream.nats import NatsRouter

from passerelle_contracts import UserErased
from passerelle_contracts.rpc import (
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MastodonLinkRequest,
    UnlinkReply,
    UnlinkRequest,
)
from passerelle_contracts.streams import MASTODON_ERASURES
from passerelle_mastodon_sender.service import MastodonSender
from passerelle_platform.broker import jetstream_subscriber

#: Request/reply subscribers share a queue group: with several replicas, one answers.
RPC_QUEUE = "mastodon_sender"


def build_router(sender: MastodonSender) -> NatsRouter:
    """The mastodon sender's subscribers."""
    router = NatsRouter()

    @jetstream_subscriber(router, MASTODON_ERASURES)
    async def on_erasure(event: UserErased) -> None:
        await sender.linker.erase(event.person_id)

    @router.subscriber(MastodonAuthorizeRequest.subject, queue=RPC_QUEUE)
    async def on_authorize(request: MastodonAuthorizeRequest) -> MastodonAuthorizeReply:
        return await sender.linker.authorize(request)

    @router.subscriber(MastodonLinkRequest.subject, queue=RPC_QUEUE)
    async def on_link(request: MastodonLinkRequest) -> LinkReply:
        return await sender.linker.link(request)

    @router.subscriber("rpc.mastodon.unlink", queue=RPC_QUEUE)
    async def on_unlink(request: UnlinkRequest) -> UnlinkReply:
        return await sender.linker.unlink(request)

    return router

"""Thin typed subscribers: turn a message into a call on the sender's logic."""

from __future__ import annotations

from typing import Annotated

from faststream import AckPolicy, Context
from faststream.nats import ConsumerConfig, JStream, NatsRouter, PullSub
from faststream.nats.message import NatsBatchMessage

from passerelle_bluesky_sender.linking import UNLINK_SUBJECT
from passerelle_bluesky_sender.service import BlueskySender
from passerelle_contracts import UserErased
from passerelle_contracts.rpc import BlueskyLinkRequest, LinkReply, UnlinkReply, UnlinkRequest
from passerelle_contracts.streams import BLUESKY_ERASURES, BLUESKY_FOLLOWS
from passerelle_platform.broker import jetstream_subscriber

#: Request/reply subscribers share a queue group: with several replicas, one answers.
RPC_QUEUE = "bluesky_sender"
#: Collect a pulled batch of follow requests for at most this long (seconds).
BATCH_WAIT = 0.2


def build_router(sender: BlueskySender) -> NatsRouter:
    """The bluesky sender's subscribers."""
    router = NatsRouter()
    follows = BLUESKY_FOLLOWS

    # Follow requests come in pulled batches (up to ``intake_batch``), written to the ledger
    # in one transaction, then acked one by one; a request that cannot be read or recorded
    # is nacked alone (redelivered, dead-lettered after ``max_deliver``). Same durable
    # consumer and configuration as ``jetstream_subscriber`` would declare, but batched:
    # per-message handling costs more than the follow itself at this volume.
    @router.subscriber(
        follows.filter_subject,
        stream=JStream(follows.stream.name, declare=False),
        durable=follows.durable,
        pull_sub=PullSub(
            batch_size=sender.settings.bluesky_intake_batch, timeout=BATCH_WAIT, batch=True
        ),
        config=ConsumerConfig(
            ack_wait=follows.ack_wait_seconds,
            max_deliver=follows.max_deliver,
            max_ack_pending=follows.max_ack_pending,
        ),
        ack_policy=AckPolicy.MANUAL,
    )
    async def on_follow_requests(
        message: Annotated[NatsBatchMessage, Context("message")],
    ) -> None:
        await sender.follow_requests(message.raw_message)

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

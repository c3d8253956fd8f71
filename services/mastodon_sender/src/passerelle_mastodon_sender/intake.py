"""Taking follow requests from the durable consumer, in batches.

One pull fetches up to ``mastodon_intake_batch`` messages, each carrying one follow or
several (either version of ``follow.requested.mastodon``); they are validated one by
one, their follows written to the ledger (at most ``mastodon_intake_batch`` follows per
transaction, a message never split), then acked. A message that is not a valid request
is nacked alone, so only it is redelivered and, after ``max_deliver``, dead-lettered
(the runtime watches the advisories).

Why not a FastStream subscriber like the other consumers: a per-message handler
costs about half a millisecond of CPU here (middlewares, one transaction each),
and a backlog of a million requests must not take minutes of CPU; FastStream's
batch mode (``PullSub(batch=True)``) was measured to leave some fetched messages
unhandled until their ack wait ran out. The platform's ``BatchConsumer`` calls
``fetch`` the way FastStream's per-message pull loop does, which did not lose any.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from opentelemetry import trace
from pydantic import ValidationError

from passerelle_contracts import FollowRequest, read_follow_requests
from passerelle_contracts.streams import Consumer
from passerelle_platform.broker import BatchConsumer, weighed_groups
from passerelle_platform.metrics import ServiceMetrics
from passerelle_platform.telemetry import trace_parents

tracer = trace.get_tracer("passerelle_mastodon_sender.intake")

Accept = Callable[[Sequence[FollowRequest]], Awaitable[None]]

RETRY_DELAY_SECONDS = 5.0
"""How long a batch waits before redelivery when the ledger could not take it."""


class FollowIntake:
    """The ``mastodon-follows`` consumer: fetch, validate, record, ack."""

    def __init__(
        self,
        consumer: Consumer,
        accept: Accept,
        *,
        batch: int,
        metrics: ServiceMetrics,
        log: structlog.stdlib.BoundLogger,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.accept = accept
        self.batch = batch
        self.metrics = metrics
        self.log = log
        self._fetcher = BatchConsumer(
            consumer, self.handle, batch=batch, fetch_timeout=fetch_timeout
        )

    async def start(self, broker: NatsBroker) -> None:
        """Bind (or create) the durable consumer and start pulling."""
        await self._fetcher.start(broker)

    async def stop(self) -> None:
        """Stop pulling; unacked messages are redelivered to the next process."""
        await self._fetcher.stop()

    async def handle(self, messages: Sequence[Msg]) -> None:
        """One fetched batch: record the valid requests, then ack them."""
        handled = self.metrics.messages_handled
        durable = self.consumer.durable
        valid: list[tuple[Msg, tuple[FollowRequest, ...]]] = []
        with tracer.start_as_current_span(
            "mastodon intake", attributes={"messaging.batch.message_count": len(messages)}
        ):
            for message in messages:
                try:
                    follows = read_follow_requests("mastodon", message.data)
                except ValidationError:
                    self.log.warning("invalid follow request", subject=message.subject)
                    handled.labels(durable, "nack").inc()
                    await message.nak()
                    continue
                for follow in follows:
                    trace_parents.remember(follow.follow_id, message.headers)
                valid.append((message, follows))
            for group in weighed_groups(valid, self.batch, lambda item: len(item[1])):
                await self._record(group)

    async def _record(self, group: Sequence[tuple[Msg, tuple[FollowRequest, ...]]]) -> None:
        """Write these messages' follows in one transaction, then ack them (or nack them
        all, to come back later, if the ledger could not take them)."""
        handled = self.metrics.messages_handled
        durable = self.consumer.durable
        try:
            await self.accept([follow for _, follows in group for follow in follows])
        except Exception:
            self.log.exception("recording follow requests failed; they come back later")
            for message, _ in group:
                await message.nak(delay=RETRY_DELAY_SECONDS)
            handled.labels(durable, "nack").inc(len(group))
            return
        for message, _ in group:
            await message.ack()
        handled.labels(durable, "ack").inc(len(group))

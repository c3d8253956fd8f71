"""Follow requests into the ledger, a pulled batch per transaction, acked once recorded.

The handler gets a batch of raw messages, each carrying one follow or several (either
version of ``follow.requested.bluesky``): each is read (a message that is not a valid
request is nacked: redelivered, then dead-lettered after ``max_deliver``), the follows of
the valid ones are written to the ledger, at most ``batch`` follows per transaction (a
message is never split), and only then are their messages acked. If a write fails, the
messages are split in halves until the one that cannot be recorded is alone: it is
nacked, the others are recorded and acked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from pydantic import ValidationError

from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.store import IntakeReport, Store
from passerelle_contracts import FollowRequest, read_follow_requests
from passerelle_platform.broker import weighed_groups
from passerelle_platform.telemetry import trace_parents

MAX_ID_LENGTH = 2048


class Intake:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        on_recorded: Callable[[IntakeReport], None],
        log: structlog.stdlib.BoundLogger,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.batch = batch
        self.clock = clock
        self.on_recorded = on_recorded
        self.log = log
        self.recorded = 0
        self.refused = 0

    async def take(self, messages: Sequence[Any]) -> None:
        """Record a batch of raw NATS messages (``nats.aio.msg.Msg``), ack or nack each."""
        readable: list[tuple[tuple[FollowRequest, ...], Any]] = []
        for msg in messages:
            follows = _read(msg.data)
            if follows is None:
                self.refused += 1
                self.log.warning("unreadable follow request; nacked")
                await msg.nak()
            else:
                for follow in follows:
                    trace_parents.remember(follow.follow_id, msg.headers)
                readable.append((follows, msg))
        for group in weighed_groups(readable, self.batch, lambda item: len(item[0])):
            await self._record(group)

    async def _record(self, items: list[tuple[tuple[FollowRequest, ...], Any]]) -> None:
        try:
            report = await asyncio.to_thread(
                self.store.intake, [f for follows, _ in items for f in follows], self.clock.now()
            )
        except Exception:
            if len(items) == 1:
                self.refused += 1
                self.log.exception("follow requests cannot be recorded; nacked")
                await items[0][1].nak()
                return
            half = len(items) // 2
            await self._record(items[:half])
            await self._record(items[half:])
            return
        for _, msg in items:
            await msg.ack()
        self.recorded += sum(len(follows) for follows, _ in items)
        self.on_recorded(report)


def _read(data: bytes) -> tuple[FollowRequest, ...] | None:
    try:
        follows = read_follow_requests("bluesky", data)
    except ValidationError:
        return None
    if any(len(f.actor) > MAX_ID_LENGTH or len(f.target) > MAX_ID_LENGTH for f in follows):
        return None
    return follows

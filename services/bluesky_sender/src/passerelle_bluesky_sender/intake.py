"""Follow requests into the ledger, a pulled batch per transaction, acked once recorded.

The handler gets a batch of raw messages: each is read (a message that is not a valid
request is nacked: redelivered, then dead-lettered after ``max_deliver``), the valid ones
are written to the ledger in one transaction, and only then acked. If the write fails,
the batch is split in halves until the request that cannot be recorded is alone: it is
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
from passerelle_contracts import BlueskyFollowRequested
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
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_recorded = on_recorded
        self.log = log
        self.recorded = 0
        self.refused = 0

    async def take(self, messages: Sequence[Any]) -> None:
        """Record a batch of raw NATS messages (``nats.aio.msg.Msg``), ack or nack each."""
        readable: list[tuple[BlueskyFollowRequested, Any]] = []
        for msg in messages:
            request = _read(msg.data)
            if request is None:
                self.refused += 1
                self.log.warning("unreadable follow request; nacked")
                await msg.nak()
            else:
                trace_parents.remember(request.follow_id, msg.headers)
                readable.append((request, msg))
        if readable:
            await self._record(readable)

    async def _record(self, items: list[tuple[BlueskyFollowRequested, Any]]) -> None:
        try:
            report = await asyncio.to_thread(
                self.store.intake, [r for r, _ in items], self.clock.now()
            )
        except Exception:
            if len(items) == 1:
                self.refused += 1
                self.log.exception("follow request cannot be recorded; nacked")
                await items[0][1].nak()
                return
            half = len(items) // 2
            await self._record(items[:half])
            await self._record(items[half:])
            return
        for _, msg in items:
            await msg.ack()
        self.recorded += len(items)
        self.on_recorded(report)


def _read(data: bytes) -> BlueskyFollowRequested | None:
    try:
        request = BlueskyFollowRequested.model_validate_json(data)
    except ValidationError:
        return None
    if len(request.actor) > MAX_ID_LENGTH or len(request.target) > MAX_ID_LENGTH:
        return None
    return request

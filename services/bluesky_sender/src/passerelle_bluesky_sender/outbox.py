"""Publishing ``follow.result`` from the ledger (a transactional outbox).

A row that finishes is committed with ``result_pending = true``; this loop
publishes those results (with their ``Nats-Msg-Id``, so a replay is stored once) and
then marks them. A crash in between publishes them again after the restart, which
JetStream deduplicates.

Results are published a page at a time by the platform's ``PagePublisher`` (JetStream's
asynchronous publish, acks awaited together, one span per page): one ``publish_event``
per result, with its own span and round trip, costs more than the follow itself at this
volume.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import structlog
from faststream.nats import NatsBroker
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from passerelle_bluesky_sender.metrics import NETWORK, SenderMetrics
from passerelle_bluesky_sender.store import Result, Store
from passerelle_contracts import FollowResult
from passerelle_contracts.events import FollowOutcome
from passerelle_platform.broker import PagePublisher

PAGE = 1000
#: Seconds to wait for the stream's acks of a page (unacked results are published again).
ACK_TIMEOUT = 10.0


class Outbox:
    def __init__(
        self,
        store: Store,
        broker: NatsBroker,
        *,
        region: str,
        concurrency: int,
        metrics: SenderMetrics,
        tracer: Tracer,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.store = store
        self.publish_page = PagePublisher(
            broker, tracer, concurrency=concurrency, ack_timeout=ACK_TIMEOUT
        )
        self.region = region
        self.metrics = metrics
        self.log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bluesky-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                rows = await asyncio.to_thread(self.store.unpublished, PAGE)
                if rows:
                    ok = await self._publish(rows)
                    if ok < len(rows):
                        await asyncio.sleep(1.0)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # keep publishing after a database or NATS hiccup
                self.log.exception("outbox error")
                await asyncio.sleep(1.0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)

    async def _publish(self, rows: list[Result]) -> int:
        """Publish a page of results, pipelined; returns how many the stream acked."""
        events: list[FollowResult] = []
        sent: list[Result] = []
        skipped: list[int] = []
        for row in rows:
            try:
                events.append(
                    FollowResult(
                        region=self.region,
                        follow_id=row.follow_id,
                        person_id=row.person_id,
                        network=NETWORK,
                        target=row.target,
                        outcome=cast(FollowOutcome, row.outcome),
                        reason=row.reason,
                    )
                )
            except ValidationError:  # never block the outbox on one bad row
                self.log.exception("result cannot be published; skipped")
                skipped.append(row.id)
                continue
            sent.append(row)
        stored = await self.publish_page(events)
        acked = [row for row, ok in zip(sent, stored, strict=True) if ok]
        done = [row.id for row in acked] + skipped
        if done:
            await asyncio.to_thread(self.store.mark_published, done)
            for row in acked:
                self.metrics.follows.labels(NETWORK, row.outcome, row.reason or "").inc()
            self.published += len(acked)
        return len(done)

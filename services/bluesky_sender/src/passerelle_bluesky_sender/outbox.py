"""Publishing ``follow.result`` from the ledger (a transactional outbox).

A row that finishes is committed with ``result_pending = true``; this loop
publishes those results (with their ``Nats-Msg-Id``, so a replay is stored once) and
then marks them. A crash in between publishes them again after the restart, which
JetStream deduplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import structlog
from faststream.nats import NatsBroker
from pydantic import ValidationError

from passerelle_bluesky_sender.metrics import NETWORK, SenderMetrics
from passerelle_bluesky_sender.store import Result, Store
from passerelle_contracts import FollowResult
from passerelle_contracts.events import FollowOutcome
from passerelle_platform.broker import publish_event

PAGE = 1000


class Outbox:
    def __init__(
        self,
        store: Store,
        broker: NatsBroker,
        *,
        region: str,
        concurrency: int,
        metrics: SenderMetrics,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.store = store
        self.broker = broker
        self.region = region
        self.concurrency = concurrency
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
        limit = asyncio.Semaphore(self.concurrency)

        async def one(row: Result) -> int | None:
            try:
                event = FollowResult(
                    region=self.region,
                    follow_id=row.follow_id,
                    person_id=row.person_id,
                    network=NETWORK,
                    target=row.target,
                    outcome=cast(FollowOutcome, row.outcome),
                    reason=row.reason,
                )
            except ValidationError:  # never block the outbox on one bad row
                self.log.exception("result cannot be published; skipped")
                return row.id
            async with limit:
                try:
                    await publish_event(self.broker, event)
                except Exception as error:  # noqa: BLE001 - retried on the next pass
                    self.log.warning("result not published yet", error=type(error).__name__)
                    return None
            return row.id

        done = [i for i in await asyncio.gather(*(one(r) for r in rows)) if i is not None]
        if done:
            await asyncio.to_thread(self.store.mark_published, done)
            finished = {r.id: r for r in rows}
            for row_id in done:
                row = finished[row_id]
                self.metrics.follows.labels(NETWORK, row.outcome, row.reason or "").inc()
            self.published += len(done)
        return len(done)

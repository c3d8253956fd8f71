"""Follow requests into the ledger, many per transaction, acked only once recorded.

Each message's handler hands its request to :class:`Intake` and waits; the handlers of
one pulled batch run concurrently, so their requests are written together (group
commit). When the write succeeds every handler returns and FastStream acks its
message; when it fails, each request is retried alone so that one bad request (a
poison message) fails by itself: its handler raises, the message is redelivered and,
after ``max_deliver``, dead-lettered — the others are recorded and acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.store import IntakeReport, Store
from passerelle_contracts import BlueskyFollowRequested

MAX_ID_LENGTH = 2048


class PoisonRequestError(ValueError):
    """A request that can never be recorded."""


class Intake:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        batch: int,
        linger: float,
        on_recorded: Callable[[IntakeReport], None],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.store = store
        self.clock = clock
        self.batch = batch
        self.linger = linger
        self.on_recorded = on_recorded
        self.log = log
        self._buffer: list[tuple[BlueskyFollowRequested, asyncio.Future[None]]] = []
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0

    async def submit(self, request: BlueskyFollowRequested) -> None:
        """Return once ``request`` is in the ledger (raise if it cannot be)."""
        if len(request.actor) > MAX_ID_LENGTH or len(request.target) > MAX_ID_LENGTH:
            raise PoisonRequestError("actor or target too long")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="bluesky-intake")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer.append((request, future))
        self._has_items.set()
        if len(self._buffer) >= self.batch:
            self._full.set()
        await future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._buffer:
            if not future.done():
                future.cancel()
        self._buffer = []

    async def _run(self) -> None:
        while True:
            await self._has_items.wait()
            if len(self._buffer) < self.batch and self.linger > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=self.linger)
            items, self._buffer = self._buffer[: self.batch], self._buffer[self.batch :]
            if not self._buffer:
                self._has_items.clear()
                self._full.clear()
            if items:
                await self._write(items)

    async def _write(
        self, items: list[tuple[BlueskyFollowRequested, asyncio.Future[None]]]
    ) -> None:
        requests = [r for r, _ in items]
        try:
            report = await asyncio.to_thread(self.store.intake, requests, self.clock.now())
        except Exception:
            if len(items) == 1:
                self.log.exception("follow request cannot be recorded")
                _settle(items, error=PoisonRequestError("cannot be recorded"))
                return
            for item in items:
                await self._write([item])
            return
        self.recorded += len(items)
        _settle(items)
        self.on_recorded(report)


def _settle(
    items: list[tuple[BlueskyFollowRequested, asyncio.Future[None]]],
    error: Exception | None = None,
) -> None:
    for _, future in items:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

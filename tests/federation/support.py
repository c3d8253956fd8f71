"""Helpers of the federation tests: a recording handler, messages, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats

from passerelle_contracts import (
    DirectoryAccount,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    directory_key,
)


class Recorder:
    """A link handler that remembers every message it was given, in order."""

    def __init__(self) -> None:
        self.messages: list[DirectoryMessage] = []
        self.fail_next = 0

    async def __call__(self, message: DirectoryMessage) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the database is away")
        self.messages.append(message)

    def seen_keys(self) -> list[str]:
        return [m.key for m in self.messages]

    def latest(self) -> dict[str, DirectoryMessage]:
        out: dict[str, DirectoryMessage] = {}
        for message in self.messages:
            out[message.key] = message
        return out


_CLOCK = [datetime(2026, 11, 25, tzinfo=UTC)]


def _tick() -> datetime:
    _CLOCK[0] += timedelta(milliseconds=1)
    return max(_CLOCK[0], datetime.now(UTC))


def entry(region: str, person: str, x_id: str, *, trust: str = "verified") -> DirectoryEntry:
    """A consented entry with a Bluesky account."""
    return DirectoryEntry(
        region=region,
        sent_at=_tick(),
        key=directory_key(region, person),
        x_account_id=x_id,
        trust=trust,  # type: ignore[arg-type]
        accounts=(
            DirectoryAccount(
                network="bluesky", account=f"did:plc:{person:0>24}", handle=f"{person}.test"
            ),
        ),
    )


def tombstone(region: str, person: str, reason: str = "erased") -> DirectoryTombstone:
    return DirectoryTombstone(
        region=region,
        sent_at=_tick(),
        key=directory_key(region, person),
        reason=reason,  # type: ignore[arg-type]
    )


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], within: float = 10.0, what: str = "condition"
) -> float:
    """Wait until ``check()`` is true; return how long it took."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not reached in {within}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Any]:
    """A plain nats-py connection, closed afterwards."""
    nc = await nats.connect(url, **options)
    try:
        yield nc
    finally:
        await nc.close()

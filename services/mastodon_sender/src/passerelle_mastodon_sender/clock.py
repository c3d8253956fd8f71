"""The service's clock: real time, or real time running faster (tests, benchmarks).

Every budget window, retry time and timestamp in the ledger is read from a
:class:`Clock`, so a test can run Mastodon's 24-hour follow budget in seconds
against test servers whose clock runs at the same pace. A fast clock is defined
by an origin (real epoch seconds), what it reads at the origin, and a speedup:
at real time ``t`` it reads ``start + (t - origin) × speedup``. Two processes
given the same three numbers agree on the time without talking to each other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Epoch seconds now, and sleeping in the same unit."""

    def now(self) -> float: ...

    def to_real(self, seconds: float) -> float:
        """How many real seconds ``seconds`` of this clock last."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def to_real(self, seconds: float) -> float:
        return max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FastClock:
    """Time that runs ``speedup`` times faster than the wall clock from ``origin``."""

    def __init__(
        self, speedup: float, origin: float | None = None, start: float | None = None
    ) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        self.speedup = speedup
        self.origin = time.time() if origin is None else origin
        self.start = self.origin if start is None else start

    def now(self) -> float:
        return self.start + (time.time() - self.origin) * self.speedup

    def to_real(self, seconds: float) -> float:
        return max(0.0, seconds) / self.speedup

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.to_real(seconds))


def clock_from(speedup: float, origin: float | None, start: float | None) -> Clock:
    """The clock the settings ask for."""
    if speedup == 1.0 and origin is None and start is None:
        return RealClock()
    return FastClock(speedup, origin, start)

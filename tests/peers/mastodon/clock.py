"""A simulated clock: ``now = start + speedup × real elapsed + offset``.

Every limit window, reset header and timestamp of the test server reads this
clock, so a test can run a 24-hour follow budget in seconds (``speedup``),
freeze time (``speedup=0``) or jump over a window boundary (``advance``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(ts: float, digits: int = 6) -> str:
    """ISO 8601 in UTC with ``digits`` fractional digits and a ``Z``, like Ruby's ``iso8601(n)``."""
    moment = datetime.fromtimestamp(ts, UTC)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    frac = f"{moment.microsecond:06d}"[:digits]
    return f"{base}.{frac}Z"


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC) into epoch seconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class SimClock:
    """Simulated wall clock; all values are epoch seconds (float)."""

    def __init__(self, start: float | None = None, speedup: float = 1.0) -> None:
        if speedup < 0:
            raise ValueError("speedup must be >= 0")
        self._start = time.time() if start is None else start
        self._mono0 = time.monotonic()
        self._speedup = speedup

    @property
    def speedup(self) -> float:
        return self._speedup

    def now(self) -> float:
        return self._start + self._speedup * (time.monotonic() - self._mono0)

    def _rebase(self, start: float, speedup: float) -> None:
        self._start = start
        self._mono0 = time.monotonic()
        self._speedup = speedup

    def set(self, when: float | None = None, speedup: float | None = None) -> None:
        """Jump to ``when`` (default: stay) and/or change the speed from now on."""
        if speedup is not None and speedup < 0:
            raise ValueError("speedup must be >= 0")
        self._rebase(
            self.now() if when is None else when,
            self._speedup if speedup is None else speedup,
        )

    def advance(self, seconds: float) -> None:
        """Move simulated time forward (never backwards) by ``seconds``."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._rebase(self.now() + seconds, self._speedup)

"""Bluesky's write limits, enforced the way the PDS does, on any clock (tests, benchmark).

Like the PDS (rate-limiter-flexible): per account, a fixed window starts with the first
point spent; a call that goes over is refused (429) *and* its points are still counted;
responses carry ``RateLimit-*`` headers for the limit with the fewest points left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

HOURLY = (5000, 3600.0)
DAILY = (35000, 86400.0)
CREATE_COST = 3


@dataclass
class Window:
    limit: int
    duration: float
    start: float | None = None
    used: int = 0

    def roll(self, now: float) -> None:
        if self.start is None or now >= self.start + self.duration:
            self.start, self.used = now, 0

    def reset_at(self) -> float:
        assert self.start is not None
        return self.start + self.duration


@dataclass
class Verdict:
    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


@dataclass
class WriteLimiter:
    clock: Callable[[], float]
    limits: tuple[tuple[int, float], ...] = (HOURLY, DAILY)
    accounts: dict[str, list[Window]] = field(default_factory=dict)
    refused: int = 0
    #: every refusal: (account, time)
    refusals: list[tuple[str, float]] = field(default_factory=list)

    def windows(self, account: str) -> list[Window]:
        found = self.accounts.get(account)
        if found is None:
            found = [Window(limit, duration) for limit, duration in self.limits]
            self.accounts[account] = found
        return found

    def consume(self, account: str, points: int) -> Verdict:
        now = self.clock()
        windows = self.windows(account)
        for w in windows:
            w.roll(now)
            w.used += points
        over = [w for w in windows if w.used > w.limit]
        tight = min(windows, key=lambda w: (w.limit - w.used, w.duration))
        if over:
            worst = max(over, key=lambda w: w.reset_at())
            self.refused += 1
            self.refusals.append((account, now))
            headers = _headers(worst)
            retry = max(0.0, worst.reset_at() - now)
            headers["retry-after"] = str(math.ceil(retry))
            return Verdict(allowed=False, headers=headers, retry_after=retry)
        return Verdict(allowed=True, headers=_headers(tight))


def _headers(w: Window) -> dict[str, str]:
    return {
        "ratelimit-limit": str(w.limit),
        "ratelimit-remaining": str(max(0, w.limit - w.used)),
        "ratelimit-reset": str(math.ceil(w.reset_at())),
        "ratelimit-policy": f"{w.limit};w={int(w.duration)}",
    }

"""Rate budgets as sliding windows: pure arithmetic, no I/O.

Bluesky counts write points per account in fixed windows that start with the first
point spent (5,000 per hour, 35,000 per day; a create costs 3) and logins in windows
of 5 minutes and a day. The sender keeps its own log of what it spent and never lets
the sum over *any* trailing window exceed the limit: every fixed window the server
may use lies inside some trailing window, so the server never refuses us for our own
spending, and over time we still spend the whole budget (a trailing window frees
points exactly as fast as a fixed one does).

A call's points are logged when it is sent (so they count while it is in flight) and
re-dated to when its answer arrived: the server counted them in between, so the
log's date is never earlier than the server's, and a window we think has room has
room on the server too (one call at a time per account).

What the server says (``RateLimit-Remaining`` for a write window) is folded in: if it
has fewer points left than our log explains (the person also used their account), the
difference is recorded as spent "elsewhere", now.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

HOUR = 3600.0
DAY = 86400.0
#: Points freed at ``at + window`` are usable a hair later (never on the boundary).
EPSILON = 0.001


@dataclass
class SlidingBudget:
    """Spending against several ``(limit, window)`` pairs at once."""

    limits: Sequence[tuple[int, float]]
    entries: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._horizon = max(window for _, window in self.limits)

    def load(self, entries: Iterable[tuple[float, int]]) -> None:
        """Replace the log (e.g. from the database after a restart)."""
        self.entries = deque(sorted(entries))

    def add(self, at: float, points: int) -> None:
        if points <= 0:
            return
        if self.entries and at < self.entries[-1][0]:
            self.entries.append((at, points))
            self.entries = deque(sorted(self.entries))
        else:
            self.entries.append((at, points))

    def move(self, at: float, points: int, new_at: float) -> None:
        """Re-date an entry (a call's points are dated when its answer came)."""
        try:
            self.entries.remove((at, points))
        except ValueError:
            return
        self.add(new_at, points)

    def prune(self, now: float) -> None:
        """Forget what no window can see any more."""
        while self.entries and self.entries[0][0] <= now - self._horizon - EPSILON:
            self.entries.popleft()

    def used(self, now: float, window: float) -> int:
        """Points spent in ``(now - window, now]``."""
        start = now - window
        return sum(points for at, points in self.entries if at > start - EPSILON)

    def available(self, now: float) -> int:
        """Points that can be spent now without any window going over its limit."""
        self.prune(now)
        return max(0, min(limit - self.used(now, window) for limit, window in self.limits))

    def when_available(self, now: float, points: int) -> float:
        """The earliest time from ``now`` when ``points`` can be spent (if nothing else is).

        ``inf`` if ``points`` exceeds a limit outright.
        """
        ready = now
        for limit, window in self.limits:
            if points > limit:
                return float("inf")
            excess = self.used(now, window) - (limit - points)
            if excess <= 0:
                continue
            # Walk the log from the oldest entry still in the window until enough drops out.
            start = now - window
            for at, spent in self.entries:
                if at <= start - EPSILON:
                    continue
                excess -= spent
                if excess <= 0:
                    ready = max(ready, at + window + EPSILON)
                    break
        return ready

    def usage(self, now: float) -> dict[float, int]:
        """Points used per window (for metrics)."""
        return {window: self.used(now, window) for _, window in self.limits}


def write_budget(points_per_hour: int, points_per_day: int) -> SlidingBudget:
    return SlidingBudget([(points_per_hour, HOUR), (points_per_day, DAY)])


def login_budget(per_5min: int, per_day: int) -> SlidingBudget:
    return SlidingBudget([(per_5min, 300.0), (per_day, DAY)])


def unexplained_spend(
    budget: SlidingBudget, now: float, *, limit: int, window: float, remaining: int
) -> int:
    """Points the server says are gone from ``(limit, window)`` that our log does not explain.

    Returns 0 when the header is not about one of our windows or agrees with us.
    """
    if not any(lim == limit and win == window for lim, win in budget.limits):
        return 0
    ours = limit - budget.used(now, window)
    return max(0, ours - remaining)

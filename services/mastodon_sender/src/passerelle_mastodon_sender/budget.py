"""Rate budgets: how many calls and follows an account may make, and when.

Mastodon counts in fixed windows aligned to the epoch (Rack::Attack and its
``RateLimiter``): 300 calls per 5 minutes per token, 400 follows per 24 hours per
account, an instance may be stricter. A :class:`Window` mirrors one such counter:

- our own count, so we never exceed the limit even when a server sends no headers;
- the server's word when it sends ``X-RateLimit-*`` (its remaining count and reset
  replace ours: it is the authority for its window), and a lower limit it announces
  is kept for later windows;
- a 429 blocks until the announced reset; without headers, the limit is learnt
  from how many calls got through;
- a guard band at each boundary: no call within ``guard`` seconds of a window's end
  or start, so a skew between our clock and the server's never puts a call in the
  window we did not count it in.

Within a window everything is spent as early as possible: a backlog uses the whole
budget, less only the guard bands. Pure logic: no I/O, time is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RateInfo:
    """``X-RateLimit-*``: the tightest limit the server applied to a call."""

    limit: int
    remaining: int
    reset_at: float
    """Epoch seconds (the server's ISO 8601 ``X-RateLimit-Reset``)."""


def parse_rate_headers(headers: Mapping[str, str]) -> RateInfo | None:
    """The rate-limit headers (case-insensitive mapping), or ``None`` if absent or malformed."""
    limit = headers.get("x-ratelimit-limit")
    remaining = headers.get("x-ratelimit-remaining")
    reset = headers.get("x-ratelimit-reset")
    if limit is None or remaining is None or reset is None:
        return None
    try:
        moment = datetime.fromisoformat(reset.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            return None
        return RateInfo(int(limit), max(0, int(remaining)), moment.timestamp())
    except ValueError:
        return None


class Window:
    """One fixed-window counter: ``limit`` uses per ``period`` seconds.

    ``guard``: how far our clock may be off the server's; nothing is used in the
    first ``guard`` seconds of a window we have not heard the server confirm.
    ``margin``: how late a call may reach the server; a use within ``guard + margin``
    of a window's end may land in the next window, so it counts in both.
    """

    def __init__(self, limit: int, period: float, guard: float = 0.0, margin: float = 0.0) -> None:
        if limit < 1 or period <= 0 or guard < 0 or margin < 0 or 2 * (guard + margin) >= period:
            raise ValueError("need limit >= 1, period > 0 and 0 <= guard + margin < period / 2")
        self.configured_limit = limit
        self.learned_limit: int | None = None
        self.period = period
        self.guard = guard
        self.margin = margin
        self.end = 0.0
        """End of the current window (epoch seconds); 0 until first used."""
        self.used = 0
        self.carry = 0
        """Uses near this window's end, counted in the next window too."""
        self.confirmed = False
        """Whether the server's headers placed us in this window."""
        self.blocked_until = 0.0
        self.server_reset: float | None = None
        """The reset the server last announced for this counter."""

    @property
    def limit(self) -> int:
        """The limit in force: what the server announced, else the configured one."""
        return self.learned_limit if self.learned_limit is not None else self.configured_limit

    @property
    def remaining(self) -> int:
        """Uses left in the current window (as last rolled)."""
        return max(0, self.limit - self.used)

    def _current(self, now: float) -> tuple[float, int, int, bool]:
        """(end, used, carry, confirmed) of the window containing ``now``."""
        if self.end == 0.0:
            return (math.floor(now / self.period) + 1) * self.period, 0, 0, False
        if now >= self.end:
            steps = math.floor((now - self.end) / self.period) + 1
            used = self.carry if steps == 1 else 0
            return self.end + steps * self.period, used, 0, False
        return self.end, self.used, self.carry, self.confirmed

    def _roll(self, now: float) -> None:
        self.end, self.used, self.carry, self.confirmed = self._current(now)

    def used_at(self, now: float) -> int:
        """Uses counted in the window containing ``now``."""
        return self._current(now)[1]

    def ready_at(self, now: float) -> float:
        """The earliest time (>= ``now``) one more use is allowed (no state changes)."""
        if now < self.blocked_until:
            return self.blocked_until
        end, used, _, confirmed = self._current(now)
        start = end - self.period
        if not confirmed and now < start + self.guard:
            # Just after a boundary: the server's clock may not be there yet.
            return start + self.guard
        if used >= self.limit:
            return end + self.guard
        return now

    def spend(self, now: float) -> None:
        """Count one use (call :meth:`ready_at` first)."""
        self._roll(now)
        self.used += 1
        if now >= self.end - self.guard - self.margin:
            self.carry += 1

    def restore(self, end: float, used: int) -> None:
        """Start from a saved count (after a restart)."""
        self.end = end
        self.used = used
        self.carry = 0
        self.confirmed = False

    def observe(self, rate: RateInfo, now: float) -> None:
        """The server's own count for this window (from its headers)."""
        if rate.reset_at <= now:
            return
        self._roll(now)
        self.server_reset = rate.reset_at
        if rate.limit >= 1:
            self.learned_limit = rate.limit if rate.limit < self.configured_limit else None
        if abs(rate.reset_at - self.end) > self.guard:
            # The server's window boundary is the truth (our clock may be skewed).
            self.end = rate.reset_at
        self.used = max(0, self.limit - rate.remaining)
        self.confirmed = True

    def refused(self, rate: RateInfo | None, now: float) -> None:
        """A 429: nothing more until the server's reset (or the end of our window)."""
        self._roll(now)
        if rate is not None and rate.reset_at > now:
            self.observe(rate, now)
            self.used = max(self.used, self.limit)
            self.blocked_until = rate.reset_at + self.guard
            return
        # No headers: the server is stricter than we thought; learn from what got through.
        allowed = max(1, self.used - 1)
        if allowed < self.limit:
            self.learned_limit = allowed
        self.used = max(self.used, self.limit)
        self.blocked_until = self.end + self.guard


class AccountBudget:
    """An account's two counters: calls per token, follows per account."""

    def __init__(self, requests: Window, follows: Window) -> None:
        self.requests = requests
        self.follows = follows

    def request_ready_at(self, now: float) -> float:
        return self.requests.ready_at(now)

    def follow_ready_at(self, now: float) -> float:
        """When a follow (one call, one follow) may go."""
        follows_at = self.follows.ready_at(now)
        return max(follows_at, self.requests.ready_at(follows_at))

    def is_follow_family(self, rate: RateInfo, now: float) -> bool:
        """Whether headers on a follow response describe the follows counter.

        Mastodon shows the follows counter there when it has fewer remaining than the
        call counter. Every other call shows the call counter, so headers that are not
        the call counter we last saw (same limit, same reset) are the follows counter.
        """
        calls = self.requests
        if calls.server_reset is not None and calls.server_reset > now:
            return not (
                rate.limit == calls.limit
                and abs(rate.reset_at - calls.server_reset) <= max(1.0, calls.guard)
            )
        # Nothing seen yet in this call window: the follows window (a day) reaches far
        # beyond a call window's end, or the limit tells.
        if rate.reset_at - now > calls.period + 2 * calls.guard:
            return True
        return rate.limit == self.follows.limit and rate.limit != calls.limit

    def observe(self, rate: RateInfo | None, now: float, *, follow_call: bool) -> None:
        if rate is None:
            return
        if follow_call and self.is_follow_family(rate, now):
            self.follows.observe(rate, now)
        else:
            self.requests.observe(rate, now)

    def refused(self, rate: RateInfo | None, now: float, *, follow_call: bool) -> None:
        """A 429: block the counter it concerns."""
        if rate is not None:
            if follow_call and self.is_follow_family(rate, now):
                self.follows.refused(rate, now)
            else:
                self.requests.refused(rate, now)
            return
        if follow_call and self.requests.used < self.requests.limit // 2:
            # No headers, and calls are far from their limit: it was the follows counter.
            self.follows.refused(None, now)
        else:
            self.requests.refused(None, now)


def follow_cap(following: int, followers: int, cap: int, ratio: float) -> int:
    """Mastodon's ``FollowLimitValidator``: how many accounts one may follow."""
    if following < cap:
        return cap
    return max(math.floor(followers * ratio), cap)

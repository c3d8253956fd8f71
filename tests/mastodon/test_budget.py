"""Rate budgets as pure logic: windows, guard bands, server headers, 429s, the follow cap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle_mastodon_sender.budget import (
    AccountBudget,
    RateInfo,
    Window,
    follow_cap,
    parse_rate_headers,
)

DAY = 86_400.0
T0 = 1_900_000_800.0  # a 5-minute boundary (and 00:00 UTC is T0 - 86400 * k + ...)


def use_all(window: Window, now: float) -> int:
    """Spend while allowed at ``now``; how many went."""
    count = 0
    while window.ready_at(now) == now:
        window.spend(now)
        count += 1
    return count


def test_a_window_allows_its_limit_then_waits_for_the_next_one() -> None:
    window = Window(300, 300.0, guard=1.0)
    now = T0 + 10
    assert use_all(window, now) == 300
    assert window.ready_at(now) == T0 + 300 + 1.0  # past the boundary and its guard band
    assert use_all(window, T0 + 301) == 300


def test_a_new_window_waits_for_the_servers_clock() -> None:
    window = Window(300, 300.0, guard=2.0)
    assert window.ready_at(T0 + 0.5) == T0 + 2.0  # just after a boundary
    assert window.ready_at(T0 + 100) == T0 + 100


def test_uses_near_the_end_count_in_the_next_window_too() -> None:
    window = Window(10, 300.0, guard=1.0, margin=4.0)
    for _ in range(3):
        window.spend(T0 + 100)
    for _ in range(4):
        window.spend(T0 + 296)  # may reach the server after its boundary
    assert window.ready_at(T0 + 296) == T0 + 296  # nothing idles before the boundary
    assert window.used_at(T0 + 301) == 4
    assert use_all(window, T0 + 301) == 6


def test_server_headers_replace_our_count_and_window() -> None:
    window = Window(300, 300.0, guard=1.0)
    window.spend(T0 + 10)
    # The token was used elsewhere too: the server says 5 remain, reset at its boundary.
    window.observe(RateInfo(300, 5, T0 + 300.4), T0 + 11)  # (margin 0: no carry)
    assert window.remaining == 5
    assert use_all(window, T0 + 12) == 5
    # Mastodon's reset keeps the fraction of the current second; the window itself
    # ends on the boundary (within the guard band, ours is kept).
    assert window.ready_at(T0 + 12) == T0 + 300 + 1.0
    # A boundary far from ours (our clock is off) is the server's to set.
    window.observe(RateInfo(300, 0, T0 + 330), T0 + 13)
    assert window.ready_at(T0 + 13) == T0 + 331
    assert window.ready_at(T0 + 331) == T0 + 331


def test_a_stricter_server_limit_is_kept_for_later_windows() -> None:
    window = Window(300, 300.0, guard=0.0)
    window.spend(T0 + 1)
    window.observe(RateInfo(100, 99, T0 + 300), T0 + 1)
    assert window.limit == 100
    assert use_all(window, T0 + 2) == 99
    assert use_all(window, T0 + 301) == 100


def test_a_429_with_headers_blocks_until_the_reset() -> None:
    window = Window(300, 300.0, guard=1.0)
    window.spend(T0 + 10)
    window.refused(RateInfo(300, 0, T0 + 250), T0 + 10)
    assert window.ready_at(T0 + 100) == T0 + 251
    assert window.ready_at(T0 + 251) == T0 + 251


def test_a_429_without_headers_learns_the_limit() -> None:
    window = Window(300, 300.0, guard=0.0)
    spent = use_all(window, T0 + 1)
    assert spent == 300
    window = Window(300, 300.0, guard=0.0)
    for _ in range(201):  # the server allowed 200; the 201st was refused
        window.spend(T0 + 1)
    window.refused(None, T0 + 1)
    assert window.limit == 200
    assert window.ready_at(T0 + 2) == T0 + 300
    assert use_all(window, T0 + 300) == 200


def test_restore_resumes_a_count() -> None:
    window = Window(300, 300.0)
    window.restore(T0 + 300, 290)
    assert use_all(window, T0 + 5) == 10


def test_follow_headers_are_told_apart_from_call_headers() -> None:
    budget = AccountBudget(Window(300, 300.0, 1.0), Window(400, DAY, 1.0))
    now = T0 + 100
    calls = RateInfo(300, 250, T0 + 300)
    follows = RateInfo(400, 12, T0 + 40_000)
    late_follows = RateInfo(400, 3, T0 + 250)  # the day ends within this call window
    assert not budget.is_follow_family(calls, now)
    assert budget.is_follow_family(follows, now)
    assert budget.is_follow_family(late_follows, now)
    budget.follows.spend(now)
    budget.observe(follows, now, follow_call=True)
    assert budget.follows.remaining == 12
    assert budget.requests.remaining == 300
    budget.observe(calls, now, follow_call=True)
    assert budget.requests.remaining == 250


def test_a_follow_waits_for_both_counters() -> None:
    budget = AccountBudget(Window(300, 300.0, 1.0), Window(400, DAY, 1.0))
    day_start = (T0 // DAY) * DAY
    now = day_start + 3700
    budget.follows.restore(day_start + DAY, 400)
    assert budget.follow_ready_at(now) == day_start + DAY + 1.0
    assert budget.request_ready_at(now) == now


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 50),
    steps=st.lists(
        st.tuples(st.floats(0, 40, allow_nan=False), st.floats(0, 3, allow_nan=False)),
        min_size=1,
        max_size=300,
    ),
    skew=st.floats(-0.99, 0.99),
)
def test_never_more_than_the_limit_in_any_server_window(
    limit: int, steps: list[tuple[float, float]], skew: float
) -> None:
    """Whatever the pace, the server never counts more than the limit in one of its
    windows, with our clock up to ``guard`` off its own and calls up to ``margin`` late."""
    period, guard, margin = 60.0, 1.0, 3.0
    window = Window(limit, period, guard, margin)
    now = T0
    per_server_window: dict[int, int] = {}
    for pause, latency in steps:
        now += pause
        at = window.ready_at(now)
        window.spend(at)
        arrival = at + skew + latency
        key = int(arrival // period)
        per_server_window[key] = per_server_window.get(key, 0) + 1
        now = at
    assert max(per_server_window.values()) <= limit


def test_parse_rate_headers() -> None:
    info = parse_rate_headers(
        {
            "x-ratelimit-limit": "300",
            "x-ratelimit-remaining": "299",
            "x-ratelimit-reset": "2030-01-01T00:05:00.123456Z",
        }
    )
    assert info == RateInfo(300, 299, 1893456300.123456)
    assert parse_rate_headers({}) is None
    assert (
        parse_rate_headers(
            {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "1", "x-ratelimit-reset": "soon"}
        )
        is None
    )


@pytest.mark.parametrize(
    ("following", "followers", "cap"),
    [(0, 0, 7_500), (7_499, 0, 7_500), (7_500, 100, 7_500), (9_000, 10_000, 11_000)],
)
def test_follow_cap(following: int, followers: int, cap: int) -> None:
    assert follow_cap(following, followers, 7_500, 1.1) == cap

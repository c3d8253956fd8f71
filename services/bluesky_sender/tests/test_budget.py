"""The rate budget: never over any window, and the whole budget spent over time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle_bluesky_sender.budget import (
    DAY,
    HOUR,
    SlidingBudget,
    login_budget,
    unexplained_spend,
    write_budget,
)


def greedy(budget: SlidingBudget, start: float, hours: float, cost: int, batch: int) -> list[float]:
    """Spend as the scheduler does: a batch as soon as it fits (event-driven time)."""
    now, end, sent = start, start + hours * HOUR, []
    while now < end:
        available = budget.available(now)
        n = min(batch, available // cost)
        if n > 0:
            budget.add(now, n * cost)
            sent.extend([now] * n)
            now += 0.5  # the call's duration
            continue
        now = budget.when_available(now, cost)
    return sent


def test_a_day_of_greedy_spending_uses_the_whole_daily_budget() -> None:
    budget = write_budget(5000, 35000)
    sent = greedy(budget, 1_000_000.0, 24, cost=3, batch=200)
    assert len(sent) == 35000 // 3  # 11,666: every point the day allows
    # ... at Bluesky's pace: 1,666 in the first hour, the day's budget within 7 hours.
    assert sum(1 for t in sent if t < 1_000_000.0 + HOUR) == 5000 // 3
    assert max(sent) < 1_000_000.0 + 7 * HOUR + 60


def fixed_windows_hold(times: list[float], limit: int, window: float, cost: int) -> bool:
    """The server's view: a window starts with the first point spent after the last one."""
    start, used = None, 0
    for t in sorted(times):
        if start is None or t >= start + window:
            start, used = t, 0
        used += cost
        if used > limit:
            return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=900), min_size=1, max_size=300),
    sizes=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=300),
)
def test_no_fixed_window_the_server_may_use_is_ever_over(
    gaps: list[float], sizes: list[int]
) -> None:
    budget = write_budget(5000, 35000)
    now, times = 0.0, []
    for gap, size in zip(gaps, sizes, strict=False):
        now += gap
        n = min(size, budget.available(now) // 3)
        if n:
            budget.add(now, 3 * n)
            times.extend([now] * n)
    assert fixed_windows_hold(times, 5000, HOUR, 3)
    assert fixed_windows_hold(times, 35000, DAY, 3)


def test_when_available_walks_the_log() -> None:
    budget = SlidingBudget([(10, 100.0)])
    budget.add(0.0, 6)
    budget.add(50.0, 4)
    assert budget.available(60.0) == 0
    assert budget.when_available(60.0, 1) > 100.0  # the first entry leaves at 100
    assert budget.when_available(60.0, 7) > 150.0  # both must leave
    assert budget.available(100.01) == 6
    assert budget.when_available(60.0, 11) == float("inf")


def test_redating_a_call_keeps_its_points_until_later() -> None:
    budget = SlidingBudget([(10, 100.0)])
    budget.add(0.0, 10)
    budget.move(0.0, 10, 5.0)  # the answer came at 5
    assert budget.available(100.01) == 0
    assert budget.available(105.01) == 10


def test_points_spent_elsewhere_are_only_what_the_log_does_not_explain() -> None:
    budget = write_budget(5000, 35000)
    budget.add(0.0, 600)
    assert unexplained_spend(budget, 1.0, limit=5000, window=HOUR, remaining=4400) == 0
    assert unexplained_spend(budget, 1.0, limit=5000, window=HOUR, remaining=2600) == 1800
    # Another limit (the per-IP one) says nothing about the account's points.
    assert unexplained_spend(budget, 1.0, limit=3000, window=300, remaining=0) == 0


def test_login_budget() -> None:
    logins = login_budget(30, 300)
    for i in range(30):
        logins.add(float(i), 1)
    assert logins.available(29.0) == 0
    assert 300.0 < logins.when_available(29.0, 1) < 301.0

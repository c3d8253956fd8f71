"""Limits on a fast clock: the sender and the instances agree on simulated time.

The instances enforce Mastodon's limits (or stricter ones) on their simulated clock;
the sender runs a :class:`FastClock` with the same origin and speed. Every refused
call is recorded by the instances (``violations``), so "never exceeded" is checked
by the server, not by the sender's own account.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from passerelle_mastodon_sender.clock import FastClock
from tests.mastodon.support import Harness, sender_settings, start_harness
from tests.peers.mastodon.clock import parse_iso
from tests.peers.mastodon.harness import MastodonFleet
from tests.support.nats import NatsServer

DAY = 86_400


def synchronise(fleet: MastodonFleet, start: float, speedup: float) -> FastClock:
    """Set every instance's clock to the sender's: ``start`` now, ``speedup`` times real time."""
    clock = FastClock(speedup, origin=time.time(), start=start)
    for instance in fleet:
        instance.set_clock(now=clock.now(), speedup=speedup)
    return clock


def follows_per_window(fleet: MastodonFleet, domain: str, user: str, period: int) -> Counter[int]:
    follows = fleet[domain].follows(user)["follows"]
    return Counter(math.floor(parse_iso(f["created_at"]) / period) for f in follows)


def throttled(fleet: MastodonFleet) -> int:
    return sum(int(i.stats()["counters"].get("throttled", 0)) for i in fleet)


@pytest.fixture(scope="module")
def strict_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    """Instances stricter than Mastodon: 30 follows per 10 minutes, 40 calls per minute."""
    limits = ["--follows-limit", "30", "--follows-period", "600"]
    limits += ["--token-requests", "40", "--token-period", "60"]
    with MastodonFleet(
        ("alpha.test", "beta.test"),
        base_dir=tmp_path_factory.mktemp("strict"),
        extra_args={"alpha.test": limits, "beta.test": limits},
    ) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def silent_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    """Mastodon's own limits, and no rate-limit headers at all."""
    with MastodonFleet(
        ("alpha.test", "beta.test"),
        base_dir=tmp_path_factory.mktemp("silent"),
        quirks={"alpha.test": ["no-rate-headers"], "beta.test": ["no-rate-headers"]},
    ) as fleet:
        yield fleet


@contextlib.asynccontextmanager
async def run(
    fleet: MastodonFleet,
    nats_server: NatsServer,
    tmp_path: Path,
    *,
    start: float,
    speedup: float,
    guard: float,
    margin: float,
) -> AsyncIterator[Harness]:
    # guard and margin are simulated seconds: at x300 a call that takes 0.3 s of real
    # time on a loaded machine reaches the instance 90 s later than decided.
    fleet.reset()
    clock = synchronise(fleet, start, speedup)
    settings = sender_settings(
        nats_server.url,
        tmp_path,
        fleet,
        mastodon_window_guard_seconds=guard,
        mastodon_latency_margin_seconds=margin,
    )
    async with start_harness(settings, fleet, clock) as harness:
        yield harness


async def test_a_stricter_instance_is_learnt_from_its_headers(
    strict_fleet: MastodonFleet, nats_server: NatsServer, tmp_path: Path
) -> None:
    fleet = strict_fleet
    start = math.floor(time.time() / 600) * 600 + 5.0
    async with run(
        fleet, nats_server, tmp_path, start=start, speedup=100, guard=2.0, margin=20.0
    ) as harness:
        alpha, beta = fleet["alpha.test"], fleet["beta.test"]
        alpha.create_account("alice")
        alpha.create_accounts(40, prefix="a")
        beta.create_accounts(35, prefix="b")
        targets = [f"a{i}@alpha.test" for i in range(1, 41)]
        targets += [f"b{i}@beta.test" for i in range(1, 36)]
        actor = await harness.sign_in("alpha.test", "alice", "p-alice")
        await harness.request_follows("p-alice", actor, targets)
        results = await harness.wait_results("p-alice", len(targets), within=90)
        assert {r.outcome for r in results.values()} == {"followed"}

        summary = alpha.follows("alice")["summary"]
        assert summary["created"] == 75
        assert summary["violations"] == 0
        assert throttled(fleet) == 0
        windows = follows_per_window(fleet, "alpha.test", "alice", 600)
        assert max(windows.values()) <= 30
        # While there is a backlog, each window's budget is used in full.
        assert sorted(windows.values(), reverse=True)[:2] == [30, 30]


async def test_without_headers_our_own_budget_keeps_mastodons_limits(
    silent_fleet: MastodonFleet, nats_server: NatsServer, tmp_path: Path
) -> None:
    fleet = silent_fleet
    day = math.floor(time.time() / DAY) * DAY
    start = day + DAY - 5400  # 22:30: 400 follows today, the rest after midnight
    async with run(
        fleet, nats_server, tmp_path, start=start, speedup=300, guard=15, margin=120
    ) as harness:
        alpha = fleet["alpha.test"]
        alpha.create_account("alice")
        alpha.create_accounts(450, prefix="a")
        targets = [f"a{i}@alpha.test" for i in range(1, 451)]
        actor = await harness.sign_in("alpha.test", "alice", "p-alice")
        await harness.request_follows("p-alice", actor, targets)
        results = await harness.wait_results("p-alice", len(targets), within=120)
        assert {r.outcome for r in results.values()} == {"followed"}

        summary = alpha.follows("alice")["summary"]
        assert summary["created"] == 450
        refused = [a for a in alpha.follows("alice")["attempts"] if a["outcome"] != "created"]
        assert summary["violations"] == 0, (
            summary["refused_request_limit"],
            summary["refused_cap"],
            summary["refused_rate_limit"],
            refused,
        )
        assert throttled(fleet) == 0
        days = follows_per_window(fleet, "alpha.test", "alice", DAY)
        # 450 > 400: the work spans midnight, and no day gets more than 400 (on a
        # loaded machine fewer than 400 may fit in the 90 minutes before midnight).
        assert set(days) == {day // DAY, day // DAY + 1}
        assert max(days.values()) <= 400

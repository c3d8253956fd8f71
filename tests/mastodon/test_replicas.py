"""Two sender replicas (real processes) on one PostgreSQL database share a backlog.

Accounts are leased to one replica at a time: every follow is made once, no account's
limits are exceeded (the instances count every refused call), both replicas work, and
when one is killed the other takes its accounts over once their leases lapse — not
before — and finishes, still exactly once.

The instances are stricter than Mastodon (30 follows per 10 minutes, 40 calls per
minute, as in ``test_limits``) and run on a fast clock shared with the senders, so each
account's budget runs out and comes back several times: accounts change hands often
(a lane gives its account up while the budget refills), and every change of hands
must carry the counts along.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from passerelle_mastodon_sender.clock import FastClock
from passerelle_platform.broker import make_broker
from passerelle_platform.metrics import ServiceMetrics
from tests.mastodon.support import REGION, Harness
from tests.mastodon.test_limits import follows_per_window, synchronise, throttled
from tests.peers.mastodon.clock import parse_iso
from tests.peers.mastodon.harness import MastodonFleet
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e

SPEEDUP = 20.0
FOLLOWS_LIMIT, FOLLOWS_PERIOD = 30, 600
CALLS_LIMIT, CALLS_PERIOD = 40, 60
LEASE_SECONDS = 5.0
PEOPLE = (("alpha.test", "a1"), ("alpha.test", "a2"), ("alpha.test", "a3"))
PEOPLE += (("beta.test", "b1"), ("beta.test", "b2"), ("beta.test", "b3"))
TARGETS = [f"t{i}@gamma.test" for i in range(1, 41)]
FOLLOWED_CALLS = re.compile(
    r'^passerelle_mastodon_calls_total\{[^}]*operation="follow"[^}]*result="ok"[^}]*\} (\S+)$',
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def strict_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    limits = ["--follows-limit", str(FOLLOWS_LIMIT), "--follows-period", str(FOLLOWS_PERIOD)]
    limits += ["--token-requests", str(CALLS_LIMIT), "--token-period", str(CALLS_PERIOD)]
    domains = ("alpha.test", "beta.test", "gamma.test")
    with MastodonFleet(
        domains,
        base_dir=tmp_path_factory.mktemp("replicas"),
        extra_args=dict.fromkeys(domains, limits),
    ) as fleet:
        yield fleet


class Replicas:
    """Two sender processes on one database, and the edge's view of them."""

    def __init__(
        self,
        edge: Harness,
        senders: dict[str, ServiceProcess],
        database: str,
        clock: FastClock,
    ) -> None:
        self.edge = edge
        self.senders = senders
        self.engine = sa.create_engine(database)
        self.clock = clock

    def simulated(self, real: float) -> float:
        """What the shared clock read at real time ``real``."""
        return self.clock.start + (real - self.clock.origin) * self.clock.speedup

    def leases(self) -> dict[str, tuple[str | None, float | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT person_id, lease_owner, lease_until FROM mastodon_link")
            )
            return {r.person_id: (r.lease_owner, r.lease_until) for r in rows}

    def rows(self, *states: str) -> dict[str, int]:
        """Ledger rows in these states, per person."""
        with self.engine.connect() as conn:
            query = sa.text(
                "SELECT person_id, count(*) AS n FROM mastodon_follow"
                " WHERE state IN :states GROUP BY person_id"
            ).bindparams(sa.bindparam("states", expanding=True))
            return {r.person_id: int(r.n) for r in conn.execute(query, {"states": states})}

    def follow_calls(self, replica: str) -> float:
        text = httpx.get(self.senders[replica].base_url + "/metrics", timeout=5).text
        return sum(float(v) for v in FOLLOWED_CALLS.findall(text))


@pytest.fixture
async def replicas(
    strict_fleet: MastodonFleet, nats_server: NatsServer, postgres_url: str, tmp_path: Path
) -> AsyncIterator[Replicas]:
    fleet = strict_fleet
    fleet.reset()
    start = math.floor(time.time() / FOLLOWS_PERIOD) * FOLLOWS_PERIOD + 5.0
    clock = synchronise(fleet, start, SPEEDUP)
    senders: dict[str, ServiceProcess] = {}
    for replica in ("r1", "r2"):
        senders[replica] = ServiceProcess(
            "mastodon_sender",
            nats_server.url,
            tmp_path / replica,
            env={
                "PASSERELLE_REGION": REGION,
                "PASSERELLE_DATABASE_URL": postgres_url,
                "PASSERELLE_MASTODON_REPLICA_ID": replica,
                "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(fleet.peers_file),
                "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
                "PASSERELLE_MASTODON_CLOCK_SPEEDUP": str(SPEEDUP),
                "PASSERELLE_MASTODON_CLOCK_ORIGIN": repr(clock.origin),
                "PASSERELLE_MASTODON_CLOCK_START": repr(clock.start),
                # The instances' limits, in simulated seconds.
                "PASSERELLE_MASTODON_FOLLOWS_PER_WINDOW": str(FOLLOWS_LIMIT),
                "PASSERELLE_MASTODON_FOLLOWS_WINDOW_SECONDS": str(FOLLOWS_PERIOD),
                "PASSERELLE_MASTODON_REQUESTS_PER_WINDOW": str(CALLS_LIMIT),
                "PASSERELLE_MASTODON_REQUESTS_WINDOW_SECONDS": str(CALLS_PERIOD),
                "PASSERELLE_MASTODON_WINDOW_GUARD_SECONDS": "2",
                "PASSERELLE_MASTODON_LATENCY_MARGIN_SECONDS": "20",
                # Real seconds: short leases, accounts given up for any wait over 1 s.
                "PASSERELLE_MASTODON_HTTP_TIMEOUT_SECONDS": "2",
                "PASSERELLE_MASTODON_LEASE_SECONDS": str(LEASE_SECONDS),
                "PASSERELLE_MASTODON_PARK_AFTER_SECONDS": "1",
                "PASSERELLE_MASTODON_LEASE_SCAN_SECONDS": "0.3",
                # Fewer lanes than accounts: neither replica can take everything.
                "PASSERELLE_MASTODON_MAX_LANES": "4",
                "PASSERELLE_MASTODON_INTAKE_BATCH": "20",
                "PASSERELLE_MASTODON_RETRY_BASE_SECONDS": "0.5",
                "PASSERELLE_MASTODON_FLUSH_INTERVAL_SECONDS": "0.02",
            },
        )
        (tmp_path / replica).mkdir()
    broker = make_broker(
        nats_server.url, "edge", TracerProvider(), ServiceMetrics("edge", "0", REGION)
    )
    found: Replicas | None = None
    try:
        for sender in senders.values():
            sender.start()
        for sender in senders.values():
            await asyncio.to_thread(sender.wait_http, "/readyz")
        await broker.connect()
        edge = Harness(sender=None, edge=broker, fleet=fleet)
        for subject in ("follow.result", "identity.*"):
            await broker.connection.subscribe(subject, cb=edge.on_event)
        found = Replicas(edge, senders, postgres_url, clock)
        yield found
    finally:
        await broker.stop()
        for sender in senders.values():
            sender.stop()
        if found is not None:
            found.engine.dispose()


async def backlog(replicas: Replicas) -> dict[str, str]:
    """Link every person, then ask for all their follows; person → acct."""
    edge = replicas.edge
    gamma = edge.fleet["gamma.test"]
    gamma.create_accounts(len(TARGETS), prefix="t")
    actors: dict[str, str] = {}
    for domain, user in PEOPLE:
        edge.fleet[domain].create_account(user)
        actors[f"p-{user}"] = await edge.sign_in(domain, user, f"p-{user}")
    for person, actor in actors.items():
        await edge.request_follows(person, actor, TARGETS)
    return actors


def check_exactly_once_within_limits(replicas: Replicas) -> None:
    edge = replicas.edge
    for person in (f"p-{user}" for _, user in PEOPLE):
        results = edge.results_for(person)
        assert set(results) == set(TARGETS)
        assert {r.outcome for r in results.values()} == {"followed"}, person
    for domain, user in PEOPLE:
        seen = edge.fleet[domain].follows(user)
        summary = seen["summary"]
        assert summary["created"] == len(TARGETS), (user, summary)
        assert summary["duplicate"] == 0, (user, summary)
        assert summary["violations"] == 0, (user, summary)
        assert len({f["target"] for f in seen["follows"]}) == len(TARGETS)
        windows = follows_per_window(edge.fleet, domain, user, FOLLOWS_PERIOD)
        assert max(windows.values()) <= FOLLOWS_LIMIT, (user, windows)
    assert throttled(edge.fleet) == 0
    # Results may be published twice (a replica killed before marking them), never
    # contradicting each other.
    outcomes: dict[tuple[str, str], set[str]] = {}
    for r in edge.results:
        outcomes.setdefault((r.person_id, r.target), set()).add(r.outcome)
    assert all(o == {"followed"} for o in outcomes.values())


async def test_two_replicas_share_a_backlog_exactly_once(replicas: Replicas) -> None:
    await backlog(replicas)
    total = len(PEOPLE) * len(TARGETS)
    await replicas.edge.wait_for(
        lambda: len({(r.person_id, r.target) for r in replicas.edge.results}) >= total,
        within=180,
        what=f"{total} results",
    )
    check_exactly_once_within_limits(replicas)
    made = {r: await asyncio.to_thread(replicas.follow_calls, r) for r in ("r1", "r2")}
    assert min(made.values()) > 0, made
    assert sum(made.values()) <= total


async def test_a_killed_replicas_accounts_are_taken_over_after_their_leases_lapse(
    replicas: Replicas,
) -> None:
    edge = replicas.edge
    await backlog(replicas)
    total = len(PEOPLE) * len(TARGETS)

    def r1_working() -> list[str]:
        """Accounts r1 holds (a live lease) with rows in the middle of a batch."""
        now = time.time()
        working = replicas.rows("working")
        return [
            person
            for person, (owner, until) in replicas.leases().items()
            if owner == "r1" and until is not None and until > now + 1 and working.get(person)
        ]

    # Slower follows: the kill lands in the middle of a batch.
    for domain in ("alpha.test", "beta.test"):
        edge.fleet[domain].inject_fault(
            path="/api/v1/accounts/*/follow", method="POST", latency=0.05, count=None
        )
    await edge.wait_for(lambda: len(edge.results) >= total // 6, within=120, what="some done")
    await edge.wait_for(lambda: bool(r1_working()), within=60, what="r1 in a batch")
    replicas.senders["r1"].kill()
    killed_at = time.time()
    leases, working = replicas.leases(), replicas.rows("working")
    open_rows = replicas.rows("pending", "working")
    # r1's accounts with work left: held by a lane, or parked until their budget frees up.
    held = {
        p: float(until)
        for p, (owner, until) in leases.items()
        if owner == "r1" and until is not None and until > killed_at and open_rows.get(p)
    }
    # Rows r1 left in the middle of a batch: r2 must take them back, check, finish.
    assert sum(working.get(p, 0) for p in held) > 0
    # Their leases were renewed at most at the kill.
    assert all(held[p] <= killed_at + LEASE_SECONDS + 0.5 for p in held if working.get(p))
    for domain in ("alpha.test", "beta.test"):
        edge.fleet[domain].clear_faults()

    await edge.wait_for(
        lambda: len({(r.person_id, r.target) for r in edge.results}) >= total,
        within=240,
        what=f"{total} results",
    )
    check_exactly_once_within_limits(replicas)
    # r2 took r1's accounts over (the leases name it now)...
    leases = replicas.leases()
    assert all(leases[p][0] == "r2" for p in held), (held, leases)
    # ...and not before their leases lapsed: nothing was followed for them from a
    # second after the kill (calls r1 had sent may still land) until the lapse.
    quiet_from = replicas.simulated(killed_at + 1.0)
    for domain, user in PEOPLE:
        if f"p-{user}" not in held:
            continue
        quiet_to = replicas.simulated(held[f"p-{user}"] - 0.2)
        created = [parse_iso(f["created_at"]) for f in edge.fleet[domain].follows(user)["follows"]]
        early = [t for t in created if quiet_from < t < quiet_to]
        assert not early, (user, early)

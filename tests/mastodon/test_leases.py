"""Account leases on SQLite and on a real PostgreSQL: claim, renew, give back, take over."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

import passerelle_mastodon_sender
from passerelle_mastodon_sender.leases import Leases
from passerelle_mastodon_sender.ledger import INTERRUPTED, Ledger
from passerelle_mastodon_sender.models import MastodonLink, metadata
from passerelle_mastodon_sender.store import Store
from passerelle_platform.db import make_engine, migrate
from tests.mastodon.support import follow_request

MIGRATIONS = Path(passerelle_mastodon_sender.__file__).parent / "migrations"
T = 1_900_000_000.0


def link(engine: Engine, person: str, status: str = "active") -> None:
    Store(engine).bind(
        MastodonLink(
            person_id=person,
            acct=f"{person}@a.test",
            domain="a.test",
            account_id="1",
            app_id=1,
            token_enc="x",
            scopes="read",
            status=status,
            linked_at=T,
        )
    )


def test_one_replica_at_a_time_until_the_lease_lapses(engine: Engine) -> None:
    link(engine, "p1")
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", f"t{i}@b.test") for i in range(3)], 100.0)
    r1, r2 = Leases(engine, "r1"), Leases(engine, "r2")

    first = r1.claim("p1", T, T + 60)
    assert first.taken
    assert first.previous is None
    assert first.link is not None
    assert len(ledger.claim("p1", 100.0, 2)) == 2  # r1 works two rows

    held = r2.claim("p1", T + 30, T + 90)
    assert not held.taken
    assert (held.holder, held.until) == ("r1", T + 60)
    assert ledger.claim("p1", 100.0, 10)[0].follow_id  # (the third row, pending)

    # r1 renews: r2 still waits.
    assert r1.renew("p1", T + 60, T + 100)
    assert not r2.claim("p1", T + 70, T + 130).taken
    # r1 stops renewing (killed): once lapsed, r2 takes over and its rows are due again.
    taken = r2.claim("p1", T + 101, T + 161)
    assert taken.taken
    assert taken.previous == "r1"
    assert taken.recovered == 3
    rows = ledger.claim("p1", 100.0, 10)
    assert len(rows) == 3
    assert all(r.interrupted for r in rows)
    assert INTERRUPTED == "interrupted"
    # r1 comes back to life: its lease is gone, renewing and giving back change nothing.
    assert not r1.renew("p1", T + 100, T + 200)
    r1.release({"p1": (T + 100, 0.0)})
    assert not r1.claim("p1", T + 102, T + 162).taken


def test_a_restarted_replica_takes_its_accounts_back_at_once(engine: Engine) -> None:
    link(engine, "p1")
    link(engine, "p2")
    ledger = Ledger(engine)
    ledger.accept([follow_request("p1", "t@b.test"), follow_request("p2", "t@b.test")], 100.0)
    r1, r2 = Leases(engine, "r1"), Leases(engine, "r2")
    assert r1.claim("p1", T, T + 60).taken
    assert r2.claim("p2", T, T + 60).taken
    ledger.claim("p1", 100.0, 10)
    ledger.claim("p2", 100.0, 10)
    # r1 restarts (same id): its own rows are due again, r2's are left alone.
    assert r1.recover_own() == 1
    assert [r.person_id for r in ledger.claim("p1", 100.0, 10)] == ["p1"]
    assert ledger.claim("p2", 100.0, 10) == []
    again = r1.claim("p1", T + 1, T + 61)
    assert again.taken
    assert again.previous == "r1"
    assert again.recovered == 0


def test_given_back_parked_and_swept(engine: Engine) -> None:
    for person in ("p1", "p2", "p3", "p4"):
        link(engine, person)
    link(engine, "p5", status="revoked")
    ledger = Ledger(engine)
    ledger.accept([follow_request(p, "t@b.test") for p in ("p1", "p2", "p3", "p5")], 100.0)
    r1, r2 = Leases(engine, "r1"), Leases(engine, "r2")
    # p4 has no work, p5 no working link: never offered.
    assert sorted(r2.free_with_work(T, 100.0, 10)) == ["p1", "p2", "p3"]
    assert r2.free_with_work(T, 99.0, 10) == []  # not due yet
    for person in ("p1", "p2", "p3"):
        assert r1.claim(person, T, T + 60).taken
    assert r2.free_with_work(T + 1, 100.0, 10) == []
    # p1 given back now, p2 parked (its budget is spent) until T + 500; p3 kept.
    r1.release({"p1": (T + 60, 0.0), "p2": (T + 60, T + 500)})
    assert r2.free_with_work(T + 2, 100.0, 10) == ["p1"]
    assert not r2.claim("p2", T + 2, T + 62).taken
    assert sorted(r2.free_with_work(T + 59, 100.0, 10)) == ["p1"]
    assert sorted(r2.free_with_work(T + 501, 100.0, 10)) == ["p1", "p2", "p3"]
    assert len(r2.free_with_work(T + 501, 100.0, 2)) == 2
    # A lease claimed again since a give-back was queued is not given back by it.
    assert r1.claim("p3", T + 3, T + 63).taken
    r1.release({"p3": (T + 60, 0.0)})
    assert not r2.claim("p3", T + 4, T + 64).taken
    # Claiming without taking only reads the link.
    read = r2.claim("p1", T + 5, T + 65, take=False)
    assert not read.taken
    assert read.link is not None
    assert read.link.lease_owner == "r1"
    # Rows left working by a replica that stopped renewing are offered once it lapses.
    ledger.claim("p3", 100.0, 10)
    assert "p3" not in r2.free_with_work(T + 62, 100.0, 10)
    assert "p3" in r2.free_with_work(T + 64, 0.0, 10)


def test_call_reservations_only_grow(engine: Engine) -> None:
    link(engine, "p1")
    store = Store(engine)
    store.reserve_requests({"p1": (T + 300, 50)}, 300.0)
    store.reserve_requests({"p1": (T + 300, 25)}, 300.0)  # a replica that lost the account
    current = store.link("p1")
    assert current is not None
    assert (current.requests_window_end, current.requests_reserved) == (T + 300, 50)
    store.reserve_requests({"p1": (T + 300.4, 75)}, 300.0)  # the server's reset moved ours
    store.reserve_requests({"p1": (T + 600, 25)}, 300.0)  # the next window
    current = store.link("p1")
    assert current is not None
    assert (current.requests_window_end, current.requests_reserved) == (T + 600, 25)


def test_replicas_starting_together_migrate_one_at_a_time(postgres_url: str) -> None:
    """Two replicas starting on a new database: one migrates, the other waits, both start."""
    engines = [make_engine(postgres_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(migrate, e, MIGRATIONS, "mastodon_sender") for e in engines]
            for future in done:
                future.result()
        link(engines[0], "p1")
        assert Leases(engines[1], "r1").claim("p1", T, T + 60).taken
    finally:
        for engine in engines:
            engine.dispose()


def test_migrations_match_the_models(engine: Engine) -> None:
    # SQLModel's metadata is shared by every service imported in this test run:
    # compare only this service's tables.
    ours_only = sa.MetaData()
    for table in metadata.tables.values():
        if table.name.startswith("mastodon_"):
            table.to_metadata(ours_only)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), ours_only)
    assert [d for d in diff if "alembic_version" not in str(d)] == []

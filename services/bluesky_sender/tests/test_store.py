"""The ledger on SQLite and PostgreSQL: once per (account, target), leases, the outbox,
erasure, and migrations that match the models."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import passerelle_bluesky_sender
from passerelle_bluesky_sender.models import DONE, FAILED, IN_FLIGHT, PENDING, metadata
from passerelle_bluesky_sender.store import LinkConflictError, Outcome, Store
from passerelle_contracts import BlueskyFollowRequested, follow_id
from passerelle_platform.db import make_engine, migrate

MIGRATIONS = Path(passerelle_bluesky_sender.__file__).parent / "migrations"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    migrate(engine, MIGRATIONS, "bluesky_sender")
    try:
        yield Store(engine)
    finally:
        engine.dispose()


def did() -> str:
    return "did:plc:" + "".join(
        secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24)
    )


def link(store: Store, person: str, account: str, now: float = 1000.0) -> None:
    store.link(
        did=account,
        person_id=person,
        handle="someone.test",
        pds_url="https://pds.example",
        app_password="enc-password",
        access_jwt="enc-access",
        refresh_jwt="enc-refresh",
        key_id="k1",
        access_expires_at=None,
        now=now,
        login_at=now,
    )


def request(person: str, actor: str, target: str) -> BlueskyFollowRequested:
    return BlueskyFollowRequested(
        region="fr",
        follow_id=follow_id(person, "bluesky", target),
        person_id=person,
        actor=actor,
        target=target,
        target_x_id="12345",
        directions=("following",),
    )


def test_migrations_match_the_models(store: Store) -> None:
    # SQLModel's metadata is shared by every service imported in this test run:
    # compare only this service's tables.
    ours_only = sa.MetaData()
    for table in metadata.tables.values():
        if table.name.startswith("bluesky_"):
            table.to_metadata(ours_only)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), ours_only)
    ours = [d for d in diff if "alembic_version" not in str(d)]
    assert ours == []


def test_a_request_is_recorded_once_whatever_the_redeliveries(store: Store) -> None:
    me, target = did(), did()
    link(store, "p1", me)
    r = request("p1", me, target)
    first = store.intake([r, r], 1000.0)
    again = store.intake([r], 1001.0)
    assert first.new_work == {me: 2}  # counted per request; the row is one
    assert again.new_results == 0
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT state FROM bluesky_follow")).all()
    assert [row[0] for row in rows] == [PENDING]


def test_requests_that_cannot_be_followed_are_answered(store: Store) -> None:
    me = did()
    link(store, "p1", me)
    report = store.intake(
        [
            request("p1", me, me),
            request("p1", me, "did:plc:bad"),
            request("someone-else", me, did()),
            request("p2", did(), did()),
        ],
        1000.0,
    )
    assert report.new_work == {}
    assert report.new_results == 4
    reasons = sorted(r.reason or "" for r in store.unpublished(10))
    assert reasons == ["invalid_target", "not_linked", "not_linked", "self_follow"]


def test_turns_leases_and_settling(store: Store) -> None:
    me = did()
    link(store, "p1", me)
    targets = [did() for _ in range(5)]
    store.intake([request("p1", me, t) for t in targets], 1000.0)
    start = store.begin_turn(me, "replica-a", 1001.0, 1100.0, 0.0, 3)
    assert start.account is not None
    assert len(start.due) == 3
    # Another replica cannot work on the account while the lease holds...
    other = store.begin_turn(me, "replica-b", 1002.0, 1100.0, 0.0, 3)
    assert (other.account, other.holder) == (None, "replica-a")
    ids = [row.id for row in start.due]
    spend = store.start_batch(me, ids, "batch1", 9, 1003.0)
    assert spend is not None
    assert store.end_turn(me, "replica-a") == 1000.0
    # ... and can once it is released.
    assert store.begin_turn(me, "replica-b", 1004.0, 1100.0, 0.0, 3).account is not None
    later = store.begin_turn(me, "replica-b", 1004.0, 1100.0, 0.0, 10)
    assert sorted(row.id for row in later.in_flight) == sorted(ids)
    store.finish_batch(
        [Outcome(i, DONE, IN_FLIGHT, outcome="followed") for i in ids],
        1005.0,
        spend=(spend, 1005.0),
        actor=me,
        followed=[row.target for row in start.due],
    )
    # An outcome for a row no longer in the expected state changes nothing.
    store.settle([Outcome(ids[0], FAILED, IN_FLIGHT, outcome="failed", reason="x")], 1006.0)
    results = store.unpublished(10)
    assert sorted(r.id for r in results) == sorted(ids)
    assert {r.outcome for r in results} == {"followed"}
    store.mark_published([r.id for r in results])
    assert store.unpublished(10) == []
    assert store.known_among(me, targets) == {row.target for row in start.due}
    assert store.spends(0.0) == {me: [(1005.0, 9)]}


def test_unlinked_follows_reopen_when_asked_again_after_relinking(store: Store) -> None:
    me, target = did(), did()
    link(store, "p1", me)
    store.intake([request("p1", me, target)], 1000.0)
    assert store.unlink("p1", 1001.0) is not None
    [result] = store.unpublished(10)
    assert (result.outcome, result.reason) == ("failed", "unlinked")
    store.mark_published([result.id])
    link(store, "p1", me, now=1002.0)
    report = store.intake([request("p1", me, target)], 1003.0)
    assert report.new_work == {me: 1}
    assert store.begin_turn(me, "r", 1004.0, 1100.0, 0.0, 10).due[0].target == target


def test_one_account_one_person(store: Store) -> None:
    me = did()
    link(store, "p1", me)
    with pytest.raises(LinkConflictError):
        link(store, "p2", me)
    other = did()
    change = store.link(
        did=other,
        person_id="p1",
        handle="other.test",
        pds_url="https://pds.example",
        app_password="x",
        access_jwt="y",
        refresh_jwt="z",
        key_id="k1",
        access_expires_at=None,
        now=2000.0,
        login_at=2000.0,
    )
    assert change.replaced_did == me
    assert store.account(me) is None


def test_erasure_leaves_nothing(store: Store) -> None:
    me, them = did(), did()
    link(store, "p1", me)
    link(store, "p2", them)
    store.intake([request("p1", me, them), request("p2", them, me)], 1000.0)
    store.add_known(me, [them])
    store.add_spend(me, 1000.0, 3, "write")
    store.save_target_statuses({me: "active"}, 1000.0)
    assert store.erase("p1") is not None
    assert store.remaining_for("p1", me) == 0
    # Nobody follows an erased person through us any more.
    [result] = store.unpublished(10)
    assert (result.person_id, result.reason) == ("p2", "target_erased")

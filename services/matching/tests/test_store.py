"""Hand-checked small graphs through the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect, text

from passerelle_contracts.events import follow_id
from passerelle_matching.models import FOLLOWER, FOLLOWING
from passerelle_matching.store import Archive, tombstone_digest
from services.matching.tests.world import World, account_of, wipe_edges


def bob_did() -> str:
    return account_of("bob", "bluesky")


def test_both_directions_and_mutual_follows(world: World) -> None:
    world.join("alice", 1, following=[2, 3, 4], followers=[3, 5])
    world.join("bob", 2, following=[1])
    world.join("carol", 3, following=[1], followers=[1])
    world.join("erin", 5, following=[1], networks=("mastodon",))
    assert world.matches() == {
        ("alice", "bluesky", "bob", "following", "proposed"),
        ("alice", "bluesky", "carol", "both", "proposed"),
        ("alice", "mastodon", "erin", "follower", "proposed"),
        ("bob", "bluesky", "alice", "following", "proposed"),
        ("carol", "bluesky", "alice", "both", "proposed"),
        ("erin", "bluesky", "alice", "following", "proposed"),
    }


def test_the_order_people_arrive_in_does_not_matter(store_factory: object) -> None:
    def run(order: list[str]) -> set[tuple[str, str, str, str, str]]:
        world = World(store_factory())  # type: ignore[operator]
        graph = {
            "alice": (1, [2, 3], [3]),
            "bob": (2, [1], []),
            "carol": (3, [1], [1]),
        }
        for name in order:
            x, following, followers = graph[name]
            world.archive(name, x, following, followers)
        for name in reversed(order):
            world.link(name)
        for name in order:
            world.consent(name)
        found = world.matches()
        with world.store.engine.begin() as c:
            c.execute(text("DELETE FROM matching_match"))
            c.execute(text("DELETE FROM matching_account"))
            c.execute(text("DELETE FROM matching_person"))
            wipe_edges(c, world.store.dialect)
        return found

    assert run(["alice", "bob", "carol"]) == run(["carol", "bob", "alice"])
    assert len(run(["bob", "alice", "carol"])) == 4


def test_self_follows_and_duplicate_edges_are_ignored(world: World) -> None:
    world.join("bob", 2)
    world.consent("alice")
    world.link("alice")
    ids = np.array([1, 2], dtype=np.uint64)  # 1 is alice herself; 2 comes twice
    archive = Archive("alice", "local", "i1", world.now(), "1", "alice")
    world.store.import_archive(
        archive,
        [(FOLLOWING, ids), (FOLLOWING, ids[1:]), (FOLLOWER, ids), (FOLLOWER, ids)],
    )
    assert world.matches() == {("alice", "bluesky", "bob", "both", "proposed")}


def test_unlinked_people_are_not_matched_until_they_link(world: World) -> None:
    world.join("alice", 1, following=[2])
    world.consent("bob")
    world.archive("bob", 2)
    assert world.matches() == set()
    world.link("bob")  # the newcomer: alice was waiting for bob
    assert world.matches() == {("alice", "bluesky", "bob", "following", "proposed")}
    world.link("bob", "mastodon")
    assert ("alice", "mastodon", "bob", "following", "proposed") in world.matches()
    world.unlink("bob", "bluesky")
    assert world.matches() == {("alice", "mastodon", "bob", "following", "proposed")}


def test_people_who_do_not_consent_are_never_proposed(world: World) -> None:
    world.join("alice", 1, following=[2, 3])
    world.consent("bob", matching=False)
    world.link("bob")
    world.archive("bob", 2)
    world.join("carol", 3)
    assert world.matches() == {("alice", "bluesky", "carol", "following", "proposed")}
    world.consent("bob", matching=True)
    world.consent("carol", matching=False)
    assert world.matches() == {("alice", "bluesky", "bob", "following", "proposed")}


def test_withdrawn_auto_follow_consent_stops_new_requests(trusting_world: World) -> None:
    world = trusting_world
    world.join("alice", 1, following=[2, 3], auto_follow=True)
    world.join("bob", 2)
    assert world.requested() == {("alice", "bluesky", bob_did())}
    world.consent("alice", matching=True, auto_follow=False)
    world.join("carol", 3)
    assert world.requested() == set()
    assert ("alice", "bluesky", "carol", "following", "proposed") in world.matches()
    assert ("alice", "bluesky", "bob", "following", "requested") in world.matches()


def test_auto_follow_needs_consent_actor_and_trusted_target(store_factory: object) -> None:
    strict = World(store_factory(trust_archive_claims=False))  # type: ignore[operator]
    strict.join("alice", 1, following=[2], auto_follow=True)
    strict.join("bob", 2)
    assert strict.requested() == set()  # bob's X id is only claimed
    assert strict.trust("bob") == "claimed"

    trusting = World(store_factory(trust_archive_claims=True))  # type: ignore[operator]
    trusting.join("carol", 11, following=[12], auto_follow=True, networks=("mastodon",))
    trusting.join("dave", 12)  # dave is on Bluesky only; carol has no Bluesky actor
    assert trusting.requested() == set()
    trusting.link("carol", "bluesky")  # now she has one
    assert trusting.requested() == {("carol", "bluesky", account_of("dave", "bluesky"))}


def test_a_link_hands_back_the_requests_it_made_due(trusting_world: World) -> None:
    """The service publishes what ``link_identity`` returns: every request the link
    made due, from and towards the newcomer; and it says when older ones wait too."""
    world = trusting_world
    world.join("alice", 1, following=[3], auto_follow=True)
    world.consent("carol", matching=True, auto_follow=True)
    world.archive("carol", 3, following=[1, 4])
    world.join("dave", 4)
    assert world.requested() == set()  # carol has no Bluesky account yet
    # carol links: alice awaited her, and she now follows alice and dave as herself.
    outcome = world.link("carol")
    made_due = {(r.person_id, r.network, r.target) for r in outcome.ready}
    assert made_due == {
        ("alice", "bluesky", account_of("carol", "bluesky")),
        ("carol", "bluesky", account_of("alice", "bluesky")),
        ("carol", "bluesky", account_of("dave", "bluesky")),
    }
    assert outcome.complete
    assert {r.target_x_id for r in outcome.ready} == {"1", "3", "4"}
    # Not published (a lost PubAck): the same link again finds them waiting.
    again = world.link("carol")
    waiting = {(r.person_id, r.network, r.target) for r in again.ready}
    if world.store.dialect == "sqlite":  # read back from the outbox, in the transaction
        assert again.complete
        assert waiting == made_due
    else:  # PostgreSQL: nothing new was made due; the waiting ones are read after
        assert not again.complete
        assert waiting == set()
        ready = world.store.pending_requests(again.scope, 100)
        assert {(r.person_id, r.network, r.target) for r in ready} == made_due
    assert world.requested() == made_due


def test_disputed_identities_are_never_auto_followed(trusting_world: World) -> None:
    world = trusting_world
    world.join("bob", 2)
    world.join("mallory", 2)  # claims bob's X id
    assert world.trust("bob") == world.trust("mallory") == "disputed"
    world.join("alice", 1, following=[2], auto_follow=True)
    assert world.requested() == set()
    assert world.matches() == {
        ("alice", "bluesky", "bob", "following", "proposed"),
        ("alice", "bluesky", "mallory", "following", "proposed"),
    }
    # Once mallory is gone, bob's claim stands alone again: alice's wish applies.
    world.store.erase("mallory")
    assert world.trust("bob") == "claimed"
    assert world.requested() == {("alice", "bluesky", bob_did())}


def test_a_forged_archive_creates_nothing_for_the_people_it_lists(trusting_world: World) -> None:
    world = trusting_world
    world.join("alice", 1, auto_follow=True)
    world.join("bob", 2, auto_follow=True)
    # Mallory claims alice and bob follow her; their own archives say nothing of her.
    world.join("mallory", 66, followers=[1, 2])
    assert {m for m in world.matches() if m[0] != "mallory"} == set()
    assert {r for r in world.requested() if r[0] != "mallory"} == set()
    # Claiming to *be* alice makes alice disputed, and still creates nothing for her.
    world.join("mallory", 1, followers=[2])
    assert world.trust("alice") == "disputed"
    assert {m for m in world.matches() if m[0] != "mallory"} == set()


def test_a_new_import_replaces_the_edges(world: World) -> None:
    world.join("bob", 2)
    world.join("carol", 3)
    world.join("dave", 4)
    world.join("alice", 1, following=[2, 4])
    world.store.select("alice", "bluesky", selected=True, targets=[account_of("dave", "bluesky")])
    world.store.request_follows("alice", "bluesky")
    world.archive("alice", 1, following=[3])
    assert world.matches() == {
        ("alice", "bluesky", "carol", "following", "proposed"),
        ("alice", "bluesky", "dave", "following", "requested"),  # acted upon: kept
    }
    assert world.store.count_edges() == 1


def test_stale_and_repeated_events_change_nothing(world: World) -> None:
    world.join("bob", 2)
    first = world.now()
    world.archive("alice", 1, following=[2], import_id="new", sent_at=first + 10)
    assert not world.archive("alice", 1, following=[3], import_id="old", sent_at=first).applied
    assert world.archive("alice", 1, following=[2], import_id="new", sent_at=first + 10).applied
    assert world.store.count_edges() == 1  # the redelivery replaced the edges, once
    assert not world.store.change_consent(
        "bob", "local", matching=False, auto_follow=False, notifications=False, revision=0
    ).applied
    unlinked_at = world.now()
    assert world.store.unlink_identity("bob", "bluesky", bob_did(), unlinked_at).applied
    late = world.store.link_identity("bob", "local", "bluesky", bob_did(), "@bob", unlinked_at - 1)
    assert not late.applied
    assert world.matches() == set()


def test_results_move_the_state(trusting_world: World) -> None:
    world = trusting_world
    world.join("alice", 1, following=[2, 3, 4], auto_follow=True)
    for name, x in (("bob", 2), ("carol", 3), ("dave", 4)):
        world.join(name, x)
    assert len(world.requested()) == 3

    def result(target: str, outcome: str) -> bool:
        account = account_of(target, "bluesky")
        return world.store.record_result(
            "alice",
            "bluesky",
            account,
            follow_id("alice", "bluesky", account),
            outcome,  # type: ignore[arg-type]
            "target_not_found" if outcome == "failed" else None,
        )

    assert result("bob", "followed")
    assert result("carol", "already_following")
    assert result("dave", "failed")
    assert not result("bob", "failed")  # a late failure does not undo a success
    assert not world.store.record_result("alice", "bluesky", bob_did(), "0" * 32, "failed", None)
    states = {m[2]: m[4] for m in world.matches()}
    assert states == {"bob": "followed", "carol": "already_following", "dave": "failed"}


def test_selection_list_summary_and_requests(world: World) -> None:
    world.join("alice", 1, following=[2, 3, 4, 5], followers=[2])
    world.join("bob", 2)
    world.join("carol", 3)
    world.join("dave", 4)
    world.join("mallory", 5)
    world.join("mallet", 5)  # disputes 5
    store = world.store
    total, items = store.list_matches("alice", "bluesky")
    assert total == 5
    assert items[0].handle == "@bob.bluesky"  # mutual first
    assert items[0].directions == ("following", "follower")
    assert [i.handle for i in items[1:]] == [
        "@carol.bluesky",
        "@dave.bluesky",
        "@mallet.bluesky",
        "@mallory.bluesky",
    ]
    assert {i.trust for i in items} == {"claimed", "disputed"}
    assert store.list_matches("alice", "bluesky", direction="follower")[0] == 1
    assert store.list_matches("alice", "bluesky", search="CAR")[1][0].target == account_of(
        "carol", "bluesky"
    )
    assert store.list_matches("alice", "bluesky", search="%")[0] == 0
    page = store.list_matches("alice", "bluesky", offset=2, limit=2)[1]
    assert [i.handle for i in page] == ["@dave.bluesky", "@mallet.bluesky"]

    # Select all leaves the disputed ones out; they are picked one by one.
    assert store.select("alice", "bluesky", selected=True, all_in_direction="both") == 3
    assert (
        store.select("alice", "bluesky", selected=False, targets=[account_of("dave", "bluesky")])
        == 1
    )
    assert store.select("alice", "bluesky", selected=True, targets=["did:plc:mallory"]) == 1
    assert (
        store.list_matches("alice", "bluesky", states=["declined"])[1][0].handle == "@dave.bluesky"
    )
    summary = set(store.summary("alice"))
    assert ("bluesky", "following", "selected", 3) in summary
    assert ("bluesky", "follower", "selected", 1) in summary  # bob, mutual, counts twice
    assert ("bluesky", "following", "declined", 1) in summary
    outcome = store.request_follows("alice", "bluesky")
    assert outcome.detail == "3"
    assert world.requested() == {
        ("alice", "bluesky", account_of(n, "bluesky")) for n in ("bob", "carol", "mallory")
    }
    assert store.request_follows("alice", "mastodon").detail == "not linked"
    assert store.summary("nobody") == []

    # Everyone's totals (the metrics): alice's five, bob mutual with one row; bob,
    # carol, dave, mallory and mallet followed nobody.
    totals = store.totals()
    assert sum(n for *_, n in totals) == 5
    assert ("bluesky", ("following", "follower"), "requested", 1) in totals
    assert ("bluesky", ("following",), "requested", 2) in totals
    assert ("bluesky", ("following",), "declined", 1) in totals


def test_erasure_leaves_no_trace(trusting_world: World) -> None:
    world = trusting_world
    world.join("alice", 1, following=[2], followers=[2], auto_follow=True)
    world.join(
        "bob", 2, following=[1], followers=[1], auto_follow=True, networks=("bluesky", "mastodon")
    )
    world.join("carol", 3, following=[1, 2])
    world.publish()
    bob = (
        world.store.engine.connect()
        .execute(text("SELECT person_key, import_key FROM matching_person WHERE person_id = 'bob'"))
        .one()
    )
    world.store.compact_edges()  # bob's edges in the target index too
    world.archive("dan", 4, following=[2])  # and someone's not yet compacted
    world.store.erase("bob")
    store = world.store
    with store.engine.connect() as c:
        for table in inspect(c).get_table_names():
            if table.startswith("alembic"):
                continue
            for row in c.execute(text(f"SELECT * FROM {table}")).mappings():
                values = {str(v) for v in row.values()}
                assert (
                    not {"bob", bob_did(), account_of("bob", "mastodon"), "@bob.bluesky"} & values
                ), (table, row)
                if table == "matching_match":
                    assert bob.person_key not in (row["person_key"], row["target_key"])
                if table in ("matching_edge", "matching_edge_run"):
                    assert row["import_key"] != bob.import_key
                if table == "matching_edge_block":
                    assert bob.import_key not in {ref >> 2 for ref in row["refs"]}, row
                if table == "matching_person":
                    assert row["x_id"] != 2
        assert c.execute(text("SELECT person_digest FROM matching_tombstone")).scalars().all() == [
            tombstone_digest("bob")
        ]
    assert world.matches() == {("carol", "bluesky", "alice", "following", "proposed")}
    if store.dialect == "postgresql":
        with store.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM matching_edge_block")).scalar_one() > 0
    # Late messages about bob cannot bring him back.
    assert not world.archive("bob", 2, following=[1]).applied
    assert not world.link("bob").applied
    assert not world.consent("bob").applied
    assert not any("bob" in m for m in world.matches())


@pytest.mark.parametrize("x_id", ["18446744073709551615", "9223372036854775808", "0"])
def test_x_ids_beyond_two_to_the_63(world: World, x_id: str) -> None:
    big = int(x_id)
    world.join("bob", big)  # type: ignore[arg-type]
    world.join("alice", 1, following=[big])
    assert world.matches() == {("alice", "bluesky", "bob", "following", "proposed")}
    world.consent("bob", matching=True, auto_follow=False)
    assert world.store.pending_requests(None) == []


def test_newcomers_are_found_through_the_target_index_and_fresh_edges(world: World) -> None:
    """Edges compacted into segments, merged, replaced and not yet compacted: a
    newcomer's lookup sees each current edge once, and nothing replaced."""
    for i, name in enumerate(("ann", "ben", "cat", "dan", "eve")):
        world.join(name, 10 + i, following=[1, 2, 3 + i], followers=[1])
        world.store.compact_edges()  # one segment each, merged as they grow
    world.archive("ben", 11, following=[2], followers=[1])  # re-import: no longer follows 1
    world.join("fay", 20, following=[1])  # not compacted
    world.join("zed", 1, following=[], networks=("bluesky", "mastodon"))
    expected = {
        (name, network, "zed", directions, "proposed")
        for network in ("bluesky", "mastodon")
        for name, directions in (
            ("ann", "both"),
            ("ben", "follower"),
            ("cat", "both"),
            ("dan", "both"),
            ("eve", "both"),
            ("fay", "following"),
        )
    }
    assert {m for m in world.matches() if m[2] == "zed"} == expected
    world.store.compact_edges()
    world.unlink("zed")
    world.link("zed")
    assert {m for m in world.matches() if m[2] == "zed"} == expected


def test_a_backlog_is_indexed_a_segment_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small segments: many compaction passes and merges; every lookup still exact."""
    from passerelle_matching import edges, store

    monkeypatch.setattr(edges, "SEGMENT_MAX_POSTINGS", 4)
    monkeypatch.setattr(store, "SEGMENT_MAX_POSTINGS", 4)
    names = [f"p{i}" for i in range(12)]
    for i, name in enumerate(names):
        world.join(name, 100 + i, following=[1, 2, 200 + i, 300 + i], followers=[1])
    assert world.store.compact_edges() == (12 * 5 if world.store.dialect == "postgresql" else 0)
    world.join("zed", 1)
    world.join("amy", 2)
    found = {m for m in world.matches() if m[2] in ("zed", "amy")}
    assert found == {(n, "bluesky", "zed", "both", "proposed") for n in names} | {
        (n, "bluesky", "amy", "following", "proposed") for n in names
    }
    if world.store.dialect == "postgresql":
        with world.store.engine.connect() as c:
            segments = c.execute(text("SELECT count(*) FROM matching_edge_segment")).scalar_one()
        assert 1 <= segments <= edges.MAX_SEGMENTS

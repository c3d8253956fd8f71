"""Several archives in one transaction (the batched intake), on SQLite and PostgreSQL.

A batch must do exactly what the same archives would do one by one: each archive
replaces only its own person's edges, a later archive of a person replaces an
earlier one of the same batch, an erased person or an older import is refused
without holding the others back, a redelivered import is reloaded; and a batch
that fails leaves nothing of any of its archives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from passerelle_matching.edges import EdgeBatch
from passerelle_matching.models import FOLLOWER, FOLLOWING
from passerelle_matching.store import Archive, MatchingStore
from services.matching.tests.world import Match, World, batches, wipe_edges

X = {"alice": 1, "bob": 2, "carol": 3, "dave": 4, "erin": 5}


def archive(person: str, import_id: str, sent_at: float) -> Archive:
    return Archive(person, "local", import_id, sent_at, str(X[person]), person)


def edges(following: Iterable[int], followers: Iterable[int] = ()) -> list[EdgeBatch]:
    return [*batches(following, FOLLOWING), *batches(followers, FOLLOWER)]


def story() -> list[tuple[Archive, list[EdgeBatch]]]:
    """What arrives together: two imports of alice (the later wins), bob twice (the same
    import redelivered), dave (erased before), carol, erin's older import."""
    return [
        (archive("alice", "a1", 10.0), edges([2, 3], [3])),
        (archive("bob", "b1", 10.0), edges([1], [3, 5])),
        (archive("alice", "a2", 20.0), edges([3, 5], [2])),
        (archive("dave", "d1", 10.0), edges([1, 2, 3])),
        (archive("carol", "c1", 10.0), edges([1, 2], [1])),
        (archive("bob", "b1", 10.0), edges([1], [3, 5])),
        (archive("erin", "e0", 5.0), edges([1, 2, 3])),
    ]


def setup(world: World) -> None:
    """Everyone consents and links; dave is erased; erin's newer archive is loaded."""
    for person in X:
        world.consent(person, auto_follow=True)
        world.link(person)
    world.store.erase("dave")
    world.store.import_archive(archive("erin", "e1", 30.0), edges([1], [2]))


def edges_by_person(store: MatchingStore) -> dict[str, list[tuple[int, int]]]:
    """Each person's current edges as (direction, X id), read back through the SQL the
    matching uses for one import."""
    out: dict[str, list[tuple[int, int]]] = {}
    with store.engine.connect() as c:
        people = c.execute(
            text("SELECT person_id, import_key FROM matching_person WHERE import_key IS NOT NULL")
        ).all()
        for person, import_key in people:
            rows = c.execute(
                text(f"SELECT direction, x_id FROM {store.edges.of_import()} e"),
                {"import_key": import_key},
            ).all()
            out[person] = sorted((int(d), int(x)) for d, x in rows)
    return out


def wipe(store: MatchingStore) -> None:
    with store.engine.begin() as c:
        for table in ("matching_match", "matching_account", "matching_person"):
            c.execute(text(f"DELETE FROM {table}"))
        c.execute(text("DELETE FROM matching_tombstone"))
        wipe_edges(c, store.dialect)


def run(
    store: MatchingStore, *, batched: bool
) -> tuple[list[tuple[bool, str]], set[Match], dict[str, Any], int, set[tuple[str, str, str]]]:
    world = World(store)
    setup(world)
    if batched:
        outcomes = store.import_archives(story())
    else:
        outcomes = [store.import_archive(a, b) for a, b in story()]
    found = (
        [(o.applied, o.detail) for o in outcomes],
        world.matches(),
        edges_by_person(store),
        store.count_edges(),
        world.requested(),
    )
    wipe(store)
    return found


def test_a_batch_does_what_the_same_archives_do_one_by_one(store_factory: Any) -> None:
    store: MatchingStore = store_factory(trust_archive_claims=True)
    one_by_one = run(store, batched=False)
    together = run(store, batched=True)
    assert together == one_by_one
    outcomes, matches, stored, count, requested = together
    assert outcomes == [
        (True, "3 edges"),
        (True, "3 edges"),
        (True, "3 edges"),
        (False, "erased"),
        (True, "3 edges"),
        (True, "3 edges"),
        (False, "stale"),
    ]
    # alice's later import replaced her earlier one; bob's redelivery left one copy;
    # dave has nothing; erin keeps her newer import.
    assert stored == {
        "alice": [(FOLLOWING, 3), (FOLLOWING, 5), (FOLLOWER, 2)],
        "bob": [(FOLLOWING, 1), (FOLLOWER, 3), (FOLLOWER, 5)],
        "carol": [(FOLLOWING, 1), (FOLLOWING, 2), (FOLLOWER, 1)],
        "erin": [(FOLLOWING, 1), (FOLLOWER, 2)],
    }
    assert count == 11  # no run of a replaced or refused import is left
    assert ("alice", "bluesky", "carol", "following", "requested") in matches
    assert not any(m[0] == "dave" or m[2] == "dave" for m in matches)
    assert ("alice", "bluesky", "did:plc:erin") in requested


def test_a_failing_batch_leaves_every_person_as_they_were(store_factory: Any) -> None:
    store: MatchingStore = store_factory(trust_archive_claims=True)
    world = World(store)
    setup(world)
    store.import_archive(archive("alice", "a0", 1.0), edges([2]))
    store.compact_edges()  # alice's old edges are in the target index too
    before = (edges_by_person(store), world.matches(), store.count_edges())

    def broken() -> Iterator[EdgeBatch]:
        yield FOLLOWING, np.array([1, 2], dtype=np.uint64)
        raise ValueError("payload truncated")

    with pytest.raises(ValueError, match="truncated"):
        store.import_archives(
            [
                (archive("alice", "a1", 10.0), edges([3], [5])),
                (archive("bob", "b1", 10.0), broken()),
                (archive("carol", "c1", 10.0), edges([1])),
            ]
        )
    assert (edges_by_person(store), world.matches(), store.count_edges()) == before
    # The same archives without the broken one load as usual afterwards.
    outcomes = store.import_archives(
        [
            (archive("alice", "a1", 10.0), edges([3], [5])),
            (archive("carol", "c1", 10.0), edges([1])),
        ]
    )
    assert [o.applied for o in outcomes] == [True, True]
    assert edges_by_person(store)["alice"] == [(FOLLOWING, 3), (FOLLOWER, 5)]
    assert ("carol", "bluesky", "alice", "following", "requested") in world.matches()


def test_an_empty_batch_does_nothing(store_factory: Any) -> None:
    store: MatchingStore = store_factory()
    assert store.import_archives([]) == []
    assert store.count_edges() == 0

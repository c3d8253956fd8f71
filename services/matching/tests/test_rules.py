"""The rules on hand-checked graphs, without a database."""

from __future__ import annotations

from passerelle_matching.rules import (
    Person,
    auto_followable,
    expected_matches,
    result_target,
    selection_target,
    trust_levels,
)

BSKY = {"bluesky": "did:plc:x"}


def person(pid: str, x: int | None, following=(), followers=(), **kw) -> Person:  # type: ignore[no-untyped-def]
    kw.setdefault("accounts", BSKY)
    kw.setdefault("matching", True)
    return Person(pid, x, following=frozenset(following), followers=frozenset(followers), **kw)


def matches(people: list[Person], *, trust: bool = False) -> set[tuple[str, str, str, str, str]]:
    return {
        (m.person_id, m.network, m.target_id, "/".join(m.directions), m.state)
        for m in expected_matches(people, trust_archive_claims=trust).values()
    }


def test_both_directions_and_mutual_follows() -> None:
    people = [
        person("alice", 1, following=[2, 3, 4], followers=[3, 5]),
        person("bob", 2, following=[1]),
        person("carol", 3, following=[1], followers=[1]),
        person("erin", 5, following=[1], accounts={"mastodon": "erin@example.social"}),
    ]
    assert matches(people) == {
        ("alice", "bluesky", "bob", "following", "proposed"),
        ("alice", "bluesky", "carol", "following/follower", "proposed"),
        ("alice", "mastodon", "erin", "follower", "proposed"),
        ("bob", "bluesky", "alice", "following", "proposed"),
        ("carol", "bluesky", "alice", "following/follower", "proposed"),
        ("erin", "bluesky", "alice", "following", "proposed"),
    }


def test_self_follows_unlinked_and_unconsenting_people_never_match() -> None:
    people = [
        person("alice", 1, following=[1, 2, 3, 4], followers=[1]),
        person("bob", 2, accounts={}),  # not linked anywhere
        person("carol", 3, matching=False),  # does not want to be found
        person("dave", 4),
    ]
    assert matches(people) == {("alice", "bluesky", "dave", "following", "proposed")}


def test_a_forged_archive_creates_nothing_for_the_people_it_lists() -> None:
    # Mallory's archive says alice and bob follow her; theirs say nothing of her.
    people = [
        person("alice", 1, auto_follow=True),
        person("bob", 2, auto_follow=True),
        person("mallory", 66, followers=[1, 2]),
    ]
    found = matches(people, trust=True)
    assert {m for m in found if m[0] != "mallory"} == set()
    assert found == {
        ("mallory", "bluesky", "alice", "follower", "proposed"),
        ("mallory", "bluesky", "bob", "follower", "proposed"),
    }


def test_trust_levels_and_auto_follow() -> None:
    people = [
        person("alice", 1, following=[2, 3], auto_follow=True),
        person("bob", 2),
        person("carol", 3),
        person("mallory", 3),  # claims carol's X id too
        person("victor", 9, verified=True),
    ]
    levels = trust_levels(people)
    assert levels == {
        "alice": "claimed",
        "bob": "claimed",
        "carol": "disputed",
        "mallory": "disputed",
        "victor": "verified",
    }
    strict, trusting = matches(people, trust=False), matches(people, trust=True)
    assert ("alice", "bluesky", "bob", "following", "proposed") in strict
    assert ("alice", "bluesky", "bob", "following", "requested") in trusting
    for found in (strict, trusting):  # disputed: proposed both ways, never requested
        assert ("alice", "bluesky", "carol", "following", "proposed") in found
        assert ("alice", "bluesky", "mallory", "following", "proposed") in found
    owner = people[0]
    assert auto_followable(owner, "bluesky", "verified", trust_archive_claims=False)
    assert not auto_followable(owner, "mastodon", "verified", trust_archive_claims=True)
    assert not auto_followable(owner, "bluesky", "disputed", trust_archive_claims=True)


def test_selection_and_results() -> None:
    assert selection_target("proposed", selected=True) == "selected"
    assert selection_target("declined", selected=True) == "selected"
    assert selection_target("requested", selected=True) is None
    assert selection_target("selected", selected=False) == "declined"
    assert selection_target("followed", selected=False) is None
    assert result_target("requested", "followed") == "followed"
    assert result_target("followed", "failed") == "followed"
    assert result_target("requested", "failed") == "failed"
    assert result_target("failed", "already_following") == "already_following"

"""Matching's rules in plain Python: the specification the SQL in ``store`` implements.

Nothing here touches a database. The service uses the small decisions
(:func:`trust_levels`, :func:`auto_followable`, :func:`selection_target`,
:func:`result_target`); tests use :func:`expected_matches` as the reference the
set-based SQL must agree with, on any graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from passerelle_contracts.base import Network
from passerelle_contracts.events import Direction, FollowOutcome
from passerelle_contracts.rpc import MatchState, TrustLevel

DIRECTIONS: tuple[Direction, ...] = ("following", "follower")


@dataclass(frozen=True)
class Person:
    """What matching knows of one person."""

    person_id: str
    x_id: int | None = None
    """The X id their own archive claims (``None`` before any archive)."""
    accounts: Mapping[Network, str] = field(default_factory=dict)
    matching: bool = False
    """Consents to appear in other people's results."""
    auto_follow: bool = False
    verified: bool = False
    """Proved their X identity (Sign in with X); no one is, yet."""
    following: frozenset[int] = frozenset()
    """X ids their own archive says they followed."""
    followers: frozenset[int] = frozenset()
    """X ids their own archive says followed them."""


@dataclass(frozen=True)
class ExpectedMatch:
    """A match the rules call for, and the state it starts in."""

    person_id: str
    network: Network
    target_id: str
    directions: tuple[Direction, ...]
    state: MatchState


def trust_levels(people: Iterable[Person]) -> dict[str, TrustLevel]:
    """Each claimant's trust: verified, else claimed, but disputed when shared."""
    people = list(people)
    claims = Counter(p.x_id for p in people if p.x_id is not None)
    levels: dict[str, TrustLevel] = {}
    for p in people:
        if p.x_id is None:
            continue
        if p.verified:
            levels[p.person_id] = "verified"
        elif claims[p.x_id] > 1:
            levels[p.person_id] = "disputed"
        else:
            levels[p.person_id] = "claimed"
    return levels


def trusted(level: TrustLevel, *, trust_archive_claims: bool) -> bool:
    """Whether a target may be followed without the person picking it."""
    return level == "verified" or (trust_archive_claims and level == "claimed")


def auto_followable(
    owner: Person, network: Network, target_trust: TrustLevel, *, trust_archive_claims: bool
) -> bool:
    """A match is requested at once only with the owner's consent, actor and a trusted target."""
    return (
        owner.auto_follow
        and network in owner.accounts
        and trusted(target_trust, trust_archive_claims=trust_archive_claims)
    )


def expected_matches(
    people: Iterable[Person], *, trust_archive_claims: bool
) -> dict[tuple[str, Network, str], ExpectedMatch]:
    """Every match the rules call for, keyed by (person, network, target person).

    A match comes only from the owner's own archive: an X id in their following
    (or follower) list, claimed by another person who consents to matching and
    has linked the network. Self-follows never match.
    """
    people = list(people)
    levels = trust_levels(people)
    claimants: dict[int, list[Person]] = {}
    for p in people:
        if p.x_id is not None:
            claimants.setdefault(p.x_id, []).append(p)
    out: dict[tuple[str, Network, str], ExpectedMatch] = {}
    for owner in people:
        lists: dict[Direction, frozenset[int]] = {
            "following": owner.following,
            "follower": owner.followers,
        }
        found: dict[tuple[Network, str], set[Direction]] = {}
        for direction, ids in lists.items():
            for x_id in ids:
                if x_id == owner.x_id:
                    continue
                for target in claimants.get(x_id, []):
                    if target.person_id == owner.person_id or not target.matching:
                        continue
                    for network in target.accounts:
                        found.setdefault((network, target.person_id), set()).add(direction)
        for (network, target_id), directions in found.items():
            auto = auto_followable(
                owner, network, levels[target_id], trust_archive_claims=trust_archive_claims
            )
            out[(owner.person_id, network, target_id)] = ExpectedMatch(
                person_id=owner.person_id,
                network=network,
                target_id=target_id,
                directions=tuple(d for d in DIRECTIONS if d in directions),
                state="requested" if auto else "proposed",
            )
    return out


def selection_target(state: MatchState, *, selected: bool) -> MatchState | None:
    """Where selecting (or deselecting) moves a match, or ``None`` if it stays.

    Selecting picks a proposed or declined match; deselecting declines a
    proposed or selected one (a declined match is never auto-followed later).
    Matches already acted upon do not move.
    """
    if selected:
        return "selected" if state in ("proposed", "declined") else None
    return "declined" if state in ("proposed", "selected") else None


def result_target(state: MatchState, outcome: FollowOutcome) -> MatchState:
    """Where a follow result moves a match: a failure never undoes a success."""
    if outcome == "failed" and state in ("followed", "already_following"):
        return state
    return outcome

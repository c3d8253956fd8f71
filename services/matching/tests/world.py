"""A small language for hand-checked graphs: people, archives, links, consents."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from passerelle_contracts.base import Network
from passerelle_matching.models import FOLLOWER, FOLLOWING, NETWORK_NAMES, STATE_NAMES
from passerelle_matching.store import Archive, FollowToRequest, MatchingStore, Outcome

#: A match as tests read it: (person, network, target person, directions, state).
Match = tuple[str, str, str, str, str]


def account_of(person: str, network: Network) -> str:
    """The account a test person links on a network."""
    return f"did:plc:{person}" if network == "bluesky" else f"{person}@example.social"


def batches(ids: Iterable[int], direction: int, size: int = 3) -> list[tuple[int, Any]]:
    """Ascending unique ids as decoder-sized batches (small, to cross batch edges)."""
    ordered = np.array(sorted(set(ids)), dtype=np.uint64)
    return [(direction, ordered[i : i + size]) for i in range(0, len(ordered), size)]


def wipe_edges(connection: Connection, dialect: str) -> None:
    """Delete every edge (and, on PostgreSQL, the target index built from them)."""
    if dialect == "postgresql":
        for table in ("matching_edge_run", "matching_edge_block", "matching_edge_segment"):
            connection.execute(text(f"DELETE FROM {table}"))
    else:
        connection.execute(text("DELETE FROM matching_edge"))


class World:
    """People acting on one store, with a clock that always moves forward."""

    def __init__(self, store: MatchingStore) -> None:
        self.store = store
        self._tick = itertools.count(1_000_000)
        self._imports = itertools.count(1)
        self._revisions: dict[str, int] = {}

    def now(self) -> float:
        return float(next(self._tick))

    def archive(
        self,
        person: str,
        x_id: int | str,
        following: Iterable[int] = (),
        followers: Iterable[int] = (),
        *,
        import_id: str | None = None,
        sent_at: float | None = None,
    ) -> Outcome:
        archive = Archive(
            person_id=person,
            region="local",
            import_id=import_id or f"import-{next(self._imports)}",
            sent_at=self.now() if sent_at is None else sent_at,
            x_account_id=str(x_id),
            x_username=person,
        )
        return self.store.import_archive(
            archive, [*batches(following, FOLLOWING), *batches(followers, FOLLOWER)]
        )

    def link(
        self, person: str, network: Network = "bluesky", *, account: str | None = None
    ) -> Outcome:
        account = account or account_of(person, network)
        return self.store.link_identity(
            person, "local", network, account, f"@{person}.{network}", self.now()
        )

    def unlink(self, person: str, network: Network = "bluesky") -> Outcome:
        return self.store.unlink_identity(person, network, account_of(person, network), self.now())

    def consent(self, person: str, *, matching: bool = True, auto_follow: bool = False) -> Outcome:
        revision = self._revisions.get(person, 0) + 1
        self._revisions[person] = revision
        return self.store.change_consent(
            person,
            "local",
            matching=matching,
            auto_follow=auto_follow,
            notifications=False,
            revision=revision,
        )

    def join(
        self,
        person: str,
        x_id: int,
        following: Iterable[int] = (),
        followers: Iterable[int] = (),
        *,
        networks: tuple[Network, ...] = ("bluesky",),
        auto_follow: bool = False,
    ) -> None:
        """The usual journey: consent, link, upload."""
        self.consent(person, matching=True, auto_follow=auto_follow)
        for network in networks:
            self.link(person, network)
        self.archive(person, x_id, following, followers)

    # --- reading --------------------------------------------------------------------

    def matches(self) -> set[Match]:
        with self.store.engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT p.person_id AS person, m.network, t.person_id AS target,"
                    " m.directions, m.state FROM matching_match m"
                    " JOIN matching_person p ON p.person_key = m.person_key"
                    " JOIN matching_person t ON t.person_key = m.target_key"
                )
            ).all()
        names = {FOLLOWING: "following", FOLLOWER: "follower", FOLLOWING | FOLLOWER: "both"}
        return {
            (
                r.person,
                NETWORK_NAMES[int(r.network)],
                r.target,
                names[int(r.directions)],
                STATE_NAMES[int(r.state)],
            )
            for r in rows
        }

    def publish(self) -> list[FollowToRequest]:
        """Drain the outbox the way the service does (without a broker)."""
        out: list[FollowToRequest] = []
        while True:
            ready = self.store.pending_requests(None, limit=100)
            if not ready:
                return out
            self.store.mark_published([r.key for r in ready])
            out.extend(ready)

    def requested(self) -> set[tuple[str, str, str]]:
        """(person, network, target account) of every follow request published now."""
        return {(r.person_id, r.network, r.target) for r in self.publish()}

    def trust(self, person: str) -> str:
        with self.store.engine.connect() as c:
            return str(
                c.execute(
                    text("SELECT trust FROM matching_person WHERE person_id = :p"), {"p": person}
                ).scalar_one()
            )

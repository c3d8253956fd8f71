"""The matching logic over the service's database: set-based SQL, no per-row loops.

SQL text is assembled here only from this module's own constants and fragments
(state codes, relation names); every value travels as a bound parameter.

Everything a message or a request changes goes through one method here, in one
transaction. Writes are serialised (a process lock, and on PostgreSQL a
transaction-scoped advisory lock shared by every replica), so two events about
the same people can never both miss a match: the edges of someone who just
arrived and the directory entry of someone who just linked are always seen
together by one of the two transactions.

How a match comes to be (``docs/matching.md`` has the long version):

- only from the *owner's* archive: an edge of person P to X id x, in either
  direction, and a person T (not P) whose own archive claims x, who consents to
  appear in others' results and has linked the network;
- with the state ``requested`` at once when P consents to auto-follow, has
  linked the network (P's account there is the actor) and T's X identity is
  trusted (``verified``, or ``claimed`` if the operator trusts archive claims);
  otherwise ``proposed``, for P to pick;
- everything else is a *refresh* of a scope: the matches of an owner (their
  edges joined with the directory) or towards a target (the edges pointing at
  their X id, through an index), inserted or promoted in one statement.

A follow request is an outbox row: ``pending`` is set in the same transaction as
the state ``requested``; the service publishes and then clears it.
"""

# ruff: noqa: S608 - see the module docstring: no value is ever formatted into SQL
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

import numpy as np
from sqlalchemy import BindParameter, Connection, Engine, Row, bindparam, text
from sqlalchemy.exc import DBAPIError

from passerelle_contracts import DirectoryAccount, DirectoryEntry, directory_key
from passerelle_contracts.base import Network, stable_id
from passerelle_contracts.events import Direction, FollowOutcome, follow_id
from passerelle_contracts.rpc import MatchState, TrustLevel
from passerelle_matching.edges import SEGMENT_MAX_POSTINGS, EdgeBatch, EdgeLayout, layout_for
from passerelle_matching.ids import claim_to_db, from_db
from passerelle_matching.models import (
    CLAIMED,
    DIRECTION_BITS,
    DISPUTED,
    FOLLOWER,
    FOLLOWING,
    NETWORK_CODES,
    NETWORK_NAMES,
    PENDING,
    PROPOSED,
    REQUESTED,
    SELECTED,
    STATE_CODES,
    STATE_NAMES,
    UNACTED,
    VERIFIED,
    codes,
)
from passerelle_matching.rules import result_target, selection_target, trusted

#: PostgreSQL advisory lock key serialising the service's writes (b"match" as an int).
ADVISORY_LOCK = 0x6D61746368


@dataclass(frozen=True)
class Archive:
    """What the store needs of an ``archive.imported`` event."""

    person_id: str
    region: str
    import_id: str
    sent_at: float
    x_account_id: str
    x_username: str


@dataclass
class Scope:
    """Which people's matches an operation may have turned into follow requests."""

    owners: set[int] = field(default_factory=set)
    targets: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.owners or self.targets)


class FollowToRequest(NamedTuple):
    """An outbox row, with everything the ``follow.requested`` message needs.

    A named tuple: a newcomer makes thousands at once, and a frozen dataclass takes
    twice as long to build (``object.__setattr__`` per field)."""

    person_key: int
    network_code: int
    target_key: int
    person_id: str
    actor: str
    target: str
    target_x_id: str
    directions: tuple[Direction, ...]

    @property
    def network(self) -> Network:
        return NETWORK_NAMES[self.network_code]

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.person_key, self.network_code, self.target_key)

    @property
    def follow_id(self) -> str:
        return follow_id(self.person_id, self.network, self.target)


@dataclass(frozen=True)
class Outcome:
    """What an event did: ``applied`` is False for stale, duplicate or erased ones."""

    applied: bool
    scope: Scope = field(default_factory=Scope)
    detail: str = ""
    ready: tuple[FollowToRequest, ...] = ()
    """Follow requests of ``scope`` to publish, when read in the event's transaction."""
    complete: bool = False
    """``ready`` holds every pending request of ``scope`` (no need to look again)."""


@dataclass(frozen=True)
class ListedMatch:
    """One row of a match list."""

    target: str
    handle: str
    directions: tuple[Direction, ...]
    state: MatchState
    trust: TrustLevel
    reason: str | None


_ALL_DIRECTIONS = sum(DIRECTION_BITS.values())
#: Every mask's directions, computed once: thousands are read per newcomer.
_DIRECTIONS_OF_MASK = {
    mask: tuple(d for d, bit in DIRECTION_BITS.items() if mask & bit)
    for mask in range(_ALL_DIRECTIONS + 1)
}


def directions_of(mask: int) -> tuple[Direction, ...]:
    """``3`` → ``("following", "follower")`` (bits other than the directions' ignored)."""
    return _DIRECTIONS_OF_MASK[mask & _ALL_DIRECTIONS]


def tombstone_digest(person_id: str) -> str:
    """What is kept of an erased person: a one-way digest of their id."""
    return stable_id("matching-erased", person_id)


#: How people of other regions (federation's directory) are known here.
REMOTE_PREFIX = "federation:"


def remote_person_id(region: str, key: str) -> str:
    """How a person of another region is known here."""
    return f"{REMOTE_PREFIX}{region}:{key}"


def is_remote(person_id: str) -> bool:
    return person_id.startswith(REMOTE_PREFIX)


class MatchingStore:
    """The matching service's data and rules (synchronous; call from a thread)."""

    def __init__(
        self,
        engine: Engine,
        *,
        trust_archive_claims: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.edges: EdgeLayout = layout_for(self.dialect)
        self.trust_archive_claims = trust_archive_claims
        self.clock = clock
        self._lock = threading.Lock()
        self._writer: Connection | None = None
        levels: tuple[TrustLevel, ...] = (VERIFIED, CLAIMED, DISPUTED)
        allowed = [x for x in levels if trusted(x, trust_archive_claims=trust_archive_claims)]
        self._trusted_sql = "t.trust IN (" + ",".join(f"'{x}'" for x in allowed) + ")"

    # --- transactions ----------------------------------------------------------------

    @contextmanager
    def _write(self, *, lock: bool = True) -> Iterator[Connection]:
        """One write transaction at a time, on a connection kept for writing.

        Writes are serialised anyway, so one connection serves them all and no
        pool checkout (with its liveness ping) is paid per event. A connection
        that fails is dropped; the next write opens a new one. ``lock=False``:
        the first statement takes the advisory lock itself.
        """
        with self._lock:
            if self._writer is None or self._writer.invalidated or self._writer.closed:
                self._writer = self.engine.connect()
            connection = self._writer
            try:
                with connection.begin():
                    if lock and self.dialect == "postgresql":
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK}
                        )
                    yield connection
            except DBAPIError:
                with contextlib.suppress(Exception):
                    connection.close()
                self._writer = None
                raise

    def close(self) -> None:
        """Give the writing connection back (the engine is the caller's)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # --- the directory ---------------------------------------------------------------

    def _lookup(self, c: Connection, person_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(erased?, the directory row or ``None``), in one round trip."""
        row = (
            c.execute(
                text(
                    "SELECT (SELECT 1 FROM matching_tombstone WHERE person_digest = :d) AS erased,"
                    " p.* FROM (SELECT 1 AS one) x"
                    " LEFT JOIN matching_person p ON p.person_id = :pid"
                ),
                {"pid": person_id, "d": tombstone_digest(person_id)},
            )
            .mappings()
            .one()
        )
        person = dict(row)
        erased = person.pop("erased") is not None
        person.pop("one", None)
        return erased, (person if person["person_key"] is not None else None)

    def _ensure_person(self, c: Connection, person_id: str, region: str) -> dict[str, Any] | None:
        """The person's directory row, created if needed; ``None`` if they were erased."""
        erased, person = self._lookup(c, person_id)
        if erased:
            return None
        if person is not None:
            return person
        now = self.clock()
        row = (
            c.execute(
                text(
                    "INSERT INTO matching_person (person_id, region, x_verified, trust,"
                    " consent_matching, consent_auto_follow, consent_notifications,"
                    " consent_revision, created_at, updated_at)"
                    " VALUES (:pid, :region, false, :claimed, false, false, false, -1, :now, :now)"
                    " RETURNING *"
                ),
                {"pid": person_id, "region": region, "claimed": CLAIMED, "now": now},
            )
            .mappings()
            .one()
        )
        return dict(row)

    def _recompute_trust(self, c: Connection, x_id: int | None) -> list[tuple[int, bool]]:
        """Trust of everyone claiming an X id; returns their (key, consents to matching)."""
        if x_id is None:
            return []
        rows = c.execute(
            text(
                "UPDATE matching_person SET trust = CASE"
                " WHEN x_verified THEN :verified"
                " WHEN (SELECT count(*) FROM matching_person q"
                "       WHERE q.x_id = matching_person.x_id) > 1 THEN :disputed"
                " ELSE :claimed END"
                " WHERE x_id = :x RETURNING person_key, consent_matching"
            ),
            {"verified": VERIFIED, "disputed": DISPUTED, "claimed": CLAIMED, "x": x_id},
        )
        return [(int(r[0]), bool(r[1])) for r in rows]

    def _refresh_claimants(
        self, c: Connection, *x_ids: int | None, refresh: bool = True
    ) -> set[int]:
        """Recompute the trust of everyone claiming these X ids, then (``refresh``) the
        matches towards them (a claim that stands alone again may now be followed).
        Returns their keys."""
        keys: set[int] = set()
        for x_id in dict.fromkeys(x_ids):
            for target, consenting in self._recompute_trust(c, x_id):
                if refresh:
                    self._refresh_target(c, target, x_id, consenting=consenting)
                keys.add(target)
        return keys

    def _next_import_key(self, c: Connection) -> int:
        value = c.execute(
            text(
                "UPDATE matching_sequence SET value = value + 1 WHERE name = 'import_key'"
                " RETURNING value"
            )
        ).scalar_one()
        return int(value)

    # --- deriving matches ------------------------------------------------------------

    def _derived(self, edges: str, where: str) -> str:
        """The matches the edges in ``edges`` justify, filtered by ``where``.

        Columns: person_key, network, target_key, then :func:`_match_columns`.
        """
        return (
            "SELECT o.person_key AS person_key, a.network AS network,"
            " t.person_key AS target_key,"
            f" {_match_columns(self._trusted_sql, 'a.account')}"
            f" FROM {edges} e"
            " JOIN matching_person o ON o.import_key = e.import_key"
            " JOIN matching_person t ON t.x_id = e.x_id"
            " JOIN matching_account a ON a.person_key = t.person_key AND a.account IS NOT NULL"
            " LEFT JOIN matching_account oa ON oa.person_key = o.person_key"
            "  AND oa.network = a.network AND oa.account IS NOT NULL"
            f" WHERE t.consent_matching AND t.person_key <> o.person_key AND ({where})"
            " GROUP BY o.person_key, a.network, t.person_key"
        )

    _INSERT = (
        "INSERT INTO matching_match (person_key, network, target_key, directions, state,"
        " reason, target_account, pending, created_at, updated_at)"
        " SELECT d.person_key, d.network, d.target_key, d.directions, d.state, NULL,"
        f" d.target_account, d.state = {REQUESTED}, :now, :now"
    )

    def _upsert(self, derived: str, *, order: bool = False) -> str:
        """Insert new matches, update directions, promote to ``requested`` when due."""
        promote = (
            f"matching_match.state IN ({SELECTED},{PROPOSED}) AND excluded.state = {REQUESTED}"
        )
        order_by = " ORDER BY d.person_key, d.network, d.target_key" if order else ""
        return (
            self._INSERT + f" FROM ({derived}) d WHERE true{order_by}"
            " ON CONFLICT (person_key, network, target_key) DO UPDATE SET"
            " directions = excluded.directions,"
            f" state = CASE WHEN {promote} THEN {REQUESTED} ELSE matching_match.state END,"
            f" pending = CASE WHEN {promote} THEN true ELSE matching_match.pending END,"
            f" target_account = CASE WHEN {promote} THEN excluded.target_account"
            " ELSE matching_match.target_account END,"
            " updated_at = excluded.updated_at"
            f" WHERE matching_match.directions <> excluded.directions OR ({promote})"
        )

    def _refresh_owner(
        self,
        c: Connection,
        person_key: int,
        import_key: int | None,
        *,
        prune: bool = False,
        network: int | None = None,
    ) -> None:
        """Re-derive the matches of one person's own archive (and drop stale unacted ones)."""
        params = {"import_key": -1 if import_key is None else import_key, "p": person_key}
        where = "o.person_key = :p"
        if network is not None:
            where += " AND a.network = :n"
            params["n"] = network
        derived = self._derived(self.edges.of_import(), where)
        if prune:
            c.execute(
                text(
                    "DELETE FROM matching_match WHERE person_key = :p"
                    f" AND state IN ({codes(UNACTED)}) AND (network, target_key) NOT IN"
                    f" (SELECT network, target_key FROM ({derived}) d)"
                ),
                params,
            )
        if import_key is not None:
            c.execute(text(self._upsert(derived)), {**params, "now": self.clock()})

    def _promote_owner(
        self, c: Connection, person_key: int, network: int | None = None, *, returning: bool = False
    ) -> list[Row[Any]]:
        """A person who consents to auto-follow can now follow as themself (they linked
        an account, or gave that consent): their proposed and selected matches towards
        trusted targets become requests.

        Their own matches are already there, derived when their archive or their
        targets arrived; linking changes none of them but this, so they are updated in
        place (an index range of the person's matches) rather than derived again from
        every edge of their archive. With ``returning`` (PostgreSQL), the requests made
        due come back with what they need (the columns :meth:`_pending` reads).
        """
        on_network = "" if network is None else " AND matching_match.network = :n"
        statement = (
            f"UPDATE matching_match SET state = {REQUESTED}, pending = true,"
            " target_account = a.account, updated_at = :now"
            " FROM matching_person o, matching_account oa, matching_person t,"
            " matching_account a"
            f" WHERE matching_match.person_key = :p{on_network}"
            f" AND matching_match.state IN ({SELECTED},{PROPOSED})"
            " AND o.person_key = :p AND o.consent_auto_follow"
            " AND oa.person_key = :p AND oa.network = matching_match.network"
            " AND oa.account IS NOT NULL"
            " AND t.person_key = matching_match.target_key AND t.consent_matching"
            f" AND {self._trusted_sql}"
            " AND a.person_key = t.person_key AND a.network = matching_match.network"
            " AND a.account IS NOT NULL"
        )
        if returning:
            statement += (
                " RETURNING matching_match.person_key, matching_match.network,"
                " matching_match.target_key, o.person_id, oa.account AS actor,"
                " matching_match.target_account, t.x_id, matching_match.directions"
            )
        result = c.execute(text(statement), {"p": person_key, "n": network, "now": self.clock()})
        return list(result) if returning else []

    def _refresh_target(
        self,
        c: Connection,
        person_key: int,
        x_id: int | None,
        *,
        consenting: bool,
        network: int | None = None,
    ) -> None:
        """Find everyone whose own edges point at this person (an indexed lookup)."""
        if x_id is None or not consenting:
            return
        params: dict[str, Any] = {
            "x_id": x_id,
            "t": person_key,
            "now": self.clock(),
        }
        where = "t.person_key = :t"
        if network is not None:
            where += " AND a.network = :n"
            params["n"] = network
        derived = self._derived(self.edges.pointing_at(), where)
        c.execute(text(self._upsert(derived)), params)

    def _refresh_newcomer(
        self, c: Connection, person: dict[str, Any], network: int, account: str
    ) -> list[Row[Any]]:
        """:meth:`_refresh_target` for a person who just linked ``account`` on one
        network, returning the requests it made due (PostgreSQL).

        Their own row, trust and account are known: only the people whose edges
        point at them are looked up, and what their requests need (their person id,
        their own account there) comes back with the rows the upsert returns, not
        from a second read of the outbox.
        """
        x_id = person["x_id"]
        if x_id is None or not bool(person["consent_matching"]):
            return []
        level = cast("TrustLevel", person["trust"])
        followable = trusted(level, trust_archive_claims=self.trust_archive_claims)
        towards = (
            "SELECT o.person_key, CAST(:n AS smallint) AS network,"
            " CAST(:t AS integer) AS target_key,"
            f" {_match_columns(str(followable), 'CAST(:account AS varchar)')},"
            " MAX(o.person_id) AS person_id, MAX(oa.account) AS actor"
            f" FROM {self.edges.pointing_at()} e"
            " JOIN matching_person o ON o.import_key = e.import_key"
            " LEFT JOIN matching_account oa ON oa.person_key = o.person_key"
            "  AND oa.network = :n AND oa.account IS NOT NULL"
            " WHERE o.person_key <> :t GROUP BY o.person_key"
        )
        return list(
            c.execute(
                text(
                    f"WITH towards AS MATERIALIZED ({towards}),"
                    f" changed AS ({self._upsert('SELECT * FROM towards')}"
                    " RETURNING matching_match.person_key, matching_match.network,"
                    " matching_match.target_key, matching_match.target_account,"
                    " matching_match.directions, matching_match.pending)"
                    " SELECT m.person_key, m.network, m.target_key, d.person_id, d.actor,"
                    " m.target_account, CAST(:x_id AS bigint) AS x_id, m.directions"
                    " FROM changed m JOIN towards d ON d.person_key = m.person_key"
                    " WHERE m.pending"
                ),
                {
                    "x_id": x_id,
                    "t": int(person["person_key"]),
                    "n": network,
                    "account": account,
                    "now": self.clock(),
                },
            )
        )

    def _drop_towards(self, c: Connection, person_key: int, network: int | None = None) -> None:
        """Remove the unacted matches others have towards this person (on one network)."""
        on_network = "" if network is None else " AND network = :n"
        c.execute(
            text(
                "DELETE FROM matching_match WHERE target_key = :t"
                f" AND state IN ({codes(UNACTED)}){on_network}"
            ),
            {"t": person_key, "n": network},
        )

    # --- events ----------------------------------------------------------------------

    def archive_is_current(self, person_id: str, import_id: str, sent_at: float) -> bool:
        """Whether an ``archive.imported`` still deserves loading (cheap, read-only)."""
        with self.engine.connect() as c:
            erased, person = self._lookup(c, person_id)
        if erased:
            return False
        return _newer_import(person, import_id, sent_at)

    def import_archive(
        self, archive: Archive, batches: Iterable[EdgeBatch], *, match: bool = True
    ) -> Outcome:
        """Replace a person's edges with an archive's, atomically, and match them.

        ``batches`` are ascending unsigned X ids per direction (as decoded from
        the payloads); self-follows are dropped. With ``match=False`` only the
        edges and the claim are stored (the benchmark's bulk load, followed by
        :meth:`match_all`). One archive of :meth:`import_archives`.
        """
        return self.import_archives([(archive, batches)], match=match)[0]

    def import_archives(
        self, archives: Sequence[tuple[Archive, Iterable[EdgeBatch]]], *, match: bool = True
    ) -> list[Outcome]:
        """Several archives in one transaction (the batched intake of ``archive.imported``).

        Each archive does exactly what :meth:`import_archive` would alone, in the
        order given: it replaces only its own person's edges, an erased person's or
        an older import is refused (its outcome says why, the others go on), and a
        later archive of the same person in the batch replaces an earlier one.
        All of them commit together or not at all. On PostgreSQL the bookkeeping
        of a group of distinct people is one statement and their runs one
        ``COPY``: a transaction's round trips are paid once per batch, not per
        archive.
        """
        if not archives:
            return []
        if self.dialect != "postgresql":
            with self._write() as c:
                return [self._import_sqlite(c, a, b, match=match) for a, b in archives]
        outcomes: list[Outcome] = []
        with self._write(lock=False) as c:
            for group in _distinct_people(archives):
                outcomes.extend(self._import_postgres(c, group, match=match))
        return outcomes

    def _import_sqlite(
        self, c: Connection, archive: Archive, batches: Iterable[EdgeBatch], *, match: bool
    ) -> Outcome:
        claimed = claim_to_db(archive.x_account_id)
        person = self._ensure_person(c, archive.person_id, archive.region)
        if person is None:
            return Outcome(applied=False, detail="erased")
        if not _newer_import(person, archive.import_id, archive.sent_at):
            return Outcome(applied=False, detail="stale")
        key = int(person["person_key"])
        old_x, old_import = person["x_id"], person["import_key"]
        if old_import is not None:
            self.edges.delete(c, int(old_import))
        import_key = self._next_import_key(c)
        stored = self.edges.write(c, import_key, _without_self(batches, claimed))
        c.execute(
            text(
                "UPDATE matching_person SET x_id = :x, x_username = :username,"
                " import_key = :k, import_id = :iid, import_sent_at = :sent,"
                " updated_at = :now WHERE person_key = :p"
            ),
            {
                "x": claimed,
                "username": archive.x_username,
                "k": import_key,
                "iid": archive.import_id,
                "sent": archive.sent_at,
                "now": self.clock(),
                "p": key,
            },
        )
        if match:
            if old_x != claimed:
                self._drop_towards(c, key)
            self._refresh_owner(c, key, import_key, prune=old_import is not None)
        # Everyone claiming the new X id (the person too) or the old one: their
        # trust may have changed, and with it the matches towards them.
        claimants = self._refresh_claimants(c, claimed, old_x, refresh=match)
        scope = Scope(owners={key}, targets=claimants | {key})
        return Outcome(applied=True, scope=scope, detail=f"{stored} edges")

    def _import_postgres(
        self,
        c: Connection,
        group: Sequence[tuple[Archive, Iterable[EdgeBatch]]],
        *,
        match: bool,
    ) -> list[Outcome]:
        """The same as on SQLite for archives of distinct people, with the bookkeeping
        of each in the server-side ``matching_import_begin`` (migration 0004), called
        for the whole group in one statement, in order; then one ``COPY`` of every
        applied archive's runs."""
        claims = [claim_to_db(a.x_account_id) for a, _ in group]
        rows = c.execute(
            text(
                "SELECT b.* FROM unnest(CAST(:pids AS text[]), CAST(:digests AS text[]),"
                " CAST(:regions AS text[]), CAST(:iids AS text[]),"
                " CAST(:sents AS double precision[]), CAST(:xs AS bigint[]),"
                " CAST(:usernames AS text[]))"
                " WITH ORDINALITY AS a(pid, digest, region, iid, sent, x, username, ord)"
                " CROSS JOIN LATERAL matching_import_begin(:lock, a.pid, a.digest, a.region,"
                " a.iid, a.sent, a.x, a.username, :now, :claimed, :disputed, :verified) b"
                " ORDER BY a.ord"
            ),
            {
                "lock": ADVISORY_LOCK,
                "pids": [a.person_id for a, _ in group],
                "digests": [tombstone_digest(a.person_id) for a, _ in group],
                "regions": [a.region for a, _ in group],
                "iids": [a.import_id for a, _ in group],
                "sents": [a.sent_at for a, _ in group],
                "xs": claims,
                "usernames": [a.x_username for a, _ in group],
                "now": self.clock(),
                "claimed": CLAIMED,
                "disputed": DISPUTED,
                "verified": VERIFIED,
            },
        ).all()
        writes: list[tuple[int, Iterable[EdgeBatch]]] = []
        for (_, batches), claimed, row in zip(group, claims, rows, strict=True):
            if row.status == "applied":
                if row.old_import is not None:
                    self.edges.delete(c, int(row.old_import))
                writes.append((int(row.import_key), _without_self(batches, claimed)))
        stored = iter(self.edges.write_many(c, writes))
        outcomes: list[Outcome] = []
        for claimed, row in zip(claims, rows, strict=True):
            if row.status != "applied":
                outcomes.append(Outcome(applied=False, detail=str(row.status)))
                continue
            key, import_key = int(row.person_key), int(row.import_key)
            claimants = [int(k) for k in row.claimants]
            if match:
                if row.old_x != claimed:
                    self._drop_towards(c, key)
                self._refresh_owner(c, key, import_key, prune=row.old_import is not None)
                for target, consenting, x_id in zip(
                    claimants, row.consenting, row.claimed_x, strict=True
                ):
                    self._refresh_target(c, target, int(x_id), consenting=bool(consenting))
            scope = Scope(owners={key}, targets=set(claimants) | {key})
            outcomes.append(Outcome(applied=True, scope=scope, detail=f"{next(stored)} edges"))
        return outcomes

    def link_identity(
        self,
        person_id: str,
        region: str,
        network: Network,
        account: str,
        handle: str,
        sent_at: float,
        *,
        pending_limit: int = 500,
    ) -> Outcome:
        """A person proved an account on a network: they become findable there.

        The outcome carries the follow requests to publish: on PostgreSQL every one
        the link made due (``complete`` unless others of the person's were waiting
        already); on SQLite those of the outbox, up to ``pending_limit``."""
        n = NETWORK_CODES[network]
        with self._write() as c:
            person = self._ensure_person(c, person_id, region)
            if person is None:
                return Outcome(applied=False, detail="erased")
            key = int(person["person_key"])
            row = c.execute(
                text(
                    "SELECT account, event_at FROM matching_account"
                    " WHERE person_key = :p AND network = :n"
                ),
                {"p": key, "n": n},
            ).first()
            if row is not None and float(row.event_at) > sent_at:
                return Outcome(applied=False, detail="stale")
            if row is not None and row.account not in (None, account):
                # Another account on the same network: unacted matches towards the old
                # one are re-derived for the new one (requested ones keep their target).
                self._drop_towards(c, key, n)
            c.execute(
                text(
                    "INSERT INTO matching_account (person_key, network, account, handle, event_at)"
                    " VALUES (:p, :n, :account, :handle, :at)"
                    " ON CONFLICT (person_key, network) DO UPDATE SET account = excluded.account,"
                    " handle = excluded.handle, event_at = excluded.event_at"
                ),
                {"p": key, "n": n, "account": account, "handle": handle, "at": sent_at},
            )
            # Everyone waiting for this person on this network; and this person's own
            # matches there, which may now be followed (they have an actor).
            scope = Scope(owners={key}, targets={key})
            if self.dialect != "postgresql":
                consenting = bool(person["consent_matching"])
                self._refresh_target(c, key, person["x_id"], consenting=consenting, network=n)
                self._promote_owner(c, key, network=n)
                return self._with_pending(c, Outcome(applied=True, scope=scope), pending_limit)
            # The requests this link makes due come back from the statements that make
            # them (a newcomer awaited by thousands is not read back from the outbox);
            # requests of theirs already waiting are read after, as for other events.
            waiting = self._has_pending(c, key)
            rows = self._refresh_newcomer(c, person, n, account)
            rows += self._promote_owner(c, key, network=n, returning=True)
            ready, orphans = _follows_to_request(rows)
            return Outcome(
                applied=True, scope=scope, ready=tuple(ready), complete=not (waiting or orphans)
            )

    def unlink_identity(
        self, person_id: str, network: Network, account: str, sent_at: float
    ) -> Outcome:
        """A link ended: no more proposals towards that account, no more requests from it."""
        n = NETWORK_CODES[network]
        with self._write() as c:
            _, person = self._lookup(c, person_id)
            if person is None:
                return Outcome(applied=False, detail="unknown")
            key = int(person["person_key"])
            row = c.execute(
                text(
                    "SELECT account, event_at FROM matching_account"
                    " WHERE person_key = :p AND network = :n"
                ),
                {"p": key, "n": n},
            ).first()
            if row is None or row.account != account or float(row.event_at) > sent_at:
                return Outcome(applied=False, detail="stale")
            c.execute(
                text(
                    "UPDATE matching_account SET account = NULL, handle = NULL, event_at = :at"
                    " WHERE person_key = :p AND network = :n"
                ),
                {"p": key, "n": n, "at": sent_at},
            )
            self._drop_towards(c, key, n)
            # Requests not yet published fall back to the selection.
            c.execute(
                text(
                    f"UPDATE matching_match SET state = {SELECTED}, pending = false,"
                    " target_account = NULL, updated_at = :now"
                    " WHERE person_key = :p AND network = :n AND pending"
                ),
                {"p": key, "n": n, "now": self.clock()},
            )
            return Outcome(applied=True)

    def change_consent(
        self,
        person_id: str,
        region: str,
        *,
        matching: bool,
        auto_follow: bool,
        notifications: bool,
        revision: int,
    ) -> Outcome:
        """Apply a person's consents (the whole set) unless a newer revision is known."""
        with self._write() as c:
            person = self._ensure_person(c, person_id, region)
            if person is None:
                return Outcome(applied=False, detail="erased")
            if revision <= int(person["consent_revision"]):
                return Outcome(applied=False, detail="stale")
            key = int(person["person_key"])
            c.execute(
                text(
                    "UPDATE matching_person SET consent_matching = :m, consent_auto_follow = :a,"
                    " consent_notifications = :nt, consent_revision = :r, updated_at = :now"
                    " WHERE person_key = :p"
                ),
                {
                    "m": matching,
                    "a": auto_follow,
                    "nt": notifications,
                    "r": revision,
                    "now": self.clock(),
                    "p": key,
                },
            )
            scope = Scope()
            was_matching = bool(person["consent_matching"])
            if was_matching and not matching:
                self._drop_towards(c, key)
            if matching and not was_matching:
                self._refresh_target(c, key, person["x_id"], consenting=True)
                scope.targets.add(key)
            if auto_follow and not bool(person["consent_auto_follow"]):
                self._promote_owner(c, key)
                scope.owners.add(key)
            return Outcome(applied=True, scope=scope)

    def record_result(
        self,
        person_id: str,
        network: Network,
        target: str,
        follow: str,
        outcome: FollowOutcome,
        reason: str | None,
    ) -> bool:
        """Move a requested match to what became of it."""
        if follow != follow_id(person_id, network, target):
            return False
        state = STATE_CODES[outcome]
        # States a result does not move (``rules.result_target``): none, or the successes.
        kept = [c for s, c in STATE_CODES.items() if result_target(s, outcome) == s != outcome]
        keep = codes(tuple(kept)) if kept else "-1"
        with self._write() as c:
            changed = c.execute(
                text(
                    "UPDATE matching_match SET state = :s, reason = :reason, pending = false,"
                    " updated_at = :now"
                    " WHERE person_key = (SELECT person_key FROM matching_person"
                    "                     WHERE person_id = :pid)"
                    f" AND network = :n AND target_account = :target AND state NOT IN ({keep})"
                ),
                {
                    "s": state,
                    "reason": reason,
                    "now": self.clock(),
                    "pid": person_id,
                    "n": NETWORK_CODES[network],
                    "target": target,
                },
            ).rowcount
        return bool(changed)

    def erase(self, person_id: str) -> Outcome:
        """Forget a person: edges, directory entry, their matches and those towards them."""
        with self._write() as c:
            c.execute(
                text(
                    "INSERT INTO matching_tombstone (person_digest, erased_at) VALUES (:d, :now)"
                    " ON CONFLICT (person_digest) DO NOTHING"
                ),
                {"d": tombstone_digest(person_id), "now": self.clock()},
            )
            _, person = self._lookup(c, person_id)
            if person is None:
                return Outcome(applied=False, detail="unknown")
            key = int(person["person_key"])
            if person["import_key"] is not None:
                self.edges.delete(c, int(person["import_key"]))
            c.execute(
                text("DELETE FROM matching_match WHERE person_key = :p OR target_key = :p"),
                {"p": key},
            )
            c.execute(text("DELETE FROM matching_account WHERE person_key = :p"), {"p": key})
            c.execute(text("DELETE FROM matching_person WHERE person_key = :p"), {"p": key})
            others = self._refresh_claimants(c, person["x_id"])
            return Outcome(applied=True, scope=Scope(targets=others))

    def match_all(self) -> int:
        """Derive every match from every edge at once (a rebuild; the benchmark's full match).

        Returns how many matches exist afterwards. Unacted matches no longer
        justified are removed; acted ones keep their state.
        """
        derived = self._derived(self.edges.everything(), "true")
        with self._write() as c:
            empty = c.execute(text("SELECT 1 FROM matching_match LIMIT 1")).first() is None
            if empty and self.dialect == "postgresql":
                # A first build: one plain insert in key order (nothing to conflict
                # with: the GROUP BY makes the keys unique), every index — the
                # primary key too — built afterwards, in bulk.
                c.execute(text("SET LOCAL work_mem = '256MB'"))
                c.execute(text("DROP INDEX IF EXISTS ix_matching_match_target"))
                c.execute(text("DROP INDEX IF EXISTS ix_matching_match_pending"))
                c.execute(text("DROP INDEX IF EXISTS ix_matching_match_pending_target"))
                c.execute(text("ALTER TABLE matching_match DROP CONSTRAINT matching_match_pkey"))
                c.execute(
                    text(
                        self._INSERT + f" FROM ({derived}) d"
                        " ORDER BY d.person_key, d.network, d.target_key"
                    ),
                    {"now": self.clock()},
                )
                c.execute(
                    text(
                        "ALTER TABLE matching_match ADD CONSTRAINT matching_match_pkey"
                        " PRIMARY KEY (person_key, network, target_key)"
                    )
                )
                c.execute(
                    text(
                        "CREATE INDEX ix_matching_match_target"
                        " ON matching_match (target_key, network)"
                    )
                )
                for name, column in (("pending", "person_key"), ("pending_target", "target_key")):
                    c.execute(
                        text(
                            f"CREATE INDEX ix_matching_match_{name}"
                            f" ON matching_match ({column}) WHERE {PENDING}"
                        )
                    )
                c.execute(text("ANALYZE matching_match"))
            else:
                c.execute(text("CREATE TEMPORARY TABLE matching_derived AS " + derived))
                c.execute(
                    text(
                        "DELETE FROM matching_match"
                        f" WHERE state IN ({codes(UNACTED)}) AND NOT EXISTS"
                        " (SELECT 1 FROM matching_derived d"
                        "  WHERE d.person_key = matching_match.person_key"
                        "  AND d.network = matching_match.network"
                        "  AND d.target_key = matching_match.target_key)"
                    )
                )
                c.execute(
                    text(self._upsert("SELECT * FROM matching_derived", order=True)),
                    {"now": self.clock()},
                )
                c.execute(text("DROP TABLE matching_derived"))
            return int(c.execute(text("SELECT count(*) FROM matching_match")).scalar_one())

    # --- the outbox ------------------------------------------------------------------

    def pending_requests(self, scope: Scope | None, limit: int = 500) -> list[FollowToRequest]:
        """Follow requests to publish (in ``scope``, or anywhere); drops orphaned ones.

        A request whose person has since unlinked the network goes back to
        ``selected`` (there is no actor to follow with).
        """
        with self.engine.connect() as c:
            ready, orphans = self._pending(c, scope, limit)
        if orphans:
            with self._write() as c:
                self._drop_orphans(c, orphans)
        return ready

    def _pending(
        self, c: Connection, scope: Scope | None, limit: int
    ) -> tuple[list[FollowToRequest], list[dict[str, int]]]:
        params: dict[str, Any] = {"limit": limit}
        expanding: list[BindParameter[Any]] = []
        if scope is None:
            keys = f"SELECT person_key, network, target_key FROM matching_match WHERE {PENDING}"
        else:
            # Two index scans (by person, by target) rather than one OR that would
            # walk every pending row.
            keys = (
                "SELECT person_key, network, target_key FROM matching_match"
                f" WHERE {PENDING} AND person_key IN :owners"
                " UNION SELECT person_key, network, target_key FROM matching_match"
                f" WHERE {PENDING} AND target_key IN :targets"
            )
            params["owners"] = sorted(scope.owners) or [-1]
            params["targets"] = sorted(scope.targets) or [-1]
            expanding = [bindparam("owners", expanding=True), bindparam("targets", expanding=True)]
        statement = text(
            "SELECT m.person_key, m.network, m.target_key, p.person_id, oa.account AS actor,"
            " m.target_account, t.x_id, m.directions"
            f" FROM ({keys} LIMIT :limit) k"
            " JOIN matching_match m ON m.person_key = k.person_key"
            "  AND m.network = k.network AND m.target_key = k.target_key"
            " JOIN matching_person p ON p.person_key = m.person_key"
            " JOIN matching_person t ON t.person_key = m.target_key"
            " LEFT JOIN matching_account oa ON oa.person_key = m.person_key"
            "  AND oa.network = m.network AND oa.account IS NOT NULL"
        ).bindparams(*expanding)
        return _follows_to_request(c.execute(statement, params).all())

    def _has_pending(self, c: Connection, person_key: int) -> bool:
        """Whether requests from or towards this person wait in the outbox."""
        return bool(
            c.execute(
                text(
                    f"SELECT EXISTS (SELECT 1 FROM matching_match WHERE {PENDING}"
                    " AND person_key = :p) OR EXISTS (SELECT 1 FROM matching_match"
                    f" WHERE {PENDING} AND target_key = :p)"
                ),
                {"p": person_key},
            ).scalar_one()
        )

    def _drop_orphans(self, c: Connection, orphans: list[dict[str, int]]) -> None:
        c.execute(
            text(
                f"UPDATE matching_match SET state = {SELECTED}, pending = false,"
                " target_account = NULL"
                " WHERE person_key = :p AND network = :n AND target_key = :t AND pending"
            ),
            orphans,
        )

    def _with_pending(self, c: Connection, outcome: Outcome, limit: int) -> Outcome:
        """The outcome, with the follow requests its scope has to publish read in the
        same transaction (one round trip less for the caller than
        :meth:`pending_requests` afterwards)."""
        ready, orphans = self._pending(c, outcome.scope, limit)
        if orphans:
            self._drop_orphans(c, orphans)
        return Outcome(
            applied=outcome.applied,
            scope=outcome.scope,
            detail=outcome.detail,
            ready=tuple(ready),
            complete=len(ready) + len(orphans) < limit,
        )

    def mark_published(self, keys: Sequence[tuple[int, int, int]]) -> None:
        """The follow requests for these matches reached the stream."""
        if not keys:
            return
        with self.engine.begin() as c:
            if self.dialect == "postgresql":
                # One statement for the whole batch.
                persons, networks, targets = (list(column) for column in zip(*keys, strict=True))
                c.execute(
                    text(
                        "UPDATE matching_match m SET pending = false"
                        " FROM unnest(CAST(:p AS integer[]), CAST(:n AS smallint[]),"
                        "  CAST(:t AS integer[])) AS k(person_key, network, target_key)"
                        " WHERE m.person_key = k.person_key AND m.network = k.network"
                        " AND m.target_key = k.target_key"
                    ),
                    {"p": persons, "n": networks, "t": targets},
                )
                return
            c.execute(
                text(
                    "UPDATE matching_match SET pending = false"
                    " WHERE person_key = :p AND network = :n AND target_key = :t"
                ),
                [{"p": p, "n": n, "t": t} for p, n, t in keys],
            )

    # --- what the edge asks ----------------------------------------------------------

    def summary(self, person_id: str) -> list[tuple[Network, Direction, MatchState, int]]:
        """Counts per network, direction and state (a mutual match counts in both)."""
        with self.engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT m.network, m.directions, m.state, count(*) AS n"
                    " FROM matching_match m JOIN matching_person p ON p.person_key = m.person_key"
                    " WHERE p.person_id = :pid GROUP BY m.network, m.directions, m.state"
                ),
                {"pid": person_id},
            ).all()
        counts: dict[tuple[Network, Direction, MatchState], int] = {}
        for r in rows:
            for direction in directions_of(int(r.directions)):
                cell = (NETWORK_NAMES[int(r.network)], direction, STATE_NAMES[int(r.state)])
                counts[cell] = counts.get(cell, 0) + int(r.n)
        return [(*cell, n) for cell, n in sorted(counts.items())]

    def totals(self) -> list[tuple[Network, tuple[Direction, ...], MatchState, int]]:
        """Matches of everyone, per network, directions and state (for the metrics)."""
        with self.engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT network, directions, state, count(*) AS n"
                    " FROM matching_match GROUP BY network, directions, state"
                )
            ).all()
        return [
            (
                NETWORK_NAMES[int(r.network)],
                directions_of(int(r.directions)),
                STATE_NAMES[int(r.state)],
                int(r.n),
            )
            for r in rows
        ]

    _LIST_FROM = (
        " FROM matching_match m"
        " JOIN matching_person p ON p.person_key = m.person_key"
        " JOIN matching_person t ON t.person_key = m.target_key"
        " LEFT JOIN matching_account a ON a.person_key = m.target_key"
        "  AND a.network = m.network AND a.account IS NOT NULL"
    )
    _TARGET = "COALESCE(m.target_account, a.account)"
    _HANDLE = (
        "CASE WHEN m.target_account IS NULL OR m.target_account = a.account"
        " THEN COALESCE(a.handle, a.account) ELSE m.target_account END"
    )

    def list_matches(
        self,
        person_id: str,
        network: Network,
        *,
        direction: Direction | None = None,
        states: Sequence[MatchState] = (),
        search: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[ListedMatch]]:
        """One page of a person's matches on a network, and the total for the filter.

        Mutual matches first, then by handle; ``search`` is a case-insensitive
        substring of the handle or the account.
        """
        where = ["p.person_id = :pid", "m.network = :n"]
        params: dict[str, Any] = {"pid": person_id, "n": NETWORK_CODES[network]}
        expanding: list[BindParameter[Any]] = []
        if direction is not None:
            where.append("(m.directions & :bit) <> 0")
            params["bit"] = DIRECTION_BITS[direction]
        if states:
            where.append("m.state IN :states")
            params["states"] = sorted({STATE_CODES[s] for s in states})
            expanding.append(bindparam("states", expanding=True))
        if search:
            pattern = (
                "%"
                + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            where.append(
                f"(lower({self._HANDLE}) LIKE :q ESCAPE '\\'"
                f" OR lower({self._TARGET}) LIKE :q ESCAPE '\\')"
            )
            params["q"] = pattern
        condition = " WHERE " + " AND ".join(where)
        count_sql = text("SELECT count(*)" + self._LIST_FROM + condition).bindparams(*expanding)
        page_sql = text(
            f"SELECT {self._TARGET} AS target, {self._HANDLE} AS handle, m.directions,"
            " m.state, m.reason, t.trust"
            + self._LIST_FROM
            + condition
            + f" ORDER BY CASE WHEN m.directions = {FOLLOWING | FOLLOWER} THEN 0 ELSE 1 END,"
            f" lower({self._HANDLE}), m.target_key LIMIT :limit OFFSET :offset"
        ).bindparams(*expanding)
        with self.engine.connect() as c:
            total = int(c.execute(count_sql, params).scalar_one())
            rows = c.execute(page_sql, {**params, "limit": limit, "offset": offset}).all()
        items = [
            ListedMatch(
                target=str(r.target),
                handle=str(r.handle),
                directions=directions_of(int(r.directions)),
                state=STATE_NAMES[int(r.state)],
                trust=cast(TrustLevel, r.trust),
                reason=r.reason,
            )
            for r in rows
        ]
        return total, items

    def select(
        self,
        person_id: str,
        network: Network,
        *,
        selected: bool,
        targets: Sequence[str] = (),
        all_in_direction: Direction | Literal["both"] | None = None,
    ) -> int:
        """Select (or decline) matches by target account, or all in a direction.

        Selecting moves ``proposed``/``declined`` to ``selected``; deselecting moves
        ``proposed``/``selected`` to ``declined`` (never auto-followed later).
        Selecting *all* leaves out disputed identities: those are picked one by one.
        """
        if not targets and all_in_direction is None:
            return 0
        n = NETWORK_CODES[network]
        new = STATE_CODES["selected" if selected else "declined"]
        old = tuple(
            c for s, c in STATE_CODES.items() if selection_target(s, selected=selected) is not None
        )
        chosen = [
            (
                "target_key IN (SELECT person_key FROM matching_account"
                " WHERE network = :n AND account IN :targets)"
            ),
            "target_account IN :targets",
        ]
        params: dict[str, Any] = {"n": n, "targets": list(targets) or [""], "now": self.clock()}
        if all_in_direction is not None:
            bits = (
                FOLLOWING | FOLLOWER
                if all_in_direction == "both"
                else DIRECTION_BITS[all_in_direction]
            )
            everything = f"(directions & {bits}) <> 0"
            if selected:
                everything += (
                    " AND target_key NOT IN (SELECT person_key FROM matching_person"
                    f" WHERE trust = '{DISPUTED}')"
                )
            chosen.append(everything)
        statement = text(
            f"UPDATE matching_match SET state = {new}, updated_at = :now"
            " WHERE person_key = (SELECT person_key FROM matching_person WHERE person_id = :pid)"
            f" AND network = :n AND state IN ({codes(old)}) AND ({' OR '.join(chosen)})"
        ).bindparams(bindparam("targets", expanding=True))
        with self._write() as c:
            return int(c.execute(statement, {**params, "pid": person_id}).rowcount)

    def request_follows(self, person_id: str, network: Network) -> Outcome:
        """Turn the person's selection on a network into follow requests."""
        n = NETWORK_CODES[network]
        with self._write() as c:
            _, person = self._lookup(c, person_id)
            if person is None:
                return Outcome(applied=False, detail="unknown")
            key = int(person["person_key"])
            actor = c.execute(
                text(
                    "SELECT account FROM matching_account"
                    " WHERE person_key = :p AND network = :n AND account IS NOT NULL"
                ),
                {"p": key, "n": n},
            ).scalar()
            if actor is None:
                return Outcome(applied=False, detail="not linked")
            target_account = (
                "(SELECT a.account FROM matching_account a"
                " WHERE a.person_key = matching_match.target_key"
                " AND a.network = matching_match.network AND a.account IS NOT NULL)"
            )
            changed = c.execute(
                text(
                    f"UPDATE matching_match SET state = {REQUESTED}, pending = true,"
                    f" target_account = {target_account}, updated_at = :now"
                    f" WHERE person_key = :p AND network = :n AND state = {SELECTED}"
                    f" AND {target_account} IS NOT NULL"
                ),
                {"p": key, "n": n, "now": self.clock()},
            ).rowcount
            return Outcome(applied=True, scope=Scope(owners={key}), detail=str(int(changed)))

    # --- other regions' directory (federation.py) ------------------------------------

    def directory_entries(
        self, region: str, person_ids: Iterable[str]
    ) -> dict[str, DirectoryEntry | None]:
        """What the directory should say of these local people (``None``: nothing)."""
        ids = sorted({p for p in person_ids if not is_remote(p)})
        out: dict[str, DirectoryEntry | None] = dict.fromkeys(ids)
        if not ids:
            return out
        statement = text(
            "SELECT p.person_id, p.x_id, p.trust, p.consent_matching,"
            " a.network, a.account, a.handle FROM matching_person p"
            " LEFT JOIN matching_account a ON a.person_key = p.person_key"
            "  AND a.account IS NOT NULL"
            " WHERE p.person_id IN :ids ORDER BY p.person_id, a.network"
        ).bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as c:
            rows = c.execute(statement, {"ids": ids}).all()
        found: dict[str, dict[str, Any]] = {}
        for r in rows:
            if not r.consent_matching or r.x_id is None or r.account is None:
                continue
            person = found.setdefault(
                str(r.person_id), {"x_id": from_db(int(r.x_id)), "trust": r.trust, "accounts": []}
            )
            person["accounts"].append(
                DirectoryAccount(
                    network=NETWORK_NAMES[int(r.network)],
                    account=str(r.account),
                    handle=str(r.handle or r.account),
                )
            )
        for person_id, person in found.items():
            out[person_id] = DirectoryEntry(
                region=region,
                key=directory_key(region, person_id),
                x_account_id=person["x_id"],
                trust=person["trust"],
                accounts=tuple(person["accounts"]),
            )
        return out

    def local_people(self, person_keys: Iterable[int]) -> list[str]:
        """The ids of the people of this region among these keys."""
        keys = sorted(set(person_keys))
        if not keys:
            return []
        statement = text(
            "SELECT person_id FROM matching_person WHERE person_key IN :keys"
        ).bindparams(bindparam("keys", expanding=True))
        with self.engine.connect() as c:
            ids = [str(r[0]) for r in c.execute(statement, {"keys": keys})]
        return [p for p in ids if not is_remote(p)]

    def apply_remote_entry(self, entry: DirectoryEntry) -> Outcome:
        """Another region's person, as a target of this region's people's matches."""
        person_id = remote_person_id(entry.region, entry.key)
        sent_at = entry.sent_at.timestamp()
        claimed = claim_to_db(entry.x_account_id)
        with self._write() as c:
            gone = c.execute(
                text("SELECT erased_at FROM matching_tombstone WHERE person_digest = :d"),
                {"d": tombstone_digest(person_id)},
            ).scalar()
            if gone is not None and float(gone) >= sent_at:
                return Outcome(applied=False, detail="erased")
            if gone is not None:  # withdrawn, and back since
                c.execute(
                    text("DELETE FROM matching_tombstone WHERE person_digest = :d"),
                    {"d": tombstone_digest(person_id)},
                )
            person = self._ensure_person(c, person_id, entry.region)
            assert person is not None  # no tombstone left (handled above)
            if person["import_sent_at"] is not None and float(person["import_sent_at"]) >= sent_at:
                return Outcome(applied=False, detail="stale")
            key, old_x = int(person["person_key"]), person["x_id"]
            c.execute(
                text(
                    "UPDATE matching_person SET x_id = :x, x_verified = :verified,"
                    " consent_matching = true, consent_auto_follow = false,"
                    " import_sent_at = :sent, updated_at = :now WHERE person_key = :p"
                ),
                {
                    "x": claimed,
                    "verified": entry.trust == VERIFIED,
                    "sent": sent_at,
                    "now": self.clock(),
                    "p": key,
                },
            )
            if old_x is not None and old_x != claimed:
                self._drop_towards(c, key)
            wanted = {NETWORK_CODES[a.network]: a for a in entry.accounts}
            held = {
                int(r.network): r.account
                for r in c.execute(
                    text("SELECT network, account FROM matching_account WHERE person_key = :p"),
                    {"p": key},
                )
            }
            for network in NETWORK_CODES.values():
                account = wanted.get(network)
                if held.get(network) is not None and (
                    account is None or account.account != held[network]
                ):
                    self._drop_towards(c, key, network)
                c.execute(
                    text(
                        "INSERT INTO matching_account"
                        " (person_key, network, account, handle, event_at)"
                        " VALUES (:p, :n, :account, :handle, :at)"
                        " ON CONFLICT (person_key, network) DO UPDATE SET"
                        " account = excluded.account, handle = excluded.handle,"
                        " event_at = excluded.event_at"
                    ),
                    {
                        "p": key,
                        "n": network,
                        "account": account.account if account else None,
                        "handle": account.handle if account else None,
                        "at": sent_at,
                    },
                )
            others = self._refresh_claimants(c, old_x, claimed)
            return Outcome(applied=True, scope=Scope(targets=others | {key}))

    def forget_remote(self, region: str, key: str, sent_at: float) -> Outcome:
        """Another region's person left: remove them and every match towards them."""
        person_id = remote_person_id(region, key)
        with self._write() as c:
            c.execute(
                text(
                    "INSERT INTO matching_tombstone (person_digest, erased_at) VALUES (:d, :at)"
                    " ON CONFLICT (person_digest) DO UPDATE SET erased_at = excluded.erased_at"
                    " WHERE matching_tombstone.erased_at < excluded.erased_at"
                ),
                {"d": tombstone_digest(person_id), "at": sent_at},
            )
            _, person = self._lookup(c, person_id)
            if person is None:
                return Outcome(applied=False, detail="unknown")
            if person["import_sent_at"] is not None and float(person["import_sent_at"]) > sent_at:
                return Outcome(applied=False, detail="stale")
            person_key = int(person["person_key"])
            c.execute(
                text("DELETE FROM matching_match WHERE person_key = :p OR target_key = :p"),
                {"p": person_key},
            )
            c.execute(text("DELETE FROM matching_account WHERE person_key = :p"), {"p": person_key})
            c.execute(text("DELETE FROM matching_person WHERE person_key = :p"), {"p": person_key})
            others = self._refresh_claimants(c, person["x_id"])
            return Outcome(applied=True, scope=Scope(targets=others))

    # --- the target index ------------------------------------------------------------

    def compact_edges(self) -> int:
        """Index the edges loaded since the last call (PostgreSQL's segments; see
        ``edges.PostgresRuns``). Returns how many were indexed. Serialised with the
        writes, so a lookup never sees an edge twice or not at all. A large backlog
        (a bulk load, a migrated database) goes in several transactions, so the
        writes wait for one segment's worth at a time, never for all of it."""
        indexed = 0
        while True:
            with self._write() as c:
                done = self.edges.compact(c)
            indexed += done
            if done < SEGMENT_MAX_POSTINGS:
                return indexed

    # --- inspection (tests, operators, the benchmark) --------------------------------

    def count_edges(self) -> int:
        """How many edges are stored."""
        with self.engine.connect() as c:
            return self.edges.count(c)


def _newer_import(person: dict[str, Any] | None, import_id: str, sent_at: float) -> bool:
    """Whether an import may replace the person's current one (or is a redelivery of it)."""
    if person is None or person["import_sent_at"] is None or person["import_id"] == import_id:
        return True
    return bool(sent_at > person["import_sent_at"])


def _distinct_people(
    archives: Sequence[tuple[Archive, Iterable[EdgeBatch]]],
) -> Iterator[list[tuple[Archive, Iterable[EdgeBatch]]]]:
    """The archives in order, cut into groups where each person appears once (a
    later archive of a person starts a new group, so it sees the earlier one)."""
    group: list[tuple[Archive, Iterable[EdgeBatch]]] = []
    people: set[str] = set()
    for item in archives:
        if item[0].person_id in people:
            yield group
            group, people = [], set()
        group.append(item)
        people.add(item[0].person_id)
    if group:
        yield group


def _without_self(batches: Iterable[EdgeBatch], own: int | None) -> Iterator[EdgeBatch]:
    """Drop the person's own X id from their edges (a self-follow is no match)."""
    if own is None:
        yield from batches
        return
    own_unsigned = np.uint64(own & ((1 << 64) - 1))
    for direction, ids in batches:
        if ids.size and bool((ids == own_unsigned).any()):
            yield direction, ids[ids != own_unsigned]
        else:
            yield direction, ids


def _match_columns(trusted_target: str, target_account: str) -> str:
    """The aggregated columns of a derived match: directions (mask), the state a new
    match starts in, and the target account when that state is ``requested``
    (auto-follow: the owner consents and has an actor there, the target is trusted).
    Plain ``MAX`` aggregates (no ``DISTINCT``) let the database hash the groups."""
    auto = f"(o.consent_auto_follow AND oa.account IS NOT NULL AND {trusted_target})"
    return (
        f"MAX(CASE WHEN e.direction = {FOLLOWING} THEN {FOLLOWING} ELSE 0 END)"
        f" + MAX(CASE WHEN e.direction = {FOLLOWER} THEN {FOLLOWER} ELSE 0 END) AS directions,"
        f" MAX(CASE WHEN {auto} THEN {REQUESTED} ELSE {PROPOSED} END) AS state,"
        f" MAX(CASE WHEN {auto} THEN {target_account} END) AS target_account"
    )


def _follows_to_request(
    rows: Iterable[Sequence[Any]],
) -> tuple[list[FollowToRequest], list[dict[str, int]]]:
    """Outbox rows as follow requests; the keys of those that lost their actor,
    target account or X id (orphans, to fall back to the selection).

    Each row is (person_key, network, target_key, person_id, actor, target_account,
    x_id, directions), read by position: thousands of rows per newcomer."""
    ready: list[FollowToRequest] = []
    orphans: list[dict[str, int]] = []
    for person_key, network, target_key, person_id, actor, target, x_id, mask in rows:
        if actor is None or target is None or x_id is None:
            orphans.append({"p": int(person_key), "n": int(network), "t": int(target_key)})
            continue
        ready.append(
            FollowToRequest(
                int(person_key),
                int(network),
                int(target_key),
                str(person_id),
                str(actor),
                str(target),
                from_db(int(x_id)),
                directions_of(int(mask)),
            )
        )
    return ready, orphans

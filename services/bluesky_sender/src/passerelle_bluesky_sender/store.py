"""Every database read and write of the sender, as plain synchronous functions.

Callers run them in a thread (``asyncio.to_thread``). Each public method is one
transaction. SQLite and PostgreSQL are both supported (tests run both).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from passerelle_bluesky_sender.identity import is_followable_did
from passerelle_bluesky_sender.models import (
    ACTIVE,
    BROKEN,
    DONE,
    FAILED,
    IN_FLIGHT,
    OPEN_STATES,
    PENDING,
    UNPUBLISHED,
    metadata,
)
from passerelle_contracts import FollowRequest

ACCOUNT = metadata.tables["bluesky_account"]
FOLLOW = metadata.tables["bluesky_follow"]
SPEND = metadata.tables["bluesky_budget_spend"]
KNOWN = metadata.tables["bluesky_known_follow"]
TARGET = metadata.tables["bluesky_target"]

#: Failures that end when the link comes back: a new request for the follow reopens it.
REOPENABLE_REASONS = ("not_linked", "unlinked")
#: Rows per statement when a list of ids or values is sent to the database.
CHUNK = 500


@dataclass(frozen=True)
class AccountRow:
    did: str
    person_id: str
    handle: str
    pds_url: str
    state: str
    broken_reason: str | None
    app_password: str
    access_jwt: str | None
    refresh_jwt: str | None
    key_id: str
    access_expires_at: float | None
    session_issued_at: float | None
    login_times: list[float]
    records_cursor: str | None
    synced_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> AccountRow:
        m = row._mapping  # noqa: SLF001 - SQLAlchemy's public mapping view of a row
        return cls(
            did=m["did"],
            person_id=m["person_id"],
            handle=m["handle"],
            pds_url=m["pds_url"],
            state=m["state"],
            broken_reason=m["broken_reason"],
            app_password=m["app_password"],
            access_jwt=m["access_jwt"],
            refresh_jwt=m["refresh_jwt"],
            key_id=m["key_id"],
            access_expires_at=m["access_expires_at"],
            session_issued_at=m["session_issued_at"],
            login_times=[float(t) for t in json.loads(m["login_times"] or "[]")],
            records_cursor=m["records_cursor"],
            synced_at=m["synced_at"],
        )


@dataclass(frozen=True)
class FollowRow:
    id: int
    target: str
    follow_id: str
    person_id: str
    state: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """How one ledger row ends (or goes back to waiting).

    Applied only if the row is still in ``from_state`` (a concurrent unlink or erasure
    wins). ``refund`` gives back the attempt counted when the call was made (a 429 or an
    expired token is not the follow's fault).
    """

    id: int
    state: str
    from_state: str
    outcome: str | None = None
    reason: str | None = None
    next_try_at: float | None = None
    record_uri: str | None = None
    refund: bool = False


@dataclass(frozen=True)
class Result:
    """A finished row whose ``follow.result`` is still to be published."""

    id: int
    follow_id: str
    person_id: str
    target: str
    outcome: str
    reason: str | None


@dataclass(frozen=True)
class Backlog:
    """An account's open work: how many rows and when the next one is due."""

    did: str
    open_rows: int
    next_due: float | None


@dataclass(frozen=True)
class IntakeReport:
    new_work: dict[str, int]
    """Accounts with new (or reopened) pending rows, and how many."""
    new_results: int


@dataclass(frozen=True)
class TurnStart:
    """What a turn needs, read in one transaction."""

    account: AccountRow | None
    holder: str | None
    spends: list[tuple[float, int]]
    in_flight: list[FollowRow]
    due: list[FollowRow]


@dataclass(frozen=True)
class LinkChange:
    """What linking changed: the previous link of the person, if another DID."""

    replaced_did: str | None
    reactivated: bool


class LinkConflictError(Exception):
    """The DID is linked to another person."""


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert_ignore(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt, rows)


class Store:
    """The sender's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- accounts -------------------------------------------------------------------------

    def account(self, did: str) -> AccountRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.did == did)).first()
        return AccountRow.from_row(row) if row is not None else None

    def account_of_person(self, person_id: str) -> AccountRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.person_id == person_id)).first()
        return AccountRow.from_row(row) if row is not None else None

    def active_accounts(self, dids: Sequence[str] | None = None) -> list[AccountRow]:
        query = sa.select(ACCOUNT).where(ACCOUNT.c.state == ACTIVE)
        out: list[AccountRow] = []
        with self.engine.connect() as conn:
            if dids is None:
                return [AccountRow.from_row(r) for r in conn.execute(query).all()]
            for chunk in _chunks(sorted(set(dids))):
                rows = conn.execute(query.where(ACCOUNT.c.did.in_(chunk))).all()
                out.extend(AccountRow.from_row(r) for r in rows)
        return out

    def link(
        self,
        *,
        did: str,
        person_id: str,
        handle: str,
        pds_url: str,
        app_password: str,
        access_jwt: str,
        refresh_jwt: str,
        key_id: str,
        access_expires_at: float | None,
        now: float,
        login_at: float,
    ) -> LinkChange:
        """Store (or replace) the person's link; credentials are already encrypted."""
        with self.engine.begin() as conn:
            other = conn.execute(
                sa.select(ACCOUNT.c.person_id).where(ACCOUNT.c.did == did)
            ).scalar()
            if other is not None and other != person_id:
                raise LinkConflictError(did)
            previous = conn.execute(
                sa.select(ACCOUNT.c.did, ACCOUNT.c.state).where(ACCOUNT.c.person_id == person_id)
            ).first()
            replaced = None
            reactivated = False
            login_times: list[float] = []
            if previous is not None and previous.did != did:
                replaced = previous.did
                self._fail_open(conn, previous.did, "unlinked", now)
                conn.execute(sa.delete(KNOWN).where(KNOWN.c.actor == previous.did))
                conn.execute(sa.delete(ACCOUNT).where(ACCOUNT.c.did == previous.did))
            elif previous is not None:
                reactivated = previous.state != ACTIVE
                raw = conn.execute(
                    sa.select(ACCOUNT.c.login_times).where(ACCOUNT.c.did == did)
                ).scalar()
                login_times = [float(t) for t in json.loads(raw or "[]")]
            login_times = [t for t in login_times if t > now - 86400.0] + [login_at]
            values = {
                "person_id": person_id,
                "handle": handle,
                "pds_url": pds_url,
                "state": ACTIVE,
                "broken_reason": None,
                "app_password": app_password,
                "access_jwt": access_jwt,
                "refresh_jwt": refresh_jwt,
                "key_id": key_id,
                "access_expires_at": access_expires_at,
                "session_issued_at": now,
                "login_times": json.dumps(login_times),
                "updated_at": now,
            }
            if previous is not None and replaced is None:
                conn.execute(sa.update(ACCOUNT).where(ACCOUNT.c.did == did).values(**values))
            else:
                conn.execute(
                    sa.insert(ACCOUNT).values(did=did, linked_at=now, synced_at=None, **values)
                )
            return LinkChange(replaced_did=replaced, reactivated=reactivated)

    def unlink(self, person_id: str, now: float) -> AccountRow | None:
        """Delete the person's credentials; their open follows fail with ``unlinked``."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.person_id == person_id)).first()
            if row is None:
                return None
            account = AccountRow.from_row(row)
            self._fail_open(conn, account.did, "unlinked", now)
            conn.execute(sa.delete(KNOWN).where(KNOWN.c.actor == account.did))
            conn.execute(sa.delete(ACCOUNT).where(ACCOUNT.c.did == account.did))
            return account

    def mark_broken(self, did: str, reason: str, now: float) -> AccountRow | None:
        """Stop the account's work (its rows stay open); ``None`` if it was not active."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(ACCOUNT).where(ACCOUNT.c.did == did, ACCOUNT.c.state == ACTIVE)
            ).first()
            if row is None:
                return None
            conn.execute(
                sa.update(ACCOUNT)
                .where(ACCOUNT.c.did == did)
                .values(
                    state=BROKEN,
                    broken_reason=reason,
                    access_jwt=None,
                    refresh_jwt=None,
                    access_expires_at=None,
                    updated_at=now,
                )
            )
            return AccountRow.from_row(row)

    def begin_turn(
        self, did: str, owner: str, now: float, until: float, since: float, limit: int
    ) -> TurnStart:
        """Take the account for one turn (a lease until ``until``) and read what it needs:
        the account, its budget log since ``since``, its rows in flight and up to ``limit``
        due rows. ``account`` is ``None`` when it is gone or not active, or when another
        replica (``holder``) has it."""
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(ACCOUNT)
                .where(
                    ACCOUNT.c.did == did,
                    ACCOUNT.c.state == ACTIVE,
                    sa.or_(
                        ACCOUNT.c.lease_owner.is_(None),
                        ACCOUNT.c.lease_owner == owner,
                        ACCOUNT.c.lease_until < now,
                    ),
                )
                .values(lease_owner=owner, lease_until=until)
            )
            if not result.rowcount:
                holder = conn.execute(
                    sa.select(ACCOUNT.c.lease_owner).where(
                        ACCOUNT.c.did == did, ACCOUNT.c.state == ACTIVE
                    )
                ).scalar()
                return TurnStart(None, holder, [], [], [])
            row = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.did == did)).one()
            spends = [
                (float(at), int(points))
                for at, points in conn.execute(
                    sa.select(SPEND.c.at, SPEND.c.points).where(
                        SPEND.c.did == did, SPEND.c.at > since
                    )
                )
            ]
            in_flight = self._select(conn, did, IN_FLIGHT, now, None)
            due = self._select(conn, did, PENDING, now, limit)
            return TurnStart(AccountRow.from_row(row), None, spends, in_flight, due)

    def end_turn(self, did: str, owner: str) -> float | None:
        """Release the lease; when the account's next open row is due (``None``: none)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(ACCOUNT)
                .where(ACCOUNT.c.did == did, ACCOUNT.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
            due = [
                conn.execute(
                    sa.select(sa.func.min(FOLLOW.c.next_try_at)).where(
                        FOLLOW.c.actor == did, FOLLOW.c.state == state
                    )
                ).scalar()
                for state in OPEN_STATES
            ]
        found = [float(d) for d in due if d is not None]
        return min(found) if found else None

    def broken_accounts(self) -> list[AccountRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.state == BROKEN)).all()
        return [AccountRow.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Open rows by state (``paused``: of accounts whose link is broken), and accounts."""
        with self.engine.connect() as conn:
            out: dict[str, int] = {"pending": 0, "in_flight": 0, "paused": 0}
            for state, n in conn.execute(
                sa.select(FOLLOW.c.state, sa.func.count())
                .where(FOLLOW.c.state.in_(OPEN_STATES))
                .group_by(FOLLOW.c.state)
            ):
                out[state] = int(n)
            broken = list(
                conn.execute(sa.select(ACCOUNT.c.did).where(ACCOUNT.c.state == BROKEN)).scalars()
            )
            for chunk in _chunks(broken):
                out["paused"] += int(
                    conn.execute(
                        sa.select(sa.func.count()).where(
                            FOLLOW.c.actor.in_(chunk), FOLLOW.c.state.in_(OPEN_STATES)
                        )
                    ).scalar_one()
                )
            out["pending"] = max(0, out["pending"] - out["paused"])
            for state, n in conn.execute(
                sa.select(ACCOUNT.c.state, sa.func.count()).group_by(ACCOUNT.c.state)
            ):
                out[f"accounts_{state}"] = int(n)
        return out

    def save_session(
        self,
        did: str,
        *,
        access_jwt: str,
        refresh_jwt: str,
        key_id: str,
        access_expires_at: float | None,
        issued_at: float,
        login_times: list[float] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "access_jwt": access_jwt,
            "refresh_jwt": refresh_jwt,
            "key_id": key_id,
            "access_expires_at": access_expires_at,
            "session_issued_at": issued_at,
            "updated_at": issued_at,
        }
        if login_times is not None:
            values["login_times"] = json.dumps(login_times)
        with self.engine.begin() as conn:
            conn.execute(sa.update(ACCOUNT).where(ACCOUNT.c.did == did).values(**values))

    def save_login_times(self, did: str, login_times: list[float]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(ACCOUNT)
                .where(ACCOUNT.c.did == did)
                .values(login_times=json.dumps(login_times))
            )

    def credentials_to_rotate(self, key_id: str) -> list[AccountRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.key_id != key_id)).all()
        return [AccountRow.from_row(r) for r in rows]

    def save_rotated(
        self,
        did: str,
        *,
        old_key_id: str,
        key_id: str,
        app_password: str,
        access_jwt: str | None,
        refresh_jwt: str | None,
    ) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(ACCOUNT)
                .where(ACCOUNT.c.did == did, ACCOUNT.c.key_id == old_key_id)
                .values(
                    key_id=key_id,
                    app_password=app_password,
                    access_jwt=access_jwt,
                    refresh_jwt=refresh_jwt,
                )
            )
            return bool(result.rowcount)

    def set_records_cursor(self, did: str, cursor: str | None, synced_at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(ACCOUNT)
                .where(ACCOUNT.c.did == did)
                .values(records_cursor=cursor, synced_at=synced_at)
            )

    # --- intake ---------------------------------------------------------------------------

    def intake(self, requests: Sequence[FollowRequest], now: float) -> IntakeReport:
        """Record follow requests in the ledger, once each (redeliveries change nothing)."""
        actors = sorted({r.actor for r in requests})
        with self.engine.begin() as conn:
            owners = {
                row.did: (row.person_id, row.state)
                for row in conn.execute(
                    sa.select(ACCOUNT.c.did, ACCOUNT.c.person_id, ACCOUNT.c.state).where(
                        ACCOUNT.c.did.in_(actors)
                    )
                )
            }
            rows: list[dict[str, Any]] = []
            linked: list[FollowRequest] = []
            for r in requests:
                owner = owners.get(r.actor)
                state, outcome, reason = PENDING, None, None
                if r.actor == r.target:
                    state, outcome, reason = FAILED, "failed", "self_follow"
                elif not is_followable_did(r.target):
                    state, outcome, reason = FAILED, "failed", "invalid_target"
                elif owner is None or owner[0] != r.person_id:
                    state, outcome, reason = FAILED, "failed", "not_linked"
                else:
                    linked.append(r)
                rows.append(
                    {
                        "actor": r.actor,
                        "target": r.target,
                        "follow_id": r.follow_id,
                        "person_id": r.person_id,
                        "state": state,
                        "outcome": outcome,
                        "reason": reason,
                        "attempts": 0,
                        "next_try_at": now,
                        "batch_id": None,
                        "record_uri": None,
                        "result_pending": state == FAILED,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            _insert_ignore(conn, FOLLOW, rows, ["actor", "target"])
            reopened = self._reopen(conn, linked, now)
            new_results = sum(1 for row in rows if row["state"] == FAILED)
        new_work: dict[str, int] = {}
        for r in linked:
            new_work[r.actor] = new_work.get(r.actor, 0) + 1
        for actor in reopened:
            new_work.setdefault(actor, 1)
        return IntakeReport(new_work=new_work, new_results=new_results)

    def _reopen(self, conn: Connection, requests: Sequence[FollowRequest], now: float) -> set[str]:
        """Failed-because-unlinked rows asked for again by a linked person: pending again."""
        if not requests:
            return set()
        wanted = {(r.actor, r.target): r for r in requests}
        found = conn.execute(
            sa.select(FOLLOW.c.id, FOLLOW.c.actor, FOLLOW.c.target).where(
                FOLLOW.c.actor.in_(sorted({r.actor for r in requests})),
                FOLLOW.c.target.in_(sorted({r.target for r in requests})),
                FOLLOW.c.state == FAILED,
                FOLLOW.c.reason.in_(REOPENABLE_REASONS),
            )
        ).all()
        params = []
        for row in found:
            request = wanted.get((row.actor, row.target))
            if request is not None:
                params.append(
                    {
                        "row_id": row.id,
                        "follow_id": request.follow_id,
                        "person_id": request.person_id,
                    }
                )
        if params:
            conn.execute(
                sa.update(FOLLOW)
                .where(FOLLOW.c.id == sa.bindparam("row_id"))
                .values(
                    follow_id=sa.bindparam("follow_id"),
                    person_id=sa.bindparam("person_id"),
                    state=PENDING,
                    outcome=None,
                    reason=None,
                    attempts=0,
                    next_try_at=now,
                    batch_id=None,
                    result_pending=False,
                    updated_at=now,
                ),
                params,
            )
        return {row.actor for row in found if (row.actor, row.target) in wanted}

    # --- the scheduler's work -------------------------------------------------------------

    def backlogs(self, dids: Sequence[str] | None = None) -> list[Backlog]:
        """Open rows and next due time per account (all accounts, or ``dids``)."""
        query = (
            sa.select(
                FOLLOW.c.actor,
                sa.func.count(),
                sa.func.min(FOLLOW.c.next_try_at),
            )
            .where(FOLLOW.c.state.in_(OPEN_STATES))
            .group_by(FOLLOW.c.actor)
        )
        if dids is not None:
            query = query.where(FOLLOW.c.actor.in_(list(dids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        found = {r[0]: Backlog(r[0], int(r[1]), float(r[2])) for r in rows}
        if dids is not None:
            for did in dids:
                found.setdefault(did, Backlog(did, 0, None))
        return list(found.values())

    def backlog(self, did: str) -> Backlog:
        with self.engine.connect() as conn:
            count, due = conn.execute(
                sa.select(sa.func.count(), sa.func.min(FOLLOW.c.next_try_at)).where(
                    FOLLOW.c.actor == did, FOLLOW.c.state.in_(OPEN_STATES)
                )
            ).one()
        return Backlog(did, int(count), float(due) if due is not None else None)

    def _select(
        self, conn: Connection, did: str, state: str, now: float, limit: int | None
    ) -> list[FollowRow]:
        query = (
            sa.select(
                FOLLOW.c.id,
                FOLLOW.c.target,
                FOLLOW.c.follow_id,
                FOLLOW.c.person_id,
                FOLLOW.c.state,
                FOLLOW.c.attempts,
            )
            .where(FOLLOW.c.actor == did, FOLLOW.c.state == state, FOLLOW.c.next_try_at <= now)
            .order_by(FOLLOW.c.next_try_at, FOLLOW.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        return [FollowRow(*row) for row in conn.execute(query).all()]

    def start_batch(
        self,
        did: str,
        ids: Sequence[int],
        batch_id: str,
        points: int,
        now: float,
        settled: Sequence[Outcome] = (),
        *,
        lease: tuple[str, float] | None = None,
    ) -> int | None:
        """Mark rows in flight and record the points spent, before the call is made
        (and settle rows that needed no call, and renew the turn's lease). Returns the
        spend's id (to re-date it when the answer comes)."""
        with self.engine.begin() as conn:
            self._settle(conn, settled, now)
            if lease is not None:
                conn.execute(
                    sa.update(ACCOUNT)
                    .where(ACCOUNT.c.did == did, ACCOUNT.c.lease_owner == lease[0])
                    .values(lease_until=lease[1])
                )
            for chunk in _chunks(ids):
                conn.execute(
                    sa.update(FOLLOW)
                    .where(FOLLOW.c.id.in_(chunk))
                    .values(
                        state=IN_FLIGHT,
                        batch_id=batch_id,
                        attempts=FOLLOW.c.attempts + 1,
                        updated_at=now,
                    )
                )
            if not points:
                return None
            result = conn.execute(
                sa.insert(SPEND).values(did=did, at=now, points=points, kind="write")
            )
            key = result.inserted_primary_key
            return int(key[0]) if key else None

    def settle(self, outcomes: Sequence[Outcome], now: float) -> int:
        """Apply outcomes; finished rows enter the outbox. Returns how many finished."""
        with self.engine.begin() as conn:
            return self._settle(conn, outcomes, now)

    def finish_batch(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        *,
        spend: tuple[int | None, float],
        actor: str,
        followed: Sequence[str],
    ) -> int:
        """A call's answer: settle its rows, re-date its points, remember what is followed."""
        spend_id, answered_at = spend
        with self.engine.begin() as conn:
            finished = self._settle(conn, outcomes, now)
            if spend_id is not None:
                conn.execute(sa.update(SPEND).where(SPEND.c.id == spend_id).values(at=answered_at))
            rows = [{"actor": actor, "subject": s} for s in sorted(set(followed))]
            for chunk in _chunks(rows):
                _insert_ignore(conn, KNOWN, list(chunk), ["actor", "subject"])
        return finished

    def _settle(self, conn: Connection, outcomes: Sequence[Outcome], now: float) -> int:
        finished = [o for o in outcomes if o.state in (DONE, FAILED)]
        waiting = [o for o in outcomes if o.state not in (DONE, FAILED)]
        if finished:
            conn.execute(
                sa.update(FOLLOW)
                .where(
                    FOLLOW.c.id == sa.bindparam("row_id"),
                    FOLLOW.c.state == sa.bindparam("old_state"),
                )
                .values(
                    state=sa.bindparam("new_state"),
                    outcome=sa.bindparam("new_outcome"),
                    reason=sa.bindparam("new_reason"),
                    record_uri=sa.bindparam("uri"),
                    result_pending=True,
                    updated_at=now,
                ),
                [
                    {
                        "row_id": o.id,
                        "old_state": o.from_state,
                        "new_state": o.state,
                        "new_outcome": o.outcome,
                        "new_reason": o.reason,
                        "uri": o.record_uri,
                    }
                    for o in finished
                ],
            )
        if waiting:
            conn.execute(
                sa.update(FOLLOW)
                .where(
                    FOLLOW.c.id == sa.bindparam("row_id"),
                    FOLLOW.c.state == sa.bindparam("old_state"),
                )
                .values(
                    state=sa.bindparam("new_state"),
                    next_try_at=sa.bindparam("due"),
                    attempts=FOLLOW.c.attempts - sa.bindparam("refund"),
                    updated_at=now,
                ),
                [
                    {
                        "row_id": o.id,
                        "old_state": o.from_state,
                        "new_state": o.state,
                        "due": o.next_try_at if o.next_try_at is not None else now,
                        "refund": 1 if o.refund else 0,
                    }
                    for o in waiting
                ],
            )
        return len(finished)

    def fail_open(self, did: str, reason: str, now: float) -> int:
        with self.engine.begin() as conn:
            return self._fail_open(conn, did, reason, now)

    def _fail_open(self, conn: Connection, did: str, reason: str, now: float) -> int:
        result = conn.execute(
            sa.update(FOLLOW)
            .where(FOLLOW.c.actor == did, FOLLOW.c.state.in_(OPEN_STATES))
            .values(
                state=FAILED,
                outcome="failed",
                reason=reason,
                result_pending=True,
                updated_at=now,
            )
        )
        return int(result.rowcount or 0)

    # --- outbox ---------------------------------------------------------------------------

    def unpublished(self, limit: int) -> list[Result]:
        query = (
            sa.select(
                FOLLOW.c.id,
                FOLLOW.c.follow_id,
                FOLLOW.c.person_id,
                FOLLOW.c.target,
                FOLLOW.c.outcome,
                FOLLOW.c.reason,
            )
            .where(sa.text(UNPUBLISHED))
            .order_by(FOLLOW.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Result(*row) for row in conn.execute(query).all()]

    def mark_published(self, ids: Sequence[int]) -> None:
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(
                    sa.update(FOLLOW).where(FOLLOW.c.id.in_(chunk)).values(result_pending=False)
                )

    # --- budgets --------------------------------------------------------------------------

    def spends(
        self, since: float, dids: Sequence[str] | None = None
    ) -> dict[str, list[tuple[float, int]]]:
        out: dict[str, list[tuple[float, int]]] = {}
        query = sa.select(SPEND.c.did, SPEND.c.at, SPEND.c.points).where(SPEND.c.at > since)
        chunks: Iterable[Sequence[str] | None] = (
            [None] if dids is None else _chunks(sorted(set(dids)))
        )
        with self.engine.connect() as conn:
            for chunk in chunks:
                q = query if chunk is None else query.where(SPEND.c.did.in_(chunk))
                for did, at, points in conn.execute(q):
                    out.setdefault(did, []).append((float(at), int(points)))
        return out

    def add_spend(self, did: str, at: float, points: int, kind: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(SPEND).values(did=did, at=at, points=points, kind=kind))

    def move_spend(self, spend_id: int, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(SPEND).where(SPEND.c.id == spend_id).values(at=at))

    def prune_spends(self, before: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(SPEND).where(SPEND.c.at <= before))

    # --- what the account already follows -------------------------------------------------

    def add_known(self, actor: str, subjects: Iterable[str]) -> None:
        rows = [{"actor": actor, "subject": s} for s in sorted(set(subjects))]
        with self.engine.begin() as conn:
            for chunk in _chunks(rows):
                _insert_ignore(conn, KNOWN, list(chunk), ["actor", "subject"])

    def known_among(self, actor: str, targets: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(targets))):
                found.update(
                    conn.execute(
                        sa.select(KNOWN.c.subject).where(
                            KNOWN.c.actor == actor, KNOWN.c.subject.in_(chunk)
                        )
                    ).scalars()
                )
        return found

    # --- targets --------------------------------------------------------------------------

    def target_statuses(self, dids: Sequence[str], fresh_after: float) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(dids))):
                rows = conn.execute(
                    sa.select(TARGET.c.did, TARGET.c.status).where(
                        TARGET.c.did.in_(chunk), TARGET.c.checked_at > fresh_after
                    )
                ).all()
                out.update(dict(rows))
        return out

    def save_target_statuses(self, statuses: dict[str, str], now: float) -> None:
        if not statuses:
            return
        with self.engine.begin() as conn:
            conn.execute(sa.delete(TARGET).where(TARGET.c.did.in_(sorted(statuses))))
            conn.execute(
                sa.insert(TARGET),
                [{"did": d, "status": s, "checked_at": now} for d, s in statuses.items()],
            )

    # --- erasure --------------------------------------------------------------------------

    def erase(self, person_id: str) -> AccountRow | None:
        """Forget everything about a person: account, credentials, ledger, budgets, reads."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(ACCOUNT).where(ACCOUNT.c.person_id == person_id)).first()
            account = AccountRow.from_row(row) if row is not None else None
            actors = set(
                conn.execute(
                    sa.select(FOLLOW.c.actor).where(FOLLOW.c.person_id == person_id).distinct()
                ).scalars()
            )
            if account is not None:
                actors.add(account.did)
            conn.execute(sa.delete(FOLLOW).where(FOLLOW.c.person_id == person_id))
            if account is not None:
                # Nobody follows an erased person through us any more.
                conn.execute(
                    sa.update(FOLLOW)
                    .where(FOLLOW.c.target == account.did, FOLLOW.c.state.in_(OPEN_STATES))
                    .values(
                        state=FAILED,
                        outcome="failed",
                        reason="target_erased",
                        result_pending=True,
                    )
                )
            for did in sorted(actors):
                conn.execute(sa.delete(FOLLOW).where(FOLLOW.c.actor == did))
                conn.execute(sa.delete(KNOWN).where(KNOWN.c.actor == did))
                conn.execute(sa.delete(SPEND).where(SPEND.c.did == did))
                conn.execute(sa.delete(TARGET).where(TARGET.c.did == did))
            conn.execute(sa.delete(ACCOUNT).where(ACCOUNT.c.person_id == person_id))
            return account

    def remaining_for(self, person_id: str, did: str | None) -> int:
        """Rows anywhere that still mention the person (erasure tests)."""
        with self.engine.connect() as conn:
            total = 0
            total += conn.execute(
                sa.select(sa.func.count()).where(
                    sa.or_(FOLLOW.c.person_id == person_id, FOLLOW.c.actor == (did or ""))
                )
            ).scalar_one()
            total += conn.execute(
                sa.select(sa.func.count())
                .select_from(ACCOUNT)
                .where(sa.or_(ACCOUNT.c.person_id == person_id, ACCOUNT.c.did == (did or "")))
            ).scalar_one()
            if did:
                total += conn.execute(
                    sa.select(sa.func.count()).select_from(KNOWN).where(KNOWN.c.actor == did)
                ).scalar_one()
                total += conn.execute(
                    sa.select(sa.func.count()).select_from(SPEND).where(SPEND.c.did == did)
                ).scalar_one()
                total += conn.execute(
                    sa.select(sa.func.count()).select_from(TARGET).where(TARGET.c.did == did)
                ).scalar_one()
            return int(total)

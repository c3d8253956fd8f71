"""The follow ledger: one row per (person, target), its state as data.

``pending`` (due at ``next_try_at``) → ``working`` (claimed by the person's lane)
→ ``done`` (``followed`` / ``already_following``) or ``failed`` (with a reason);
a transient failure puts the row back to ``pending`` later. The unique key makes a
redelivered request a no-op; a row left ``working`` by a crash goes back to
``pending`` marked ``interrupted`` when its account's lease is taken again (see
:mod:`passerelle_mastodon_sender.leases`), and is checked against the server's
relationships before anything is sent again — so a follow is made at most once.

Synchronous SQLAlchemy Core (bulk statements); run it via :class:`Database`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from passerelle_contracts import FollowRequest
from passerelle_contracts.events import FollowOutcome
from passerelle_mastodon_sender.instances import normalize_acct
from passerelle_mastodon_sender.models import MastodonFollow, MastodonResolved, metadata

FOLLOWS: Table = metadata.tables[MastodonFollow.__tablename__]
RESOLVED: Table = metadata.tables[MastodonResolved.__tablename__]

INTERRUPTED = "interrupted"
"""Reason kept on a row whose follow call may have been sent before a crash."""


@dataclass(frozen=True)
class Intake:
    """What recording a group of requests changed."""

    persons: set[str]
    """Persons with pending rows among the requests."""
    republish: bool
    """Some requests were already done: their results are to publish again."""


@dataclass(frozen=True)
class Claimed:
    """A row a lane works on."""

    follow_id: str
    person_id: str
    target: str
    attempts: int
    target_account_id: str | None
    interrupted: bool


@dataclass(frozen=True)
class Outcome:
    """What a lane learnt about a row: final (``done``/``failed``) or back to ``pending``."""

    follow_id: str
    person_id: str
    state: str
    outcome: str | None = None
    reason: str | None = None
    next_try_at: float = 0.0
    target_account_id: str | None = None
    done_at: float | None = None

    @property
    def final(self) -> bool:
        return self.state in {"done", "failed"}


@dataclass(frozen=True)
class Result:
    """A final row whose ``follow.result`` is still to publish."""

    follow_id: str
    person_id: str
    target: str
    outcome: FollowOutcome
    reason: str | None


def _insert(engine: Engine, table: Table) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class Ledger:
    """Bulk reads and writes of the follow ledger and the resolved-ids cache."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- intake --------------------------------------------------------------------------------

    def accept(self, requests: Sequence[FollowRequest], now: float) -> Intake:
        """Record requests (a known follow is not added twice).

        A request for a follow that failed before opens it again (the person asks
        anew: the account may exist now, the link may be back); one already done
        gets its result published again.
        """
        if not requests:
            return Intake(set(), republish=False)
        rows = {
            r.follow_id: {
                "follow_id": r.follow_id,
                "person_id": r.person_id,
                "target": normalize_acct(r.target),
                "target_x_id": r.target_x_id,
                "state": "pending",
                "attempts": 0,
                "next_try_at": now,
                "created_at": now,
                "published": False,
            }
            for r in requests
        }
        with self.engine.begin() as conn:
            known = {
                r.follow_id: r.state
                for r in conn.execute(
                    select(FOLLOWS.c.follow_id, FOLLOWS.c.state).where(
                        FOLLOWS.c.follow_id.in_(list(rows))
                    )
                )
            }
            new = [row for fid, row in rows.items() if fid not in known]
            if new:
                conn.execute(_insert(self.engine, FOLLOWS).on_conflict_do_nothing(), new)
            failed = [fid for fid, state in known.items() if state == "failed"]
            if failed:
                conn.execute(
                    update(FOLLOWS)
                    .where(FOLLOWS.c.follow_id.in_(failed), FOLLOWS.c.state == "failed")
                    .values(
                        state="pending",
                        attempts=0,
                        next_try_at=now,
                        outcome=None,
                        reason=None,
                        done_at=None,
                        published=False,
                    )
                )
            done = [fid for fid, state in known.items() if state == "done"]
            if done:
                conn.execute(
                    update(FOLLOWS).where(FOLLOWS.c.follow_id.in_(done)).values(published=False)
                )
        waiting = [fid for fid, state in known.items() if state == "pending"]
        persons = {
            str(rows[fid]["person_id"])
            for fid in [*(r["follow_id"] for r in new), *failed, *waiting]
        }
        return Intake(persons, republish=bool(done))

    # --- lanes ---------------------------------------------------------------------------------

    def claim(self, person_id: str, now: float, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due rows of a person, oldest first (state ``working``)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(
                    FOLLOWS.c.id,
                    FOLLOWS.c.follow_id,
                    FOLLOWS.c.target,
                    FOLLOWS.c.attempts,
                    FOLLOWS.c.target_account_id,
                    FOLLOWS.c.reason,
                )
                .where(
                    FOLLOWS.c.person_id == person_id,
                    FOLLOWS.c.state == "pending",
                    FOLLOWS.c.next_try_at <= now,
                )
                .order_by(FOLLOWS.c.id)
                .limit(limit)
            ).all()
            if not rows:
                return []
            conn.execute(
                update(FOLLOWS)
                .where(FOLLOWS.c.id.in_([r.id for r in rows]))
                .values(state="working", attempts=FOLLOWS.c.attempts + 1)
            )
        return [
            Claimed(
                follow_id=r.follow_id,
                person_id=person_id,
                target=r.target,
                attempts=r.attempts + 1,
                target_account_id=r.target_account_id,
                interrupted=r.reason == INTERRUPTED,
            )
            for r in rows
        ]

    def next_due(self, person_id: str) -> float | None:
        """When the person's next pending row is due, if any."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.min(FOLLOWS.c.next_try_at)).where(
                    FOLLOWS.c.person_id == person_id, FOLLOWS.c.state == "pending"
                )
            ).scalar()
        return None if value is None else float(value)

    def followed_since(self, person_id: str, since: float) -> int:
        """Follows made for the person since ``since`` (to resume a budget after a restart)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        FOLLOWS.c.person_id == person_id,
                        FOLLOWS.c.outcome == "followed",
                        FOLLOWS.c.done_at >= since,
                    )
                ).scalar()
                or 0
            )

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Write what lanes learnt, in one transaction (rows no longer ``working`` are left)."""
        if not outcomes:
            return
        statement = (
            update(FOLLOWS)
            .where(
                FOLLOWS.c.follow_id == bindparam("b_follow_id"),
                FOLLOWS.c.state == "working",
            )
            .values(
                state=bindparam("b_state"),
                outcome=bindparam("b_outcome"),
                reason=bindparam("b_reason"),
                next_try_at=bindparam("b_next_try_at"),
                target_account_id=bindparam("b_target_account_id"),
                done_at=bindparam("b_done_at"),
                published=False,
            )
        )
        params = [
            {
                "b_follow_id": o.follow_id,
                "b_state": o.state,
                "b_outcome": o.outcome,
                "b_reason": o.reason,
                "b_next_try_at": o.next_try_at,
                "b_target_account_id": o.target_account_id,
                "b_done_at": o.done_at,
            }
            for o in outcomes
        ]
        with self.engine.begin() as conn:
            conn.execute(statement, params)

    def fail_open(self, person_id: str, reason: str, now: float) -> int:
        """Fail every open row of a person (link gone, cap reached); returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(FOLLOWS)
                .where(
                    FOLLOWS.c.person_id == person_id,
                    FOLLOWS.c.state.in_(("pending", "working")),
                )
                .values(
                    state="failed", outcome="failed", reason=reason, done_at=now, published=False
                )
            )
            return int(result.rowcount)

    def persons_with_work(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(FOLLOWS.c.person_id).where(FOLLOWS.c.state == "pending").distinct()
                ).scalars()
            )

    # --- results -------------------------------------------------------------------------------

    def unpublished(self, limit: int) -> list[Result]:
        """Final rows whose result is not published yet."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    FOLLOWS.c.follow_id,
                    FOLLOWS.c.person_id,
                    FOLLOWS.c.target,
                    FOLLOWS.c.outcome,
                    FOLLOWS.c.reason,
                )
                .where(
                    FOLLOWS.c.published.is_(False),
                    FOLLOWS.c.state.in_(("done", "failed")),
                )
                .limit(limit)
            ).all()
        return [
            Result(
                r.follow_id,
                r.person_id,
                r.target,
                r.outcome if r.outcome in {"followed", "already_following"} else "failed",
                r.reason,
            )
            for r in rows
        ]

    def mark_published(self, follow_ids: Iterable[str]) -> None:
        ids = list(follow_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(
                    update(FOLLOWS)
                    .where(
                        FOLLOWS.c.follow_id.in_(ids[start : start + 500]),
                        FOLLOWS.c.state.in_(("done", "failed")),
                    )
                    .values(published=True)
                )

    def backlog(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(FOLLOWS.c.state.in_(("pending", "working")))
                ).scalar()
                or 0
            )

    # --- erasure -------------------------------------------------------------------------------

    def erase(self, person_id: str, acct: str | None) -> int:
        """Delete a person's rows, and others' open rows that target their account."""
        with self.engine.begin() as conn:
            count = conn.execute(delete(FOLLOWS).where(FOLLOWS.c.person_id == person_id)).rowcount
            if acct:
                count += conn.execute(delete(FOLLOWS).where(FOLLOWS.c.target == acct)).rowcount
                conn.execute(delete(RESOLVED).where(RESOLVED.c.acct == acct))
            return int(count)

    # --- resolved ids --------------------------------------------------------------------------

    def resolved(self, domain: str, accts: Sequence[str]) -> dict[str, str]:
        if not accts:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(RESOLVED.c.acct, RESOLVED.c.account_id).where(
                    and_(RESOLVED.c.domain == domain, RESOLVED.c.acct.in_(list(accts)))
                )
            ).all()
        return {r.acct: r.account_id for r in rows}

    def remember(self, domain: str, items: dict[str, str], now: float) -> None:
        if not items:
            return
        statement = _insert(self.engine, RESOLVED)
        statement = statement.on_conflict_do_update(
            index_elements=["domain", "acct"],
            set_={"account_id": statement.excluded.account_id, "resolved_at": now},
        )
        with self.engine.begin() as conn:
            conn.execute(
                statement,
                [
                    {"domain": domain, "acct": a, "account_id": i, "resolved_at": now}
                    for a, i in items.items()
                ],
            )

    def forget(self, domain: str, acct: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(RESOLVED).where(RESOLVED.c.domain == domain, RESOLVED.c.acct == acct)
            )

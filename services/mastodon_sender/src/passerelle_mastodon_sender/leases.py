"""Account leases: several replicas share one database, one works an account at a time.

A lease lives on the person's link (``lease_owner``, ``lease_until`` in real epoch
seconds). A lane claims it before working the account, renews it before its calls,
and gives it back when it stops (``lease_until`` 0, or the time its budget frees up:
a *parked* account). A lease that lapses (a replica died or stalled) is free to
claim; whoever claims an account that was not its own, live, takes back the rows the
previous holder left ``working`` (marked ``interrupted``: checked against the
server's relationships before anything is sent again). Renewals and give-backs are
fenced by the ``lease_until`` the holder set: a holder whose lease was taken, or
whose link was replaced or removed, finds nothing to update and stops.

The owner keeps its id across restarts (``hostname:port``): a restarted replica takes
its accounts back at once, another waits for the lease to lapse.

Synchronous SQLAlchemy; run it via :class:`~passerelle_mastodon_sender.db.Database`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, Table, and_, bindparam, exists, or_, select, update
from sqlmodel import Session, col

from passerelle_mastodon_sender.ledger import FOLLOWS, INTERRUPTED
from passerelle_mastodon_sender.models import MastodonLink, metadata

LINKS: Table = metadata.tables[MastodonLink.__tablename__]


@dataclass(frozen=True)
class Claim:
    """What claiming an account's lease found."""

    link: MastodonLink | None
    """The person's link (``None``: not linked)."""
    taken: bool
    """The lease is ours until ``until``."""
    until: float
    """Ours (taken), or the holder's (held elsewhere); 0 when not asked to take."""
    previous: str | None = None
    """Who held it before us (taken): budgets kept in memory are only good if it was us."""
    holder: str | None = None
    """Who holds it (not taken)."""
    recovered: int = 0
    """Rows the previous holder left ``working``, now due again."""


class Leases:
    """Claims, renewals and give-backs of account leases for one replica."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner

    def claim(self, person_id: str, now: float, until: float, *, take: bool = True) -> Claim:
        """Take the person's lease until ``until`` if it is free, lapsed or already ours,
        and read the link; with ``take`` false only read the link."""
        with Session(self.engine, expire_on_commit=False) as session:
            link = session.scalars(
                select(MastodonLink)
                .where(col(MastodonLink.person_id) == person_id)
                .with_for_update()
            ).first()
            if link is None or link.status != "active" or not take:
                return Claim(link, taken=False, until=0.0)
            held_until = link.lease_until or 0.0
            previous = link.lease_owner
            if previous not in (None, self.owner) and held_until >= now:
                return Claim(link, taken=False, until=held_until, holder=previous)
            recovered = 0
            if previous != self.owner or held_until < now:
                # Not ours while it was live: rows left working were someone else's.
                result = session.connection().execute(
                    update(FOLLOWS)
                    .where(FOLLOWS.c.person_id == person_id, FOLLOWS.c.state == "working")
                    .values(state="pending", reason=INTERRUPTED)
                )
                recovered = int(result.rowcount)
            link.lease_owner = self.owner
            link.lease_until = until
            session.commit()
            return Claim(link, taken=True, until=until, previous=previous, recovered=recovered)

    def renew(self, person_id: str, held: float, until: float) -> bool:
        """Extend our lease (set to ``held``) to ``until``; false when it is not ours any more."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(LINKS)
                .where(
                    LINKS.c.person_id == person_id,
                    LINKS.c.lease_owner == self.owner,
                    LINKS.c.lease_until == held,
                )
                .values(lease_until=until)
            )
            return bool(result.rowcount)

    def release(self, leases: Mapping[str, tuple[float, float]]) -> None:
        """Give leases back, per person ``(held, until)``: free from ``until`` on (0: now;
        later: a parked account). A lease claimed again since is left alone."""
        if not leases:
            return
        statement = (
            update(LINKS)
            .where(
                LINKS.c.person_id == bindparam("b_person"),
                LINKS.c.lease_owner == self.owner,
                LINKS.c.lease_until == bindparam("b_held"),
            )
            .values(lease_until=bindparam("b_until"))
        )
        with self.engine.begin() as conn:
            conn.execute(
                statement,
                [{"b_person": p, "b_held": h, "b_until": u} for p, (h, u) in leases.items()],
            )

    def recover_own(self) -> int:
        """At start: rows this replica (before a restart) left ``working`` are due again."""
        ours = select(LINKS.c.person_id).where(LINKS.c.lease_owner == self.owner)
        with self.engine.begin() as conn:
            result = conn.execute(
                update(FOLLOWS)
                .where(FOLLOWS.c.state == "working", FOLLOWS.c.person_id.in_(ours))
                .values(state="pending", reason=INTERRUPTED)
            )
            return int(result.rowcount)

    def free_with_work(self, now: float, due: float, limit: int) -> list[str]:
        """Persons whose lease is free or lapsed at ``now`` (real) and who have rows due at
        ``due`` (the service's clock) or left ``working``: at most ``limit``."""
        work = exists(
            select(FOLLOWS.c.id).where(
                FOLLOWS.c.person_id == LINKS.c.person_id,
                or_(
                    FOLLOWS.c.state == "working",
                    and_(FOLLOWS.c.state == "pending", FOLLOWS.c.next_try_at <= due),
                ),
            )
        )
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(LINKS.c.person_id)
                    .where(
                        LINKS.c.status == "active",
                        or_(
                            LINKS.c.lease_owner.is_(None),
                            LINKS.c.lease_until.is_(None),
                            LINKS.c.lease_until < now,
                        ),
                        work,
                    )
                    .limit(limit)
                ).scalars()
            )

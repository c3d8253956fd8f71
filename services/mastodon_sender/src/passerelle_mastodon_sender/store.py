"""Instances, OAuth apps and links in the database (synchronous; run via :class:`Database`).

Secrets arrive and leave encrypted: this module never sees a plaintext token.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, delete, func, or_, select, update
from sqlmodel import Session, col

from passerelle_mastodon_sender.models import (
    MastodonApp,
    MastodonInstance,
    MastodonLink,
    MastodonPendingLink,
)
from passerelle_mastodon_sender.vault import Vault


@dataclass(frozen=True)
class Bound:
    """What binding a link replaced."""

    previous: MastodonLink | None
    """The person's former link (its token is to revoke)."""
    displaced: MastodonLink | None
    """Another person's link to the same account (that person loses it)."""


class Store:
    """Reads and writes of instances, apps, links and pending sign-ins."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- instances -----------------------------------------------------------------------------

    def instance(self, domain: str) -> MastodonInstance | None:
        with Session(self.engine) as session:
            return session.get(MastodonInstance, domain)

    def save_instance(self, instance: MastodonInstance) -> MastodonInstance:
        with Session(self.engine, expire_on_commit=False) as session:
            merged = session.merge(instance)
            session.commit()
            return merged

    def refuse_granular(self, domain: str) -> None:
        """The server refused or does not honour granular scopes: ask for the broad ones."""
        with Session(self.engine) as session:
            session.execute(
                update(MastodonInstance)
                .where(col(MastodonInstance.domain) == domain)
                .values(granular_scopes=False)
            )
            session.commit()

    # --- apps ----------------------------------------------------------------------------------

    def app(self, domain: str, redirect_uri: str) -> MastodonApp | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(MastodonApp).where(
                    col(MastodonApp.domain) == domain,
                    col(MastodonApp.redirect_uri) == redirect_uri,
                )
            ).first()

    def app_by_id(self, app_id: int) -> MastodonApp | None:
        with Session(self.engine) as session:
            return session.get(MastodonApp, app_id)

    def save_app(self, app: MastodonApp) -> MastodonApp:
        """Insert, or replace the app registered for the same (domain, redirect URI)."""
        with Session(self.engine, expire_on_commit=False) as session:
            existing = session.scalars(
                select(MastodonApp).where(
                    col(MastodonApp.domain) == app.domain,
                    col(MastodonApp.redirect_uri) == app.redirect_uri,
                )
            ).first()
            if existing is not None:
                existing.client_id = app.client_id
                existing.client_secret_enc = app.client_secret_enc
                existing.scopes = app.scopes
                existing.created_at = app.created_at
                app = existing
            session.add(app)
            session.commit()
            return app

    def forget_app(self, app_id: int) -> None:
        with Session(self.engine) as session:
            session.execute(delete(MastodonApp).where(col(MastodonApp.id) == app_id))
            session.commit()

    # --- links ---------------------------------------------------------------------------------

    def link(self, person_id: str) -> MastodonLink | None:
        with Session(self.engine) as session:
            return session.get(MastodonLink, person_id)

    def link_by_code(self, code_hash: str) -> MastodonLink | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(MastodonLink).where(col(MastodonLink.code_hash) == code_hash)
            ).first()

    def link_by_acct(self, acct: str) -> MastodonLink | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(MastodonLink).where(col(MastodonLink.acct) == acct)
            ).first()

    def bind(self, link: MastodonLink) -> Bound:
        """Make ``link`` the person's one Mastodon link (and the account's one person)."""
        with Session(self.engine, expire_on_commit=False) as session:
            previous = session.get(MastodonLink, link.person_id)
            displaced = session.scalars(
                select(MastodonLink).where(
                    col(MastodonLink.acct) == link.acct,
                    col(MastodonLink.person_id) != link.person_id,
                )
            ).first()
            if displaced is not None:
                session.delete(displaced)
            if previous is not None:
                session.delete(previous)
            session.flush()
            session.add(link)
            session.commit()
        return Bound(previous=previous, displaced=displaced)

    def set_status(self, person_id: str, status: str) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(MastodonLink)
                .where(col(MastodonLink.person_id) == person_id)
                .values(status=status)
            )
            session.commit()

    def save_profile(self, person_id: str, followers: int, following: int, at: float) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(MastodonLink)
                .where(col(MastodonLink.person_id) == person_id)
                .values(followers_count=followers, following_count=following, profile_at=at)
            )
            session.commit()

    def reserve_requests(self, reservations: dict[str, tuple[float, int]], period: float) -> None:
        """Count calls ahead, per person ``(window_end, reserved)``: after a restart or a
        takeover each window's count resumes from what was reserved. Counts only grow
        (more calls, or a later window; windows of ``period`` seconds whose ends differ by
        less than half of it are the same, a server's reset moves ours a little): a
        replica that lost the account without knowing yet cannot lower what the new
        holder reserved."""
        if not reservations:
            return
        end, reserved = col(MastodonLink.requests_window_end), col(MastodonLink.requests_reserved)
        statement = (
            update(MastodonLink)
            .where(
                col(MastodonLink.person_id) == bindparam("b_person"),
                or_(end < bindparam("b_end") - period / 2, reserved < bindparam("b_n")),
            )
            .values(requests_window_end=bindparam("b_end"), requests_reserved=bindparam("b_n"))
        )
        with self.engine.begin() as connection:
            connection.execute(
                statement,
                [{"b_person": p, "b_end": e, "b_n": n} for p, (e, n) in reservations.items()],
            )

    def remove_link(self, person_id: str) -> MastodonLink | None:
        with Session(self.engine, expire_on_commit=False) as session:
            link = session.get(MastodonLink, person_id)
            if link is not None:
                session.delete(link)
                session.commit()
            return link

    def count_links(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(MastodonLink)) or 0)

    # --- pending sign-ins ----------------------------------------------------------------------

    def pending(self, code_hash: str, not_before: float) -> MastodonPendingLink | None:
        with Session(self.engine) as session:
            found = session.get(MastodonPendingLink, code_hash)
            if found is None or found.created_at < not_before:
                return None
            return found

    def save_pending(self, pending: MastodonPendingLink) -> None:
        with Session(self.engine) as session:
            session.merge(pending)
            session.commit()

    def drop_pending(self, code_hash: str) -> None:
        with Session(self.engine) as session:
            session.execute(
                delete(MastodonPendingLink).where(col(MastodonPendingLink.code_hash) == code_hash)
            )
            session.commit()

    def expire_pending(self, not_before: float) -> list[MastodonPendingLink]:
        """Delete sign-ins nobody claimed in time; returns them (their tokens to revoke)."""
        with Session(self.engine, expire_on_commit=False) as session:
            old = list(
                session.scalars(
                    select(MastodonPendingLink).where(
                        col(MastodonPendingLink.created_at) < not_before
                    )
                )
            )
            for row in old:
                session.delete(row)
            session.commit()
            return old

    def drop_pending_for(self, acct: str) -> list[MastodonPendingLink]:
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(
                session.scalars(
                    select(MastodonPendingLink).where(col(MastodonPendingLink.acct) == acct)
                )
            )
            for row in rows:
                session.delete(row)
            session.commit()
            return rows

    # --- key rotation --------------------------------------------------------------------------

    def rotate_secrets(self, vault: Vault) -> int:
        """Re-encrypt every stored secret not yet under the first key; returns how many."""
        changed = 0
        with Session(self.engine) as session:
            for app in session.scalars(select(MastodonApp)):
                if not vault.is_current(app.client_secret_enc):
                    app.client_secret_enc = vault.rotate(app.client_secret_enc)
                    changed += 1
            for link in session.scalars(select(MastodonLink)):
                if not vault.is_current(link.token_enc):
                    link.token_enc = vault.rotate(link.token_enc)
                    changed += 1
            for pending in session.scalars(select(MastodonPendingLink)):
                if not vault.is_current(pending.token_enc):
                    pending.token_enc = vault.rotate(pending.token_enc)
                    changed += 1
            session.commit()
        return changed

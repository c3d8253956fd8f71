"""People, their linked accounts and consents: the edge's own records (sync, run in threads)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from passerelle_ingest.models import ArchiveImport, LinkedAccount, Person


@dataclass(frozen=True)
class Consents:
    """One flag per purpose; all off until the person turns them on."""

    matching: bool = False
    auto_follow: bool = False
    notifications: bool = False


class People:
    """Reads and writes people and their linked accounts."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, person_id: str) -> Person | None:
        with Session(self.engine, expire_on_commit=False) as db:
            return db.get(Person, person_id)

    def sign_in(self, network: str, account: str, handle: str) -> Person:
        """The person owning this proven account, created at first sign-in."""
        with Session(self.engine, expire_on_commit=False) as db:
            linked = db.exec(
                select(LinkedAccount).where(
                    col(LinkedAccount.network) == network, LinkedAccount.account == account
                )
            ).first()
            if linked is not None:
                linked.handle = handle
                person = db.get(Person, linked.person_id)
                db.commit()
                assert person is not None
                return person
            person = Person(id=uuid.uuid4().hex)
            db.add(person)
            db.flush()  # the person row first: the account refers to it
            db.add(
                LinkedAccount(person_id=person.id, network=network, account=account, handle=handle)
            )
            db.commit()
            db.refresh(person)
            return person

    def link(self, person_id: str, network: str, account: str, handle: str) -> bool:
        """Attach a proven account to a signed-in person; ``False`` if someone else owns it."""
        with Session(self.engine, expire_on_commit=False) as db:
            existing = db.exec(
                select(LinkedAccount).where(
                    col(LinkedAccount.network) == network, LinkedAccount.account == account
                )
            ).first()
            if existing is not None:
                if existing.person_id != person_id:
                    return False
                existing.handle = handle
            else:
                db.execute(
                    delete(LinkedAccount).where(
                        col(LinkedAccount.person_id) == person_id,
                        col(LinkedAccount.network) == network,
                    )
                )
                db.add(
                    LinkedAccount(
                        person_id=person_id, network=network, account=account, handle=handle
                    )
                )
            db.commit()
            return True

    def unlink(self, person_id: str, network: str) -> None:
        with Session(self.engine, expire_on_commit=False) as db:
            db.execute(
                delete(LinkedAccount).where(
                    col(LinkedAccount.person_id) == person_id, col(LinkedAccount.network) == network
                )
            )
            db.commit()

    def accounts(self, person_id: str) -> list[LinkedAccount]:
        with Session(self.engine, expire_on_commit=False) as db:
            return list(
                db.exec(select(LinkedAccount).where(col(LinkedAccount.person_id) == person_id))
            )

    def set_consents(self, person_id: str, consents: Consents) -> int:
        """Store the new consents; returns the new revision number."""
        with Session(self.engine, expire_on_commit=False) as db:
            person = db.get(Person, person_id)
            if person is None:
                raise LookupError(person_id)
            person.consent_matching = consents.matching
            person.consent_auto_follow = consents.auto_follow
            person.consent_notifications = consents.notifications
            person.consent_revision += 1
            db.commit()
            return person.consent_revision

    def erase(self, person_id: str) -> list[str]:
        """Delete the person and everything of theirs here; returns their import ids."""
        with Session(self.engine, expire_on_commit=False) as db:
            imports = list(
                db.exec(select(ArchiveImport.id).where(col(ArchiveImport.person_id) == person_id))
            )
            db.execute(delete(ArchiveImport).where(col(ArchiveImport.person_id) == person_id))
            db.execute(delete(LinkedAccount).where(col(LinkedAccount.person_id) == person_id))
            db.execute(delete(Person).where(col(Person.id) == person_id))
            db.commit()
            return imports

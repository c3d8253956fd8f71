"""Federation: this region's consented directory out, every other region's in.

When ``PASSERELLE_FEDERATION_NATS_URL`` names the region's FEDERATION account
(``docs/federation.md``), matching becomes a :class:`FederatedMatchingService`:

- **Out.** After each event about a person of this region (archive, identity,
  consent, erasure), their directory state is read back from the database and
  published when it changed: a :class:`DirectoryEntry` while they consent to be
  found, have an X id and a linked account; otherwise a
  :class:`DirectoryTombstone` (``erased`` or ``withdrawn``) if an entry had left.
  Publication is conditional on the person's last message (JetStream
  ``Nats-Expected-Last-Subject-Sequence``), so replicas never overwrite a newer
  state with an older one; a failure fails the handler, and the redelivered
  event publishes again.
- **In.** Every other region's entry becomes a person here (``person_id``
  ``federation:<region>:<key>``, no edges, never an owner of matches), found
  by the same indexed lookup as a local newcomer: the people of this region
  whose own archives point at that X id get the match, and their follow is
  requested by this region's sender with this region's credentials. A tombstone
  removes the person and every match towards them, here, as a local erasure does.

Edges, archives and credentials never leave: only what :class:`DirectoryEntry`
holds is published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import bindparam, text

from passerelle_contracts import (
    ArchiveImported,
    ConsentChanged,
    DirectoryAccount,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    IdentityLinked,
    IdentityUnlinked,
    UserErased,
    directory_key,
)
from passerelle_contracts.base import utcnow
from passerelle_matching.ids import claim_to_db, from_db
from passerelle_matching.models import NETWORK_CODES, NETWORK_NAMES, VERIFIED
from passerelle_matching.service import MatchingService
from passerelle_matching.settings import Settings
from passerelle_matching.store import MatchingStore, Outcome, Scope, tombstone_digest
from passerelle_platform.federation import ConcurrentPublishError, FederationLink
from passerelle_platform.runtime import ServiceRuntime

REMOTE_PREFIX = "federation:"
#: How long a handler waits for the federation link before failing (and being redelivered).
LINK_WAIT_SECONDS = 10.0


class FederationSettings(BaseSettings):
    """Federation settings of the matching service (``PASSERELLE_*``)."""

    model_config = SettingsConfigDict(env_prefix="PASSERELLE_", extra="ignore")

    federation_nats_url: SecretStr | None = None
    """The region's FEDERATION account, e.g. ``nats://federation:<password>@nats:4222``.
    Unset: this node is not federated."""


def remote_person_id(region: str, key: str) -> str:
    """How a person of another region is known here."""
    return f"{REMOTE_PREFIX}{region}:{key}"


def is_remote(person_id: str) -> bool:
    return person_id.startswith(REMOTE_PREFIX)


def create_matching_service(runtime: ServiceRuntime, settings: Settings) -> MatchingService:
    """The matching service, federated when ``PASSERELLE_FEDERATION_NATS_URL`` is set."""
    url = FederationSettings().federation_nats_url
    if url is None:
        return MatchingService(runtime, settings)
    return FederatedMatchingService(runtime, settings, url.get_secret_value())


class FederatedStore(MatchingStore):
    """The matching store, plus the directory entries of other regions."""

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


class FederatedMatchingService(MatchingService):
    """Matching, publishing this region's directory and matching everyone else's."""

    store: FederatedStore

    def __init__(self, runtime: ServiceRuntime, settings: Settings, federation_url: str) -> None:
        if runtime.engine is None:
            raise ValueError("the matching service needs its database")
        super().__init__(
            runtime,
            settings,
            FederatedStore(runtime.engine, trust_archive_claims=settings.trust_archive_claims),
        )
        self.link = FederationLink(
            federation_url, settings.region, self.on_directory, name="passerelle-matching"
        )
        self.directory_messages = Counter(
            "passerelle_matching_directory_messages_total",
            "Directory messages published (out) and applied (in), by kind and outcome.",
            ["direction", "kind", "outcome"],
            registry=runtime.metrics.registry,
        )
        runtime.on_connected.append(self.link.start)
        runtime.on_shutdown.append(self.link.stop)

    # --- this region's events, then its directory --------------------------------------

    async def on_archive(self, event: ArchiveImported) -> Outcome:
        outcome = await super().on_archive(event)
        await self.publish_directory([event.person_id], outcome.scope)
        return outcome

    async def on_identity_linked(self, event: IdentityLinked) -> Outcome:
        outcome = await super().on_identity_linked(event)
        await self.publish_directory([event.person_id], outcome.scope)
        return outcome

    async def on_identity_unlinked(self, event: IdentityUnlinked) -> Outcome:
        outcome = await super().on_identity_unlinked(event)
        await self.publish_directory([event.person_id], outcome.scope)
        return outcome

    async def on_consent(self, event: ConsentChanged) -> Outcome:
        outcome = await super().on_consent(event)
        await self.publish_directory([event.person_id], outcome.scope)
        return outcome

    async def on_erasure(self, event: UserErased) -> Outcome:
        outcome = await super().on_erasure(event)
        await self.publish_directory([event.person_id], outcome.scope, gone="erased")
        return outcome

    async def publish_directory(
        self,
        person_ids: Iterable[str],
        scope: Scope | None = None,
        *,
        gone: Literal["erased", "withdrawn"] = "withdrawn",
    ) -> None:
        """Publish what changed in these people's entries (and of others in ``scope``)."""
        people = {p for p in person_ids if not is_remote(p)}
        if scope:
            people.update(
                await asyncio.to_thread(self.store.local_people, scope.owners | scope.targets)
            )
        if not people:
            return
        await asyncio.wait_for(self.link.wait_ready(), LINK_WAIT_SECONDS)
        for person_id in sorted(people):
            for _attempt in range(5):
                try:
                    await self._publish_one(person_id, gone)
                    break
                except ConcurrentPublishError:
                    continue  # another replica published in between: read again

    async def _publish_one(self, person_id: str, gone: Literal["erased", "withdrawn"]) -> None:
        region = self.settings.region
        key = directory_key(region, person_id)
        last = await self.link.last_published(region, key)
        states = await asyncio.to_thread(self.store.directory_entries, region, [person_id])
        wanted = states.get(person_id)
        seq, previous = last if last is not None else (0, None)
        message: DirectoryMessage
        if wanted is not None:
            if isinstance(previous, DirectoryEntry) and _same(previous, wanted):
                return
            message = wanted
        else:
            if not isinstance(previous, DirectoryEntry):
                return
            message = DirectoryTombstone(region=region, key=key, reason=gone, sent_at=utcnow())
        await self.link.publish(message, expected_last_seq=seq)
        self.directory_messages.labels("out", message.type, "published").inc()

    # --- other regions' directory --------------------------------------------------------

    async def on_directory(self, message: DirectoryMessage) -> None:
        """An entry or tombstone of another region (verified by the link), in order."""
        if isinstance(message, DirectoryEntry):
            outcome = await asyncio.to_thread(self.store.apply_remote_entry, message)
        else:
            outcome = await asyncio.to_thread(
                self.store.forget_remote, message.region, message.key, message.sent_at.timestamp()
            )
        self.directory_messages.labels(
            "in", message.type, "applied" if outcome.applied else outcome.detail or "ignored"
        ).inc()
        await self.flush(outcome.scope)
        # Trust of this region's people may have changed (an X id claimed in two regions).
        await self.publish_directory((), Scope(targets=set(outcome.scope.targets)))


def _same(a: DirectoryEntry, b: DirectoryEntry) -> bool:
    return (a.x_account_id, a.trust, a.accounts) == (b.x_account_id, b.trust, b.accounts)

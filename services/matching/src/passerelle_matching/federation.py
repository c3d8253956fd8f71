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
holds is published. The database side (``directory_entries``, ``local_people``,
``apply_remote_entry``, ``forget_remote``) is public API of
:class:`~passerelle_matching.store.MatchingStore`, beside the rules it shares
with local events; this module holds no SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Literal

from prometheus_client import Counter
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from passerelle_contracts import (
    ArchiveImported,
    ConsentChanged,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    IdentityLinked,
    IdentityUnlinked,
    UserErased,
    directory_key,
)
from passerelle_contracts.base import utcnow
from passerelle_matching.service import MatchingService
from passerelle_matching.settings import Settings
from passerelle_matching.store import (
    REMOTE_PREFIX,
    Outcome,
    Scope,
    is_remote,
    remote_person_id,
)
from passerelle_platform.federation import ConcurrentPublishError, FederationLink
from passerelle_platform.runtime import ServiceRuntime

#: How long a handler waits for the federation link before failing (and being redelivered).
LINK_WAIT_SECONDS = 10.0

__all__ = [
    "REMOTE_PREFIX",
    "FederatedMatchingService",
    "create_matching_service",
    "is_remote",
    "remote_person_id",
]


class FederationSettings(BaseSettings):
    """Federation settings of the matching service (``PASSERELLE_*``)."""

    model_config = SettingsConfigDict(env_prefix="PASSERELLE_", extra="ignore")

    federation_nats_url: SecretStr | None = None
    """The region's FEDERATION account, e.g. ``nats://federation:<password>@nats:4222``.
    Unset: this node is not federated."""


def create_matching_service(runtime: ServiceRuntime, settings: Settings) -> MatchingService:
    """The matching service, federated when ``PASSERELLE_FEDERATION_NATS_URL`` is set."""
    url = FederationSettings().federation_nats_url
    if url is None:
        return MatchingService(runtime, settings)
    return FederatedMatchingService(runtime, settings, url.get_secret_value())


class FederatedMatchingService(MatchingService):
    """Matching, publishing this region's directory and matching everyone else's."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, federation_url: str) -> None:
        super().__init__(runtime, settings)
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

    async def on_archives(self, events: Sequence[ArchiveImported]) -> list[Outcome | BaseException]:
        results = await super().on_archives(events)
        scope = Scope()
        people = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, Outcome):
                people.append(event.person_id)
                scope.owners |= result.scope.owners
                scope.targets |= result.scope.targets
        await self.publish_directory(people, scope)
        return results

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

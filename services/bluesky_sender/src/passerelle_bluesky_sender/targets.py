"""Is a target account still there? Checked once per target and remembered.

A PDS accepts a follow record for any well-formed DID, so a deleted account would be
"followed" silently. Before following, the sender looks the target up: its DID
document (404 → ``not_found``, 410 → ``deleted``), then
``com.atproto.sync.getRepoStatus`` on its PDS (``RepoNotFound`` → ``not_found``;
``active: false`` → its ``status``: ``deactivated``, ``takendown``, ``suspended``…).
Targets are people who linked their account here, so there are about as many
distinct targets as people: the answers are cached (``bluesky_target``) for a day.
An inconclusive check (directory or PDS unreachable) does not block the follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.identity import IdentityError, IdentityResolver
from passerelle_bluesky_sender.store import Store
from passerelle_bluesky_sender.xrpc import NotSentError, UncertainError, XrpcClient, XrpcError

ACTIVE = "active"


def failure_reason(status: str) -> str | None:
    """The ``follow.result`` reason for a target status, ``None`` if it can be followed."""
    return None if status == ACTIVE else f"target_{status}"


class TargetChecker:
    def __init__(
        self,
        store: Store,
        resolver: IdentityResolver,
        xrpc: XrpcClient,
        clock: Clock,
        *,
        ttl: float,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.xrpc = xrpc
        self.clock = clock
        self.ttl = ttl
        self._limit = asyncio.Semaphore(concurrency)
        self.checks = 0

    async def statuses(self, dids: Sequence[str]) -> dict[str, str]:
        """Known statuses of ``dids`` (those whose check was inconclusive are left out)."""
        if not dids:
            return {}
        now = self.clock.now()
        cached = await asyncio.to_thread(self.store.target_statuses, dids, now - self.ttl)
        missing = sorted(set(dids) - set(cached))
        if not missing:
            return cached
        found = await asyncio.gather(*(self._check(did) for did in missing))
        fresh = {did: status for did, status in zip(missing, found, strict=True) if status}
        await asyncio.to_thread(self.store.save_target_statuses, fresh, self.clock.now())
        return {**cached, **fresh}

    async def _check(self, did: str) -> str | None:
        async with self._limit:
            self.checks += 1
            try:
                found, doc = await self.resolver.lookup(did)
                if doc is None:
                    return found
                pds = self.resolver.pds_endpoint(doc)
            except IdentityError as error:
                return "not_found" if error.code == "no_pds" else None
            try:
                response = await self.xrpc.query(
                    pds, "com.atproto.sync.getRepoStatus", {"did": did}
                )
            except XrpcError as error:
                if error.error == "RepoNotFound":
                    return "not_found"
                return None
            except (NotSentError, UncertainError):
                return None
            if response.body.get("active") is False:
                status = response.body.get("status")
                return status if isinstance(status, str) and status.isidentifier() else "inactive"
            return ACTIVE

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
        self._memo: dict[str, tuple[str, float]] = {}
        self._checking: dict[str, asyncio.Future[str | None]] = {}
        self.checks = 0

    async def statuses(self, dids: Sequence[str]) -> dict[str, str]:
        """Known statuses of ``dids`` (those whose check was inconclusive are left out).

        Remembered in memory and in the database; a target being checked for one account
        is not checked again for another at the same time."""
        if not dids:
            return {}
        now = self.clock.now()
        out: dict[str, str] = {}
        unknown: list[str] = []
        for did in set(dids):
            memo = self._memo.get(did)
            if memo is not None and memo[1] > now - self.ttl:
                out[did] = memo[0]
            else:
                unknown.append(did)
        if unknown:
            cached = await asyncio.to_thread(self.store.target_statuses, unknown, now - self.ttl)
            self._remember(cached, now)
            out.update(cached)
            unknown = [d for d in unknown if d not in cached]
        if not unknown:
            return out
        theirs = {d: self._checking[d] for d in unknown if d in self._checking}
        mine = [d for d in unknown if d not in theirs]
        loop = asyncio.get_running_loop()
        for did in mine:
            self._checking[did] = loop.create_future()
        results: dict[str, str | None] = {}
        try:
            found = await asyncio.gather(*(self._check(did) for did in mine))
            results = dict(zip(mine, found, strict=True))
        finally:
            for did in mine:
                future = self._checking.pop(did)
                if not future.done():
                    future.set_result(results.get(did))
        fresh = {did: status for did, status in results.items() if status}
        if fresh:
            self._remember(fresh, self.clock.now())
            await asyncio.to_thread(self.store.save_target_statuses, fresh, self.clock.now())
        out.update(fresh)
        for did, future in theirs.items():  # being checked for another account
            status = await future
            if status:
                out[did] = status
        return out

    def _remember(self, statuses: dict[str, str], now: float) -> None:
        if len(self._memo) > 500_000:
            self._memo.clear()
        for did, status in statuses.items():
            self._memo[did] = (status, now)

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

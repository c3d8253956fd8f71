"""Linking and unlinking a Bluesky account (request/reply from the edge).

``rpc.bluesky.link`` (:class:`BlueskyLinkRequest` → :class:`LinkReply`):

1. the identifier (handle or DID) is resolved to a DID, its DID document to a PDS;
2. ``createSession`` on that PDS with the DID and the app password proves the
   credential (a main password is refused: its session is deleted at once);
3. with ``person_id = None`` nothing is stored: the reply only names the proven account
   (first sign-in: the edge creates the person, then links again with its id);
4. otherwise the app password and the session are stored encrypted, the person's
   previous link (another DID) is replaced, and ``identity.linked`` is published.

``rpc.bluesky.unlink`` (:class:`UnlinkRequest` → :class:`UnlinkReply`): the
credentials are deleted (and our session revoked at the PDS), the person's open
follows fail with ``unlinked``, ``identity.unlinked`` is published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress

import structlog

from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.crypto import CredentialCipher, CredentialError
from passerelle_bluesky_sender.identity import IdentityError, IdentityResolver
from passerelle_bluesky_sender.metrics import NETWORK, SenderMetrics
from passerelle_bluesky_sender.scheduler import Scheduler
from passerelle_bluesky_sender.sessions import ACCOUNT_ERRORS, Sessions, is_app_password_session
from passerelle_bluesky_sender.store import AccountRow, LinkConflictError, Store
from passerelle_bluesky_sender.xrpc import NotSentError, UncertainError, XrpcClient, XrpcError
from passerelle_contracts import Event, IdentityLinked, IdentityUnlinked
from passerelle_contracts.rpc import (
    BlueskyLinkRequest,
    LinkReply,
    RpcError,
    UnlinkReply,
    UnlinkRequest,
)

UNLINK_SUBJECT = "rpc.bluesky.unlink"

Publish = Callable[[Event], Awaitable[object]]


class Linker:
    def __init__(
        self,
        *,
        resolver: IdentityResolver,
        xrpc: XrpcClient,
        store: Store,
        cipher: CredentialCipher,
        clock: Clock,
        scheduler: Scheduler,
        sessions: Sessions,
        publish: Publish,
        on_results: Callable[[], None],
        region: str,
        metrics: SenderMetrics,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.resolver = resolver
        self.xrpc = xrpc
        self.store = store
        self.cipher = cipher
        self.clock = clock
        self.scheduler = scheduler
        self.sessions = sessions
        self.publish = publish
        self.on_results = on_results
        self.region = region
        self.metrics = metrics
        self.log = log

    def _error(self, code: str, message: str) -> LinkReply:
        self.metrics.links.labels(NETWORK, code).inc()
        self.log.info("link refused", code=code)
        return LinkReply(
            region=self.region, network=NETWORK, error=RpcError(code=code, message=message)
        )

    async def link(self, request: BlueskyLinkRequest) -> LinkReply:
        try:
            identity = await self.resolver.resolve(request.identifier)
        except IdentityError as error:
            return self._error(error.code, error.message)
        password = request.app_password.get_secret_value()
        try:
            response = await self.xrpc.procedure(
                identity.pds_url,
                "com.atproto.server.createSession",
                {"identifier": identity.did, "password": password},
            )
        except XrpcError as error:
            if error.status == 401 and error.error == "AuthFactorTokenRequired":
                return self._error(
                    "not_app_password",
                    "use an app password (Bluesky: Settings → Privacy and security → "
                    "App passwords), not your main password",
                )
            if error.status == 401:
                return self._error(
                    "wrong_password", "this app password does not open this Bluesky account"
                )
            if error.error in ACCOUNT_ERRORS:
                return self._error(
                    "account_unavailable", "this Bluesky account is suspended or deactivated"
                )
            if error.is_rate_limited:
                wait = self._wait_minutes(error)
                return self._error(
                    "rate_limited",
                    f"too many sign-ins to this account; try again in {wait} minutes",
                )
            return self._error(
                "pds_unreachable", f"the account's server refused the sign-in (HTTP {error.status})"
            )
        except (NotSentError, UncertainError):
            return self._error(
                "pds_unreachable", "the account's server cannot be reached; try again later"
            )
        body = response.body
        access, refresh = body.get("accessJwt"), body.get("refreshJwt")
        if not isinstance(access, str) or not isinstance(refresh, str):
            return self._error("pds_unreachable", "the account's server gave no session")
        if body.get("did") != identity.did:
            await self._delete_session(identity.pds_url, refresh)
            return self._error("identity_mismatch", "the server signed in another account")
        if not is_app_password_session(access):
            await self._delete_session(identity.pds_url, refresh)
            return self._error(
                "not_app_password",
                "use an app password (Bluesky: Settings → Privacy and security → "
                "App passwords), not your main password",
            )
        if body.get("active") is False:
            await self._delete_session(identity.pds_url, refresh)
            return self._error("account_unavailable", "this Bluesky account is deactivated")
        handle = body.get("handle") if isinstance(body.get("handle"), str) else identity.handle
        handle = handle or identity.did
        if request.person_id is None:
            await self._delete_session(identity.pds_url, refresh)
            self.metrics.links.labels(NETWORK, "verified").inc()
            return LinkReply(
                region=self.region, network=NETWORK, account=identity.did, handle=handle
            )

        person_id = request.person_id
        previous = await asyncio.to_thread(self.store.account_of_person, person_id)
        now = self.clock.now()
        async with AsyncExitStack() as stack:
            for did in sorted({identity.did} | ({previous.did} if previous else set())):
                await stack.enter_async_context(self.scheduler.exclusive(did))
            try:
                change = await asyncio.to_thread(
                    lambda: self.store.link(
                        did=identity.did,
                        person_id=person_id,
                        handle=handle,
                        pds_url=identity.pds_url,
                        app_password=self.cipher.encrypt(password),
                        access_jwt=self.cipher.encrypt(access),
                        refresh_jwt=self.cipher.encrypt(refresh),
                        key_id=self.cipher.key_id,
                        access_expires_at=self.sessions.expiry(access, now),
                        now=now,
                        login_at=now,
                    )
                )
            except LinkConflictError:
                await self._delete_session(identity.pds_url, refresh)
                return self._error(
                    "linked_to_another_person",
                    "this Bluesky account is already linked to another person here",
                )
            self.scheduler.forget(identity.did)  # the next turn loads the new session
            if change.replaced_did is not None:
                self.scheduler.forget(change.replaced_did)
        if change.replaced_did is not None and previous is not None:
            await self._revoke(previous)
            await self.publish(
                IdentityUnlinked(
                    region=self.region,
                    person_id=person_id,
                    network=NETWORK,
                    account=change.replaced_did,
                    reason="unlinked",
                )
            )
            self.on_results()
        await self.publish(
            IdentityLinked(
                region=self.region,
                person_id=person_id,
                network=NETWORK,
                account=identity.did,
                handle=handle,
            )
        )
        self.scheduler.recheck([identity.did])
        self.metrics.links.labels(NETWORK, "linked").inc()
        self.log.info("account linked", relinked=change.reactivated)
        return LinkReply(region=self.region, network=NETWORK, account=identity.did, handle=handle)

    async def unlink(self, request: UnlinkRequest) -> UnlinkReply:
        if request.network != NETWORK:
            return UnlinkReply(region=self.region, removed=False)
        account = await asyncio.to_thread(self.store.account_of_person, request.person_id)
        if account is None:
            return UnlinkReply(region=self.region, removed=False)
        async with self.scheduler.exclusive(account.did):
            removed = await asyncio.to_thread(
                self.store.unlink, request.person_id, self.clock.now()
            )
            self.scheduler.forget(account.did)
        if removed is None:
            return UnlinkReply(region=self.region, removed=False)
        await self._revoke(removed)
        await self.publish(
            IdentityUnlinked(
                region=self.region,
                person_id=request.person_id,
                network=NETWORK,
                account=removed.did,
                reason="unlinked",
            )
        )
        self.on_results()
        self.log.info("account unlinked")
        return UnlinkReply(region=self.region, removed=True)

    async def erase(self, person_id: str) -> bool:
        """Forget the person (``user.erased``): returns whether they had a link."""
        account = await asyncio.to_thread(self.store.account_of_person, person_id)
        if account is None:
            await asyncio.to_thread(self.store.erase, person_id)
            return False
        async with self.scheduler.exclusive(account.did):
            erased = await asyncio.to_thread(self.store.erase, person_id)
            self.scheduler.forget(account.did)
        if erased is not None:
            await self._revoke(erased)
        self.on_results()
        return True

    async def _revoke(self, account: AccountRow) -> None:
        """Best effort: end our session at the PDS (its refresh token stops working)."""
        if account.refresh_jwt is None:
            return
        try:
            refresh = self.cipher.decrypt(account.refresh_jwt)
        except CredentialError:
            return
        await self._delete_session(account.pds_url, refresh)

    async def _delete_session(self, pds_url: str, refresh_jwt: str) -> None:
        with suppress(XrpcError, NotSentError, UncertainError):
            await self.xrpc.procedure(
                pds_url, "com.atproto.server.deleteSession", token=refresh_jwt
            )

    def _wait_minutes(self, error: XrpcError) -> int:
        now = self.clock.now()
        if error.rate_limit is not None and error.rate_limit.reset > now:
            return max(1, round((error.rate_limit.reset - now) / 60))
        if error.retry_after is not None:
            return max(1, round(error.retry_after / 60))
        return 5

"""Linking a Mastodon account by OAuth on any instance (the edge drives the browser).

1. ``authorize``: check the instance speaks the Mastodon API, register our app
   there once per redirect URI (cached, secret encrypted), and answer the URL to
   send the browser to — narrowest scopes first, the broad ones on servers known
   to refuse or ignore granular scopes. The edge made ``state`` and checks it.
2. ``link``: exchange the code, read the account (``verify_credentials``), store
   the token encrypted, publish ``identity.linked`` with the full ``user@domain``.
   Without a person (first sign-in) the verified account waits a few minutes for
   the edge to send the same request again with the person's id; a repeated
   request with the same code answers the same (no second exchange).
3. ``unlink`` / erasure: revoke the token at the server (best effort) and forget it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from urllib.parse import urlencode, urlsplit

import structlog

from passerelle_contracts import IdentityLinked, IdentityUnlinked
from passerelle_contracts.rpc import (
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MastodonLinkRequest,
    RpcError,
    UnlinkReply,
    UnlinkRequest,
)
from passerelle_mastodon_sender.api import AppCredentials, AppRejectedError, MastodonApi
from passerelle_mastodon_sender.clock import Clock
from passerelle_mastodon_sender.db import Database
from passerelle_mastodon_sender.errors import (
    InstanceUnreachableError,
    MastodonError,
    OutOfScopeError,
    RateLimitedError,
    RejectedError,
)
from passerelle_mastodon_sender.following import Follower, Publish
from passerelle_mastodon_sender.instances import InvalidInstanceError, full_acct, normalize_domain
from passerelle_mastodon_sender.ledger import Ledger
from passerelle_mastodon_sender.models import (
    MastodonApp,
    MastodonInstance,
    MastodonLink,
    MastodonPendingLink,
)
from passerelle_mastodon_sender.settings import Settings
from passerelle_mastodon_sender.store import Store
from passerelle_mastodon_sender.vault import Vault

#: Calls a new token makes while linking (``verify_credentials``).
LINK_CALLS = 1

MESSAGES = {
    "unknown_instance": "No Mastodon server answers at {domain}. Check the address.",
    "instance_unreachable": "{domain} did not answer properly just now; try again in a moment.",
    "not_mastodon": "{domain} does not speak the Mastodon API.",
    "registration_refused": "{domain} refused to register passerelle.",
    "invalid_code": "This authorization expired or was already used; please start again.",
    "token_revoked": "{domain} no longer accepts passerelle's access; please link again.",
    "reauthorize": (
        "{domain} needs broader permissions than passerelle first asked for; "
        "please approve passerelle again."
    ),
    "invalid_redirect_uri": "The redirect URI must be an absolute http(s) URL.",
}


class LinkFailedError(Exception):
    """An expected failure of linking, with the code told to the edge."""

    def __init__(self, code: str, domain: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.domain = domain

    def rpc(self) -> RpcError:
        template = MESSAGES.get(self.code, "Linking failed ({code}).")
        return RpcError(code=self.code, message=template.format(domain=self.domain, code=self.code))


def _rpc_code(error: MastodonError) -> str:
    if isinstance(error, RateLimitedError | InstanceUnreachableError):
        return "instance_unreachable"
    if isinstance(error, OutOfScopeError):
        return "reauthorize"
    return error.code


class Linker:
    """The request/reply side of the service: authorize, link, unlink, erase."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        db: Database,
        store: Store,
        ledger: Ledger,
        api: MastodonApi,
        vault: Vault,
        follower: Follower,
        publish: Publish,
        region: str,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.ledger = ledger
        self.api = api
        self.vault = vault
        self.follower = follower
        self.publish = publish
        self.region = region
        self.log = log

    # --- authorize -----------------------------------------------------------------------------

    async def authorize(self, request: MastodonAuthorizeRequest) -> MastodonAuthorizeReply:
        try:
            domain = self._domain(request.instance)
            _check_redirect_uri(request.redirect_uri)
            instance = await self._instance(domain)
            app = await self._app(instance, request.redirect_uri)
        except LinkFailedError as failure:
            return MastodonAuthorizeReply(region=self.region, error=failure.rpc())
        scopes = self._scopes(instance)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": app.client_id,
                "redirect_uri": request.redirect_uri,
                "scope": scopes,
                "state": request.state,
            }
        )
        url = f"{instance.authorize_endpoint}?{query}"
        return MastodonAuthorizeReply(region=self.region, authorize_url=url)

    def _domain(self, text: str) -> str:
        try:
            return normalize_domain(text)
        except InvalidInstanceError:
            raise LinkFailedError("unknown_instance", text.strip()[:100]) from None

    def _scopes(self, instance: MastodonInstance) -> str:
        s = self.settings
        return s.mastodon_scopes if instance.granular_scopes else s.mastodon_fallback_scopes

    async def _instance(self, domain: str) -> MastodonInstance:
        """The instance's description, probed again when old."""
        known = await self.db.run(self.store.instance, domain)
        now = self.clock.now()
        if (
            known is not None
            and now - known.checked_at < self.settings.mastodon_instance_cache_seconds
        ):
            return known
        try:
            info = await self.api.instance_info(domain)
            endpoints = await self.api.oauth_endpoints(domain)
        except MastodonError as error:
            raise LinkFailedError(_rpc_code(error), domain) from error
        instance = MastodonInstance(
            domain=domain,
            acct_domain=info.acct_domain,
            version=info.version[:200],
            authorize_endpoint=endpoints.authorize,
            token_endpoint=endpoints.token,
            revoke_endpoint=endpoints.revoke,
            granular_scopes=known.granular_scopes if known is not None else True,
            checked_at=now,
        )
        return await self.db.run(self.store.save_instance, instance)

    async def _app(self, instance: MastodonInstance, redirect_uri: str) -> MastodonApp:
        """Our app on the instance for this redirect URI, registered when missing.

        A server that refuses granular scopes at registration is asked for the broad
        ones, and remembered as such (``instance.granular_scopes`` turns false).
        """
        app = await self.db.run(self.store.app, instance.domain, redirect_uri)
        needed = set(self._scopes(instance).split())
        if app is not None and needed <= set(app.scopes.split()):
            return app
        s = self.settings
        wanted = s.mastodon_fallback_scopes
        if instance.granular_scopes:
            # Both sets at once: a later fallback needs no second registration.
            wanted = " ".join(dict.fromkeys([*s.mastodon_scopes.split(), *wanted.split()]))
        try:
            credentials = await self._register(instance.domain, redirect_uri, wanted)
        except RejectedError:
            if not instance.granular_scopes:
                raise LinkFailedError("registration_refused", instance.domain) from None
            # The server does not know granular scopes: broad ones from now on.
            await self.db.run(self.store.refuse_granular, instance.domain)
            instance.granular_scopes = False
            wanted = s.mastodon_fallback_scopes
            try:
                credentials = await self._register(instance.domain, redirect_uri, wanted)
            except RejectedError:
                raise LinkFailedError("registration_refused", instance.domain) from None
        self.log.info("oauth app registered", instance=instance.domain, scopes=wanted)
        return await self.db.run(
            self.store.save_app,
            MastodonApp(
                domain=instance.domain,
                redirect_uri=redirect_uri,
                client_id=credentials.client_id,
                client_secret_enc=self.vault.encrypt(credentials.client_secret),
                scopes=wanted,
                created_at=self.clock.now(),
            ),
        )

    async def _register(self, domain: str, redirect_uri: str, scopes: str) -> AppCredentials:
        try:
            return await self.api.register_app(
                domain,
                client_name=self.settings.mastodon_client_name,
                redirect_uri=redirect_uri,
                scopes=scopes,
                website=self.settings.mastodon_client_website,
            )
        except RejectedError:
            raise
        except MastodonError as error:
            raise LinkFailedError(_rpc_code(error), domain) from error

    # --- link ----------------------------------------------------------------------------------

    async def link(self, request: MastodonLinkRequest) -> LinkReply:
        try:
            link = await self._link(request)
        except LinkFailedError as failure:
            return LinkReply(region=self.region, network="mastodon", error=failure.rpc())
        return LinkReply(region=self.region, network="mastodon", account=link, handle=link)

    async def _link(self, request: MastodonLinkRequest) -> str:
        domain = self._domain(request.instance)
        code = request.code.get_secret_value()
        code_hash = hashlib.sha256(
            "\x1f".join((domain, request.redirect_uri, code)).encode()
        ).hexdigest()
        person_id = request.person_id

        done = await self.db.run(self.store.link_by_code, code_hash)
        if done is not None:
            if person_id is not None and done.person_id != person_id:
                raise LinkFailedError("invalid_code", domain)
            await self._announce(done)
            return done.acct

        not_before = time.time() - self.settings.mastodon_pending_link_seconds
        for expired in await self.db.run(self.store.expire_pending, not_before):
            await self._revoke(expired.domain, expired.app_id, expired.token_enc)
        pending = await self.db.run(self.store.pending, code_hash, not_before)
        if pending is None:
            pending = await self._exchange(domain, code, request.redirect_uri, code_hash)
        if person_id is None:
            await self.db.run(self.store.save_pending, pending)
            return pending.acct

        link = MastodonLink(
            person_id=person_id,
            acct=pending.acct,
            domain=pending.domain,
            account_id=pending.account_id,
            app_id=pending.app_id,
            token_enc=pending.token_enc,
            scopes=pending.scopes,
            code_hash=code_hash,
            followers_count=pending.followers_count,
            following_count=pending.following_count,
            profile_at=self.clock.now(),
            linked_at=self.clock.now(),
            # The token already made a call (verify_credentials): the follower's
            # first window starts with it, or it could make one call too many.
            requests_window_end=self._window_end(self.clock.now()),
            requests_reserved=LINK_CALLS,
        )
        await self.follower.forget(person_id)
        bound = await self.db.run(self.store.bind, link)
        await self.db.run(self.store.drop_pending, code_hash)
        if bound.previous is not None:
            await self._revoke(
                bound.previous.domain, bound.previous.app_id, bound.previous.token_enc
            )
        if bound.displaced is not None:
            displaced = bound.displaced
            await self.follower.forget(displaced.person_id)
            await self._close(displaced.person_id, "unlinked")
            await self.publish(
                IdentityUnlinked(
                    region=self.region,
                    person_id=displaced.person_id,
                    network="mastodon",
                    account=displaced.acct,
                    reason="unlinked",
                )
            )
        self.log.info("mastodon account linked", person_id=person_id, instance=domain)
        await self._announce(link)
        self.follower.wake([person_id])
        return link.acct

    def _window_end(self, now: float) -> float:
        period = self.settings.mastodon_requests_window_seconds
        return (math.floor(now / period) + 1) * period

    async def _exchange(
        self, domain: str, code: str, redirect_uri: str, code_hash: str
    ) -> MastodonPendingLink:
        """Code → token → the account it belongs to."""
        instance = await self._instance(domain)
        app = await self.db.run(self.store.app, domain, redirect_uri)
        if app is None:
            raise LinkFailedError("invalid_code", domain)
        credentials = AppCredentials(app.client_id, self.vault.decrypt(app.client_secret_enc))
        try:
            token = await self.api.exchange_code(
                domain,
                instance.token_endpoint,
                credentials,
                code=code,
                redirect_uri=redirect_uri,
                scopes=self._scopes(instance),
            )
        except AppRejectedError:
            assert app.id is not None
            await self.db.run(self.store.forget_app, app.id)
            raise LinkFailedError("invalid_code", domain) from None
        except MastodonError as error:
            raise LinkFailedError(_rpc_code(error), domain) from error
        try:
            reply = await self.api.verify_credentials(domain, token.token)
        except OutOfScopeError:
            # Granular scopes accepted, then not honoured: broad ones from now on.
            await self.db.run(self.store.refuse_granular, domain)
            await self.api.revoke_token(domain, instance.revoke_endpoint, credentials, token.token)
            self.log.info("granular scopes not honoured; asking again", instance=domain)
            raise LinkFailedError("reauthorize", domain) from None
        except MastodonError as error:
            raise LinkFailedError(_rpc_code(error), domain) from error
        data = reply.data if isinstance(reply.data, dict) else {}
        username = str(data.get("username") or data.get("acct") or "")
        if not username or "id" not in data:
            raise LinkFailedError("not_mastodon", domain)
        assert app.id is not None
        return MastodonPendingLink(
            code_hash=code_hash,
            domain=domain,
            acct=full_acct(username, instance.acct_domain),
            account_id=str(data["id"]),
            app_id=app.id,
            token_enc=self.vault.encrypt(token.token),
            scopes=token.scopes,
            followers_count=int(data.get("followers_count") or 0),
            following_count=int(data.get("following_count") or 0),
            created_at=time.time(),
        )

    async def _announce(self, link: MastodonLink) -> None:
        await self.publish(
            IdentityLinked(
                region=self.region,
                person_id=link.person_id,
                network="mastodon",
                account=link.acct,
                handle=link.acct,
            )
        )

    # --- unlink and erasure --------------------------------------------------------------------

    async def unlink(self, request: UnlinkRequest) -> UnlinkReply:
        if request.network != "mastodon":
            return UnlinkReply(region=self.region, removed=False)
        await self.follower.forget(request.person_id)
        link = await self.db.run(self.store.remove_link, request.person_id)
        if link is None:
            return UnlinkReply(region=self.region, removed=False)
        await self._close(request.person_id, "unlinked")
        await self._revoke(link.domain, link.app_id, link.token_enc)
        await self.publish(
            IdentityUnlinked(
                region=self.region,
                person_id=link.person_id,
                network="mastodon",
                account=link.acct,
                reason="unlinked",
            )
        )
        self.log.info("mastodon account unlinked", person_id=request.person_id)
        return UnlinkReply(region=self.region, removed=True)

    async def erase(self, person_id: str) -> None:
        """Forget the person: link, token (revoked), ledger, and follows aimed at them."""
        await self.follower.forget(person_id)
        link = await self.db.run(self.store.remove_link, person_id)
        acct = link.acct if link is not None else None
        await self.db.run(self.ledger.erase, person_id, acct)
        if link is not None:
            for pending in await self.db.run(self.store.drop_pending_for, link.acct):
                await self._revoke(pending.domain, pending.app_id, pending.token_enc)
            await self._revoke(link.domain, link.app_id, link.token_enc)
        self.log.info("person erased", person_id=person_id)

    async def _close(self, person_id: str, reason: str) -> None:
        await self.follower.fail_open(person_id, reason)

    async def _revoke(self, domain: str, app_id: int, token_enc: str) -> None:
        """Ask the server to forget a token; never fails (we forget it anyway)."""
        try:
            app = await self.db.run(self.store.app_by_id, app_id)
            instance = await self.db.run(self.store.instance, domain)
            if app is None or instance is None:
                return
            credentials = AppCredentials(app.client_id, self.vault.decrypt(app.client_secret_enc))
            token = self.vault.decrypt(token_enc)
            revoked = await asyncio.wait_for(
                self.api.revoke_token(domain, instance.revoke_endpoint, credentials, token),
                timeout=self.settings.mastodon_http_timeout_seconds,
            )
        except Exception as error:  # noqa: BLE001 - best effort by design
            self.log.info(
                "token not revoked at the server", instance=domain, error=type(error).__name__
            )
            return
        if not revoked:
            self.log.info("token not revoked at the server", instance=domain)


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.fragment:
        raise LinkFailedError("invalid_redirect_uri")

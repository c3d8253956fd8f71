"""Sessions with each account's PDS: reuse, refresh, log in again only when needed.

``createSession`` is limited to 30 per 5 minutes and 300 per day per account, so a
session is kept (encrypted) and refreshed with ``refreshSession`` (not counted in that
budget). Only when the refresh token is refused does the sender log in again with the
stored app password, within its own count of logins. A login refused for a wrong
password means the app password was revoked: the link is broken.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from passerelle_bluesky_sender.budget import login_budget
from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.crypto import CredentialCipher, CredentialError
from passerelle_bluesky_sender.settings import Settings
from passerelle_bluesky_sender.store import AccountRow, Store
from passerelle_bluesky_sender.xrpc import (
    NotSentError,
    UncertainError,
    XrpcClient,
    XrpcError,
    XrpcResponse,
)

#: Errors of createSession/refreshSession meaning the account itself cannot be used.
ACCOUNT_ERRORS = {
    "AccountTakedown": "account_takendown",
    "AccountDeactivated": "account_deactivated",
    "RepoDeactivated": "account_deactivated",
    "RepoTakendown": "account_takendown",
    "RepoSuspended": "account_suspended",
}


def jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT; empty if it cannot be read."""
    try:
        payload = token.split(".")[1]
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_lifetime(token: str, default: float) -> float:
    """Seconds an access token lives (``exp - iat``), or ``default``."""
    claims = jwt_claims(token)
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
        return float(exp - iat)
    return default


def is_app_password_session(access_jwt: str) -> bool:
    """True when the session was made with an app password (scope ``com.atproto.appPass``)."""
    scope = jwt_claims(access_jwt).get("scope")
    return isinstance(scope, str) and "appPass" in scope


class SessionBrokenError(Exception):
    """The credential no longer works (revoked app password, suspended account)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionUnavailableError(Exception):
    """No session now; try again at ``until`` (login budget, 429, PDS unreachable)."""

    def __init__(self, until: float, why: str) -> None:
        super().__init__(why)
        self.until = until
        self.why = why


@dataclass
class Session:
    did: str
    pds_url: str
    access_jwt: str
    refresh_jwt: str
    expires_at: float
    issued_at: float


class Sessions:
    """Live sessions per account, backed by the encrypted copies in the database."""

    def __init__(
        self,
        store: Store,
        xrpc: XrpcClient,
        cipher: CredentialCipher,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.store = store
        self.xrpc = xrpc
        self.cipher = cipher
        self.clock = clock
        self.settings = settings
        self._live: dict[str, Session] = {}
        self.logins = 0
        self.refreshes = 0

    def forget(self, did: str) -> None:
        self._live.pop(did, None)

    def expiry(self, access_jwt: str, now: float) -> float:
        lifetime = token_lifetime(access_jwt, default=self.settings.bluesky_session_max_age_seconds)
        lifetime = min(lifetime, self.settings.bluesky_session_max_age_seconds)
        return now + lifetime

    def _fresh(self, session: Session, now: float) -> bool:
        return now < session.expires_at - min(
            self.settings.bluesky_session_refresh_margin_seconds,
            (session.expires_at - session.issued_at) / 2,
        )

    def adopt(self, account: AccountRow, access_jwt: str, refresh_jwt: str) -> None:
        """Use a session just made (at link time)."""
        now = self.clock.now()
        self._live[account.did] = Session(
            account.did, account.pds_url, access_jwt, refresh_jwt, self.expiry(access_jwt, now), now
        )

    async def get(self, account: AccountRow, *, force_refresh: bool = False) -> Session:
        """A usable session for the account (refreshing or logging in as needed)."""
        now = self.clock.now()
        session = self._live.get(account.did)
        if session is None and account.access_jwt and account.refresh_jwt:
            try:
                access = self.cipher.decrypt(account.access_jwt)
                refresh = self.cipher.decrypt(account.refresh_jwt)
            except CredentialError:
                access = refresh = ""
            if access and refresh:
                issued = account.session_issued_at or now
                expires = account.access_expires_at or issued
                session = Session(account.did, account.pds_url, access, refresh, expires, issued)
                self._live[account.did] = session
        if session is not None and not force_refresh and self._fresh(session, now):
            return session
        if session is not None:
            refreshed = await self._refresh(account, session)
            if refreshed is not None:
                return refreshed
        # No session, or its refresh token was refused: log in with the app password.
        return await self._login(account)

    async def _refresh(self, account: AccountRow, session: Session) -> Session | None:
        now = self.clock.now()
        try:
            response = await self.xrpc.procedure(
                account.pds_url, "com.atproto.server.refreshSession", token=session.refresh_jwt
            )
        except XrpcError as error:
            if error.error in ACCOUNT_ERRORS:
                raise SessionBrokenError(ACCOUNT_ERRORS[error.error]) from None
            if error.is_rate_limited:
                raise SessionUnavailableError(
                    self._reset_of(error, now), "refresh rate limited"
                ) from None
            if error.status in (400, 401):
                self._live.pop(account.did, None)
                return None  # refresh token expired or revoked: log in again
            raise SessionUnavailableError(
                now + self.settings.bluesky_retry_base_seconds, "refresh refused"
            ) from None
        except (NotSentError, UncertainError):
            raise SessionUnavailableError(
                now + self.settings.bluesky_retry_base_seconds, "pds unreachable"
            ) from None
        self.refreshes += 1
        return await self._keep(account, response, login_times=None)

    async def _login(self, account: AccountRow) -> Session:
        now = self.clock.now()
        budget = login_budget(
            self.settings.bluesky_logins_per_5min, self.settings.bluesky_logins_per_day
        )
        budget.load((t, 1) for t in account.login_times)
        if budget.available(now) < 1:
            raise SessionUnavailableError(budget.when_available(now, 1), "login budget spent")
        try:
            password = self.cipher.decrypt(account.app_password)
        except CredentialError:
            raise SessionBrokenError("credential_unreadable") from None
        login_times = [t for t in account.login_times if t > now - 86400.0] + [now]
        # Count the login before making it: a crash right after must not give it back.
        await asyncio.to_thread(self.store.save_login_times, account.did, login_times)
        try:
            response = await self.xrpc.procedure(
                account.pds_url,
                "com.atproto.server.createSession",
                {"identifier": account.did, "password": password},
            )
        except XrpcError as error:
            if error.error in ACCOUNT_ERRORS:
                raise SessionBrokenError(ACCOUNT_ERRORS[error.error]) from None
            if error.is_rate_limited:
                raise SessionUnavailableError(
                    self._reset_of(error, now), "login rate limited"
                ) from None
            if error.status == 401:
                raise SessionBrokenError("credential_revoked") from None
            raise SessionUnavailableError(
                now + self.settings.bluesky_retry_base_seconds, "login refused"
            ) from None
        except (NotSentError, UncertainError):
            raise SessionUnavailableError(
                now + self.settings.bluesky_retry_base_seconds, "pds unreachable"
            ) from None
        self.logins += 1
        if response.body.get("did") != account.did:
            raise SessionBrokenError("identity_changed")
        return await self._keep(account, response, login_times=login_times)

    async def _keep(
        self, account: AccountRow, response: XrpcResponse, *, login_times: list[float] | None
    ) -> Session:
        body = response.body
        access, refresh = body.get("accessJwt"), body.get("refreshJwt")
        if not isinstance(access, str) or not isinstance(refresh, str):
            raise SessionUnavailableError(
                self.clock.now() + self.settings.bluesky_retry_base_seconds, "bad session reply"
            )
        if body.get("active") is False:
            raise SessionBrokenError(f"account_{body.get('status') or 'deactivated'}")
        now = self.clock.now()
        session = Session(
            account.did, account.pds_url, access, refresh, self.expiry(access, now), now
        )
        self._live[account.did] = session
        await asyncio.to_thread(
            self.store.save_session,
            account.did,
            access_jwt=self.cipher.encrypt(access),
            refresh_jwt=self.cipher.encrypt(refresh),
            key_id=self.cipher.key_id,
            access_expires_at=session.expires_at,
            issued_at=now,
            login_times=login_times,
        )
        return session

    def _reset_of(self, error: XrpcError, now: float) -> float:
        margin = self.settings.bluesky_rate_limit_margin_seconds
        if error.rate_limit is not None:
            return max(now, error.rate_limit.reset) + margin
        if error.retry_after is not None:
            return now + error.retry_after + margin
        return now + self.settings.bluesky_retry_base_seconds

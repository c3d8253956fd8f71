"""In-memory state of one test Mastodon instance: accounts, OAuth, follows, limits.

Nothing here does I/O; ``server.py`` wires it to HTTP. The rules follow
Mastodon's own code (checked against mastodon/mastodon):

* Rack::Attack throttles are fixed windows aligned to the epoch
  (``window = floor(now / period)``); a request is refused when the window's
  count, after counting it, exceeds the limit.
* ``RateLimiter`` (family ``follows``: 400 per 24 h per account) counts each
  created Follow or FollowRequest and refuses when the count already reached
  the limit; duplicates and unfollows are not counted.
* ``FollowLimitValidator``: an account following fewer than 7,500 may follow;
  beyond that, up to ``followers_count × 1.1``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from .clock import SimClock, iso

# --- scopes -------------------------------------------------------------------------------

READ_SCOPES = frozenset(
    f"read:{name}"
    for name in (
        "accounts",
        "blocks",
        "bookmarks",
        "favourites",
        "filters",
        "follows",
        "lists",
        "mutes",
        "notifications",
        "search",
        "statuses",
    )
)
WRITE_SCOPES = frozenset(
    f"write:{name}"
    for name in (
        "accounts",
        "blocks",
        "bookmarks",
        "conversations",
        "favourites",
        "filters",
        "follows",
        "lists",
        "media",
        "mutes",
        "notifications",
        "reports",
        "statuses",
    )
)
VALID_SCOPES = (
    frozenset({"read", "write", "follow", "push", "profile", "crypto"}) | READ_SCOPES | WRITE_SCOPES
)
DEFAULT_SCOPES = ("read",)


def parse_scopes(text: str | Iterable[str] | None) -> list[str]:
    """Split a scope string (space, comma or '+' separated) keeping order, no duplicates."""
    if text is None:
        return []
    items = text.replace(",", " ").replace("+", " ").split() if isinstance(text, str) else text
    seen: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def has_any_scope(granted: Iterable[str], accepted: Iterable[str]) -> bool:
    """Doorkeeper's check as Mastodon uses it: the token holds one of the accepted scopes."""
    have = set(granted)
    return any(scope in have for scope in accepted)


# --- configuration ------------------------------------------------------------------------


@dataclass
class Limits:
    """Real Mastodon defaults; each is a CLI option for experiments."""

    token_requests: int = 300  # throttle_per_token_api
    token_period: int = 300
    user_requests: int = 1500  # throttle_authenticated_api
    user_period: int = 300
    ip_requests: int = 300  # throttle_unauthenticated_api
    ip_period: int = 300
    paging_requests: int = 300  # throttle_authenticated_paging
    paging_period: int = 900
    follows: int = 400  # RateLimiter family :follows
    follows_period: int = 86_400
    follow_cap: int = 7_500  # FollowLimitValidator::LIMIT
    follow_cap_ratio: float = 1.1  # FollowLimitValidator::RATIO


QUIRKS = (
    "granular_scopes_unsupported",
    "no_rate_limit_headers",
    "async_follow",
    "no_oauth_metadata",
)


@dataclass
class Settings:
    """Per-instance behaviour that a test may change at run time (``POST /_test/config``)."""

    software: Literal["mastodon", "pleroma", "gotosocial"] = "mastodon"
    version: str | None = None  # None: a default per software
    granular_scopes_unsupported: bool = False
    no_rate_limit_headers: bool = False
    async_follow: bool = False
    async_follow_delay: float = 1.0  # real seconds
    no_oauth_metadata: bool = False
    federation_delay: float = 0.0  # real seconds before an Accept is delivered

    def version_string(self) -> str:
        if self.version:
            return self.version
        return {
            "mastodon": "4.3.2",
            "pleroma": "2.7.2 (compatible; Pleroma 2.7.0)",
            "gotosocial": "0.17.3+git-4d79b3a",
        }[self.software]


# --- records ------------------------------------------------------------------------------


@dataclass
class Account:
    id: str
    username: str
    domain: str | None  # None: local
    uri: str  # ActivityPub actor id
    url: str
    created_at: float
    display_name: str = ""
    note: str = ""
    locked: bool = False
    bot: bool = False
    password: str = "password"
    inbox: str | None = None  # remote accounts
    base_followers: int = 0  # followers not represented by follow records
    base_following: int = 0
    suspended: bool = False

    @property
    def local(self) -> bool:
        return self.domain is None

    def acct(self) -> str:
        return self.username if self.domain is None else f"{self.username}@{self.domain}"


@dataclass
class App:
    id: str
    name: str
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scopes: list[str]
    website: str | None
    created_at: float


@dataclass
class Grant:
    code: str
    client_id: str
    account_id: str
    redirect_uri: str
    scopes: list[str]
    expires_at: float
    code_challenge: str | None = None
    used: bool = False


@dataclass
class Token:
    id: int
    token: str
    client_id: str
    account_id: str | None  # None: an app (client_credentials) token
    scopes: list[str]
    created_at: float
    revoked_at: float | None = None


FollowState = Literal["accepted", "requested", "pending"]


@dataclass
class Follow:
    id: str
    account_id: str
    target_id: str
    created_at: float
    state: FollowState  # pending: applied later (async quirk), invisible until then
    origin: Literal["api", "federation"]
    uri: str | None = None  # the Follow activity id when it crosses instances
    accepted_at: float | None = None


FollowOutcome = Literal[
    "created",  # a new Follow or FollowRequest was recorded
    "duplicate",  # already following or requested: nothing new, not counted
    "refused_rate_limit",  # over 400 / 24 h (429)
    "refused_cap",  # over the follow cap (422)
    "refused_request_limit",  # per-token/per-user request throttle (429)
]


@dataclass
class FollowAttempt:
    at: float
    account_id: str
    target_id: str
    outcome: FollowOutcome
    status: int
    follow_id: str | None = None


@dataclass
class ThrottleHit:
    name: str
    limit: int
    count: int
    period: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def throttled(self) -> bool:
        return self.count > self.limit


def reset_at(now: float, period: int) -> float:
    """Mastodon's reset: ``now + (period - now.to_i % period)`` (keeps now's fraction)."""
    return now + (period - math.floor(now) % period)


def rate_headers(limit: int, remaining: int, period: int, now: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(remaining, 0)),
        "X-RateLimit-Reset": iso(reset_at(now, period)),
    }


def ruby_number(value: float) -> str:
    """How Ruby prints the cap in the 422 message (an Integer, or a Float like ``8250.0``)."""
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


# --- the store ----------------------------------------------------------------------------


class Store:
    """All state of one instance. Single-threaded (one asyncio loop), so no locks."""

    def __init__(self, domain: str, clock: SimClock, limits: Limits) -> None:
        self.domain = domain
        self.clock = clock
        self.limits = limits
        self.accounts: dict[str, Account] = {}
        self._by_acct: dict[str, str] = {}
        self._by_uri: dict[str, str] = {}
        self.apps: dict[str, App] = {}
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, Token] = {}
        self.follows: dict[str, Follow] = {}
        self._follow_pair: dict[tuple[str, str], str] = {}
        self.attempts: list[FollowAttempt] = []
        self._windows: dict[tuple[str, str, int], int] = {}
        self._last_id = 0
        self._token_seq = 0
        self.stats: dict[str, int] = {}

    # ids ---------------------------------------------------------------------------------
    def new_id(self) -> str:
        """Snowflake-like ids (ms << 16 | sequence), as strings beyond 2^53 like Mastodon's."""
        candidate = int(self.clock.now() * 1000) << 16
        self._last_id = max(candidate, self._last_id + 1)
        return str(self._last_id)

    def bump(self, key: str, by: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + by

    # accounts ----------------------------------------------------------------------------
    def actor_uri(self, username: str) -> str:
        return f"https://{self.domain}/users/{username}"

    def create_local_account(
        self,
        username: str,
        *,
        followers_count: int = 0,
        following_count: int = 0,
        display_name: str | None = None,
        locked: bool = False,
        bot: bool = False,
        password: str = "password",
        note: str = "",
    ) -> Account:
        if not username or not all(c.isalnum() or c == "_" for c in username):
            raise ValueError(f"invalid username {username!r}")
        if username.lower() in self._by_acct:
            raise KeyError(f"username {username!r} is taken")
        account = Account(
            id=self.new_id(),
            username=username,
            domain=None,
            uri=self.actor_uri(username),
            url=f"https://{self.domain}/@{username}",
            created_at=self.clock.now(),
            display_name=display_name if display_name is not None else username.capitalize(),
            note=note,
            locked=locked,
            bot=bot,
            password=password,
            base_followers=followers_count,
            base_following=following_count,
        )
        self._index(account)
        return account

    def upsert_remote_account(
        self,
        *,
        username: str,
        domain: str,
        uri: str,
        url: str,
        inbox: str | None,
        display_name: str,
        note: str,
        locked: bool,
        bot: bool,
        followers_count: int,
        following_count: int,
    ) -> Account:
        existing = self.by_uri(uri) or self.by_acct(f"{username}@{domain}")
        if existing is not None:
            existing.display_name = display_name
            existing.note = note
            existing.locked = locked
            existing.inbox = inbox
            existing.base_followers = max(followers_count - self._local_followers(existing), 0)
            existing.base_following = max(following_count - self._local_following(existing), 0)
            return existing
        account = Account(
            id=self.new_id(),
            username=username,
            domain=domain.lower(),
            uri=uri,
            url=url,
            inbox=inbox,
            created_at=self.clock.now(),
            display_name=display_name,
            note=note,
            locked=locked,
            bot=bot,
            base_followers=followers_count,
            base_following=following_count,
        )
        self._index(account)
        return account

    def _index(self, account: Account) -> None:
        self.accounts[account.id] = account
        self._by_acct[account.acct().lower()] = account.id
        self._by_uri[account.uri] = account.id

    def by_acct(self, acct: str) -> Account | None:
        key = acct.lower().lstrip("@")
        if key.endswith(f"@{self.domain.lower()}"):
            key = key.rsplit("@", 1)[0]
        found = self._by_acct.get(key)
        return self.accounts.get(found) if found else None

    def by_uri(self, uri: str) -> Account | None:
        found = self._by_uri.get(uri)
        return self.accounts.get(found) if found else None

    def local_by_username(self, username: str) -> Account | None:
        account = self.by_acct(username)
        return account if account is not None and account.local else None

    def _local_followers(self, account: Account) -> int:
        return sum(
            1 for f in self.follows.values() if f.target_id == account.id and f.state == "accepted"
        )

    def _local_following(self, account: Account) -> int:
        return sum(
            1 for f in self.follows.values() if f.account_id == account.id and f.state == "accepted"
        )

    def followers_count(self, account: Account) -> int:
        return account.base_followers + self._local_followers(account)

    def following_count(self, account: Account) -> int:
        return account.base_following + self._local_following(account)

    # OAuth -------------------------------------------------------------------------------
    def create_app(
        self, name: str, redirect_uris: list[str], scopes: list[str], website: str | None
    ) -> App:
        app = App(
            id=str(len(self.apps) + 1),
            name=name,
            client_id=secrets.token_urlsafe(32),
            client_secret=secrets.token_urlsafe(32),
            redirect_uris=redirect_uris,
            scopes=scopes,
            website=website,
            created_at=self.clock.now(),
        )
        self.apps[app.client_id] = app
        return app

    def create_grant(
        self,
        app: App,
        account: Account,
        redirect_uri: str,
        scopes: list[str],
        code_challenge: str | None,
    ) -> Grant:
        grant = Grant(
            code=secrets.token_urlsafe(32),
            client_id=app.client_id,
            account_id=account.id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            expires_at=self.clock.now() + 600,  # Doorkeeper: 10 minutes
            code_challenge=code_challenge,
        )
        self.grants[grant.code] = grant
        return grant

    def create_token(self, app: App, account: Account | None, scopes: list[str]) -> Token:
        self._token_seq += 1
        token = Token(
            id=self._token_seq,
            token=secrets.token_urlsafe(32),
            client_id=app.client_id,
            account_id=account.id if account else None,
            scopes=scopes,
            created_at=self.clock.now(),
        )
        self.tokens[token.token] = token
        return token

    def revoke_token(self, token: Token) -> None:
        if token.revoked_at is None:
            token.revoked_at = self.clock.now()

    # throttles ---------------------------------------------------------------------------
    def hit(self, name: str, key: str, limit: int, period: int) -> ThrottleHit:
        """Count one request in a Rack::Attack-style fixed window."""
        window = math.floor(self.clock.now()) // period
        slot = (name, key, window)
        count = self._windows.get(slot, 0) + 1
        self._windows[slot] = count
        if len(self._windows) > 50_000:
            self._windows = {k: v for k, v in self._windows.items() if k[2] >= window - 1}
        return ThrottleHit(name, limit, count, period)

    def follow_family_count(self, account_id: str) -> int:
        window = math.floor(self.clock.now()) // self.limits.follows_period
        return self._windows.get(("follows", account_id, window), 0)

    def follow_family_record(self, account_id: str) -> bool:
        """RateLimiter#record!: False (refused) when the window already holds the limit."""
        window = math.floor(self.clock.now()) // self.limits.follows_period
        slot = ("follows", account_id, window)
        count = self._windows.get(slot, 0)
        if count >= self.limits.follows:
            return False
        self._windows[slot] = count + 1
        return True

    def follow_family_headers(self, account_id: str) -> dict[str, str]:
        remaining = self.limits.follows - self.follow_family_count(account_id)
        return rate_headers(
            self.limits.follows, remaining, self.limits.follows_period, self.clock.now()
        )

    def follow_cap(self, account: Account) -> float | int:
        if self.following_count(account) < self.limits.follow_cap:
            return self.limits.follow_cap
        return self.followers_count(account) * self.limits.follow_cap_ratio

    def cap_reached(self, account: Account) -> bool:
        return self.following_count(account) >= self.follow_cap(account)

    # follows -----------------------------------------------------------------------------
    def follow_between(self, account_id: str, target_id: str) -> Follow | None:
        found = self._follow_pair.get((account_id, target_id))
        return self.follows.get(found) if found else None

    def add_follow(
        self,
        account: Account,
        target: Account,
        state: FollowState,
        origin: Literal["api", "federation"],
        uri: str | None = None,
    ) -> Follow:
        now = self.clock.now()
        follow = Follow(
            id=self.new_id(),
            account_id=account.id,
            target_id=target.id,
            created_at=now,
            state=state,
            origin=origin,
            uri=uri,
            accepted_at=now if state == "accepted" else None,
        )
        self.follows[follow.id] = follow
        self._follow_pair[(account.id, target.id)] = follow.id
        return follow

    def accept_follow(self, follow: Follow) -> None:
        if follow.state != "accepted":
            follow.state = "accepted"
            follow.accepted_at = self.clock.now()

    def remove_follow(self, follow: Follow) -> None:
        self.follows.pop(follow.id, None)
        if self._follow_pair.get((follow.account_id, follow.target_id)) == follow.id:
            del self._follow_pair[(follow.account_id, follow.target_id)]

    def follow_by_uri(self, uri: str) -> Follow | None:
        return next((f for f in self.follows.values() if f.uri == uri), None)

    def record_attempt(
        self,
        account_id: str,
        target_id: str,
        outcome: FollowOutcome,
        status: int,
        follow_id: str | None = None,
    ) -> None:
        self.attempts.append(
            FollowAttempt(self.clock.now(), account_id, target_id, outcome, status, follow_id)
        )

    # views -------------------------------------------------------------------------------
    def acct_of(self, account_id: str) -> str:
        account = self.accounts.get(account_id)
        return account.acct() if account else account_id

    def follow_view(self, follow: Follow) -> dict[str, object]:
        return {
            "id": follow.id,
            "account_id": follow.account_id,
            "account": self.acct_of(follow.account_id),
            "target_id": follow.target_id,
            "target": self.acct_of(follow.target_id),
            "state": follow.state,
            "origin": follow.origin,
            "created_at": iso(follow.created_at),
            "accepted_at": iso(follow.accepted_at) if follow.accepted_at else None,
        }

    def attempt_view(self, attempt: FollowAttempt) -> dict[str, object]:
        return {
            "at": iso(attempt.at),
            "account_id": attempt.account_id,
            "account": self.acct_of(attempt.account_id),
            "target_id": attempt.target_id,
            "target": self.acct_of(attempt.target_id),
            "outcome": attempt.outcome,
            "status": attempt.status,
            "follow_id": attempt.follow_id,
        }


@dataclass
class FaultRule:
    """One injected fault; see ``POST /_test/faults`` in docs/testing-mastodon.md."""

    path: str = "*"
    method: str | None = None
    count: int | None = 1  # None: until cleared
    skip: int = 0  # let this many matching requests through first
    status: int | None = None
    body: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0  # real seconds, before answering (or before passing through)
    drop: bool = False  # close the connection without a response
    reset_in: float | None = None  # for status 429: seconds (simulated) until X-RateLimit-Reset
    hits: int = 0

"""Expected failures, named once: what an instance said, and what we tell the person.

Each error has a stable ``code``: the link replies carry it to the edge, follow
results carry it as their ``reason``, and metrics count it.
"""

from __future__ import annotations

from passerelle_mastodon_sender.budget import RateInfo


class MastodonError(Exception):
    """Base of every expected failure talking to an instance.

    ``rate`` holds the rate-limit headers of the response that carried the error.
    """

    code = "remote_error"
    transient = False
    rate: RateInfo | None = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class UnknownInstanceError(MastodonError):
    """No server answers at that name (DNS failure, connection refused)."""

    code = "unknown_instance"


class InstanceUnreachableError(MastodonError):
    """The server exists but did not answer properly now (timeout, 5xx, dropped)."""

    code = "instance_unreachable"
    transient = True


class NotMastodonError(MastodonError):
    """A web server answers, but not the Mastodon API."""

    code = "not_mastodon"


class InvalidCodeError(MastodonError):
    """The authorization code is unknown, used, expired or for another app."""

    code = "invalid_code"


class TokenRevokedError(MastodonError):
    """The access token is no longer accepted (the person removed the app)."""

    code = "token_revoked"


class OutOfScopeError(MastodonError):
    """The token lacks a scope this server wants: ask the person again, more broadly."""

    code = "reauthorize"


class RateLimitedError(MastodonError):
    """429: over a limit; ``reset_at`` (service clock) when the server said when."""

    code = "rate_limited"
    transient = True

    def __init__(self, reset_at: float | None, message: str = "") -> None:
        super().__init__(message or "rate limited")
        self.reset_at = reset_at


class FollowCapError(MastodonError):
    """422: the account follows as many people as the server allows (7,500 or 1.1 × …)."""

    code = "follow_cap"


class NotFoundError(MastodonError):
    """404: the record (an account id) does not exist there."""

    code = "not_found"


class RejectedError(MastodonError):
    """Any other refusal (4xx) that retrying will not change."""

    code = "rejected"

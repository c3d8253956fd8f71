"""Where an instance lives: the domain a person types, and the URL we call.

People type ``mastodon.social``, ``https://mastodon.social/about`` or their whole
address ``@alice@mastodon.social``; all name the domain ``mastodon.social``. It is
reached at ``https://<domain>`` unless the settings map it elsewhere (test servers
on loopback have no DNS; see ``mastodon_instance_urls``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

FILE_CHECK_SECONDS = 1.0
"""The overrides file is looked at (``stat``) at most this often."""


class InvalidInstanceError(ValueError):
    """The text does not name a server."""


def normalize_domain(text: str) -> str:
    """The lowercase ASCII domain named by ``text`` (an address, URL or domain)."""
    value = text.strip()
    if not value:
        raise InvalidInstanceError("empty")
    if "://" in value:
        value = urlsplit(value).hostname or ""
    else:
        value = value.split("/", 1)[0].lstrip("@")
        if "@" in value:  # user@domain
            value = value.rsplit("@", 1)[1]
    value = value.rstrip(".").lower()
    try:
        domain = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInstanceError(text) from None
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInstanceError(text)
    return domain


def split_acct(acct: str) -> tuple[str, str]:
    """``(user, domain)`` of ``user@domain`` (a leading ``@`` is allowed)."""
    user, sep, domain = acct.strip().lstrip("@").partition("@")
    if not sep or not user or not domain:
        raise ValueError(f"not a full address: {acct!r}")
    return user, domain.lower()


def normalize_acct(acct: str) -> str:
    """``user@domain`` without a leading ``@`` and with a lowercase domain."""
    user, sep, domain = acct.strip().lstrip("@").partition("@")
    return f"{user}@{domain.lower()}" if sep else user


def full_acct(acct: str, local_domain: str) -> str:
    """``acct`` as ``user@domain`` (Mastodon writes local accounts without the domain)."""
    acct = acct.strip().lstrip("@")
    if "@" in acct:
        user, domain = acct.split("@", 1)
        return f"{user}@{domain.lower()}"
    return f"{acct}@{local_domain}"


class InstanceDirectory:
    """Base URLs of instances: ``https://<domain>`` unless configured otherwise."""

    def __init__(
        self,
        overrides: Mapping[str, str] | None = None,
        overrides_file: Path | None = None,
        *,
        allow_http: bool = False,
    ) -> None:
        self._static = {k.lower(): v.rstrip("/") for k, v in (overrides or {}).items()}
        self._file = overrides_file
        self._file_state: tuple[float, dict[str, str]] = (-1.0, {})
        self._checked_at = -1.0
        self.allow_http = allow_http

    def _from_file(self) -> dict[str, str]:
        if self._file is None:
            return {}
        now = time.monotonic()
        if now - self._checked_at < FILE_CHECK_SECONDS:
            return self._file_state[1]
        self._checked_at = now
        try:
            mtime = self._file.stat().st_mtime
            if mtime != self._file_state[0]:
                loaded = json.loads(self._file.read_text(encoding="utf-8"))
                self._file_state = (
                    mtime,
                    {str(k).lower(): str(v).rstrip("/") for k, v in loaded.items()},
                )
        except (OSError, ValueError):
            return self._file_state[1]
        return self._file_state[1]

    def base_url(self, domain: str) -> str:
        """The URL to call for ``domain``; plain http only when allowed."""
        url = self._static.get(domain) or self._from_file().get(domain)
        if url is None:
            return f"https://{domain}"
        if url.startswith("http://") and not self.allow_http:
            raise InvalidInstanceError(f"{domain} is mapped to plain http, which is not allowed")
        return url

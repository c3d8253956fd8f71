"""Secrets at rest: OAuth client secrets and access tokens, encrypted with MultiFernet.

``PASSERELLE_ENCRYPTION_KEYS`` holds comma-separated Fernet keys (make one with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``).
The first key encrypts; every key decrypts, so rotation is: put a new key first,
restart (stored secrets are re-encrypted with it at start), then drop the old key.

In dev mode the built-in placeholder is not a Fernet key: a key is derived from it
deterministically (SHA-256) so a local database stays readable across restarts, and
the service logs that it does so. Outside dev mode anything but Fernet keys stops
the service at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

DEV_DERIVATION_LABEL = b"passerelle-mastodon-sender-dev-key:"


class VaultError(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


def _is_fernet_key(text: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(text.encode())
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32


def derive_dev_key(text: str) -> bytes:
    """A Fernet key derived from any text (development only)."""
    digest = hashlib.sha256(DEV_DERIVATION_LABEL + text.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def parse_keys(value: str, *, dev: bool) -> tuple[list[bytes], bool]:
    """The Fernet keys in ``value``, and whether one was derived (dev mode only).

    Raises ``ValueError`` naming the variable when a key is not a Fernet key outside dev.
    """
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError("PASSERELLE_ENCRYPTION_KEYS is empty")
    keys: list[bytes] = []
    derived = False
    for i, part in enumerate(parts):
        if _is_fernet_key(part):
            keys.append(part.encode())
        elif dev:
            keys.append(derive_dev_key(part))
            derived = True
        else:
            raise ValueError(
                f"PASSERELLE_ENCRYPTION_KEYS: key {i + 1} is not a Fernet key "
                "(32 url-safe base64-encoded bytes)"
            )
    return keys, derived


class Vault:
    """Encrypt with the first key, decrypt with any."""

    def __init__(self, keys: list[bytes], *, derived: bool = False) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._first = Fernet(keys[0])
        self.derived = derived

    @classmethod
    def from_setting(cls, value: str, *, dev: bool) -> Vault:
        keys, derived = parse_keys(value, dev=dev)
        return cls(keys, derived=derived)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise VaultError(
                "a stored secret cannot be decrypted with the configured keys"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is already encrypted with the first key."""
        try:
            self._first.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted with the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise VaultError(
                "a stored secret cannot be decrypted with the configured keys"
            ) from None

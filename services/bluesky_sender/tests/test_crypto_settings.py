"""Credentials at rest, and the settings that refuse to start without a real key."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from passerelle_bluesky_sender.crypto import CredentialCipher, CredentialError, parse_keys
from passerelle_bluesky_sender.settings import Settings
from passerelle_platform.settings import ConfigurationError, load_settings


def test_dev_placeholder_derives_a_stable_key() -> None:
    a = CredentialCipher.from_setting("dev-only-encryption-key", dev=True)
    b = CredentialCipher.from_setting("dev-only-encryption-key", dev=True)
    assert a.derived
    token = a.encrypt("app-password")
    assert token != "app-password"
    assert b.decrypt(token) == "app-password"  # same key after a restart
    assert a.key_id == b.key_id


def test_production_refuses_what_is_not_a_fernet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="not a Fernet key"):
        parse_keys("a-long-but-not-fernet-secret-value", dev=False)
    monkeypatch.setenv("PASSERELLE_ENV", "production")
    monkeypatch.setenv("PASSERELLE_ENCRYPTION_KEYS", "a-long-but-not-fernet-secret-value")
    with pytest.raises(ConfigurationError, match="PASSERELLE_ENCRYPTION_KEYS"):
        load_settings(Settings)
    monkeypatch.setenv("PASSERELLE_ENCRYPTION_KEYS", "dev-only-encryption-key")
    with pytest.raises(ConfigurationError, match="PASSERELLE_ENCRYPTION_KEYS"):
        load_settings(Settings)
    monkeypatch.setenv("PASSERELLE_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    assert load_settings(Settings).env == "production"
    monkeypatch.setenv("PASSERELLE_BLUESKY_CLOCK_SPEEDUP", "100")
    with pytest.raises(ConfigurationError, match="CLOCK_SPEEDUP"):
        load_settings(Settings)


def test_rotation_new_key_first_old_key_still_decrypts() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = CredentialCipher([old])
    token = before.encrypt("secret")
    during = CredentialCipher.from_setting(f"{new.decode()},{old.decode()}", dev=False)
    assert during.key_id != before.key_id
    assert during.decrypt(token) == "secret"
    rotated = during.rotate(token)
    after = CredentialCipher([new])
    assert after.decrypt(rotated) == "secret"
    with pytest.raises(CredentialError):
        after.decrypt(token)  # the old key is gone: only rotated tokens still open

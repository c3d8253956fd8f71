"""Small pure pieces: instance names, addresses, the vault, settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from passerelle_mastodon_sender.instances import (
    InstanceDirectory,
    InvalidInstanceError,
    full_acct,
    normalize_acct,
    normalize_domain,
)
from passerelle_mastodon_sender.settings import Settings
from passerelle_mastodon_sender.vault import Vault, VaultError, parse_keys
from passerelle_platform.settings import ConfigurationError, load_settings


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("mastodon.social", "mastodon.social"),
        ("  Mastodon.Social. ", "mastodon.social"),
        ("https://mastodon.social/about", "mastodon.social"),
        ("@alice@mastodon.social", "mastodon.social"),
        ("alice@piaille.fr", "piaille.fr"),
        ("mastodon.social/@alice", "mastodon.social"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_domains_people_type(text: str, domain: str) -> None:
    assert normalize_domain(text) == domain


@pytest.mark.parametrize("text", ["", "localhost", "not a server", "-bad-.example", "a..b"])
def test_not_domains(text: str) -> None:
    with pytest.raises(InvalidInstanceError):
        normalize_domain(text)


def test_addresses() -> None:
    assert full_acct("alice", "example.social") == "alice@example.social"
    assert full_acct("bob@Other.Example", "example.social") == "bob@other.example"
    assert normalize_acct("@Bob@Other.Example") == "Bob@other.example"


def test_instance_urls_from_settings_and_file(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"beta.test": "http://127.0.0.1:9"}))
    directory = InstanceDirectory({"alpha.test": "https://a.local/"}, peers, allow_http=True)
    assert directory.base_url("alpha.test") == "https://a.local"
    assert directory.base_url("beta.test") == "http://127.0.0.1:9"
    assert directory.base_url("mastodon.social") == "https://mastodon.social"
    strict = InstanceDirectory({}, peers, allow_http=False)
    with pytest.raises(InvalidInstanceError):
        strict.base_url("beta.test")


def test_the_vault_rotates_keys() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = Vault.from_setting(old, dev=False)
    secret = before.encrypt("token-123456")
    after = Vault.from_setting(f"{new},{old}", dev=False)
    assert after.decrypt(secret) == "token-123456"
    assert not after.is_current(secret)
    rotated = after.rotate(secret)
    assert after.is_current(rotated)
    with pytest.raises(VaultError):
        before.decrypt(rotated)


def test_dev_keys_are_derived_and_refused_in_production() -> None:
    keys, derived = parse_keys("dev-only-encryption-key", dev=True)
    assert derived
    assert keys == parse_keys("dev-only-encryption-key", dev=True)[0]  # deterministic
    with pytest.raises(ValueError, match="not a Fernet key"):
        parse_keys("a-long-but-not-fernet-key-value", dev=False)


def test_production_settings_refuse_placeholders_and_test_clocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "production")
    with pytest.raises(ConfigurationError, match="PASSERELLE_ENCRYPTION_KEYS"):
        load_settings(Settings)
    monkeypatch.setenv("PASSERELLE_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    assert load_settings(Settings).mastodon_follows_per_window == 400
    monkeypatch.setenv("PASSERELLE_MASTODON_CLOCK_SPEEDUP", "100")
    with pytest.raises(ConfigurationError, match="CLOCK"):
        load_settings(Settings)
    monkeypatch.delenv("PASSERELLE_MASTODON_CLOCK_SPEEDUP")
    monkeypatch.setenv("PASSERELLE_MASTODON_INSTANCE_URLS", '{"a.test": "http://127.0.0.1:1"}')
    with pytest.raises(ConfigurationError, match="not https"):
        load_settings(Settings)

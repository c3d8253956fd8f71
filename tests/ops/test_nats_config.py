"""The NATS configuration each overlay renders is accepted by the real nats-server
(the version the services are tested against), with the environment the pods give it."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ops.tools import OVERLAYS, objects
from tests.support.nats import nats_server_binary

LEAF_ENV = {
    "hub": {"NATS_LEAF_USER": "leaf", "NATS_LEAF_PASSWORD": "a-long-test-password"},
    "region": {"NATS_LEAF_REMOTE_URL": "tls://leaf:pw@leaf.hub.passerelle.invalid:7422"},
}


def self_signed(directory: Path) -> dict[str, str]:
    """A certificate and key for the hub's leaf node listener (the Secret's stand-in)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf.hub.passerelle.invalid")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {
        "NATS_LEAF_TLS_CERT": str(directory / "tls.crt"),
        "NATS_LEAF_TLS_KEY": str(directory / "tls.key"),
    }


def _configmap(overlay: str, prefix: str) -> dict[str, str]:
    for obj in objects(overlay):
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", name):
            data: dict[str, str] = obj["data"]
            return data
    raise AssertionError(f"{overlay}: no ConfigMap {prefix}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_nats_config_is_valid(overlay: str, tmp_path: Path) -> None:
    for name, text in _configmap(overlay, "nats-config").items():
        (tmp_path / name).write_text(text)
    env = {
        "SERVER_NAME": "nats-0",
        **_configmap(overlay, "nats-env"),
        **LEAF_ENV["hub" if overlay == "hub" else "region"],
        **(self_signed(tmp_path) if overlay == "hub" else {}),
    }
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_a_missing_leaf_secret_stops_the_server(tmp_path: Path) -> None:
    """A region without its leaf URL does not start half-configured."""
    for name, text in _configmap("fr", "nats-config").items():
        (tmp_path / name).write_text(text)
    env = {"SERVER_NAME": "nats-0", **_configmap("fr", "nats-env")}
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "NATS_LEAF_REMOTE_URL" in done.stdout + done.stderr

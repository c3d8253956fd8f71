"""The Kubernetes overlays' NATS configuration, run as a federation on loopback.

``kubectl kustomize`` renders the hub, fr and es overlays; their ``nats-config``
files (the leaf components' ``leafnodes.conf`` and the overlays'
``federation-members.conf`` / ``federation-account.conf``) are run by three real
``nats-server`` processes, each with its own JetStream domain, the regions
joining the hub over TLS with their own leaf users. What differs from a
cluster: a one-server ``nats.conf`` of the test's own (the base's names the
cluster's routes and volumes), the leaf port, and the committed bcrypt hashes,
replaced by test passwords (those hashes are of passwords nobody knows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from passerelle_platform.federation import (
    FederationLink,
    ensure_hub,
    ensure_stream,
    regional_stream_config,
)
from tests.federation.support import Recorder, connect, entry, eventually
from tests.federation.topology import NatsNode
from tests.ops.tools import objects
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

NATS_CONF = """\
server_name: $NATS_SERVER_NAME
jetstream {
  domain: $NATS_JETSTREAM_DOMAIN
  store_dir: $NATS_STORE_DIR
}
include ./leafnodes.conf
"""
HASHED = re.compile(r'(user: ([a-z-]+)\s+password: )"\$2[ab]\$[^"]+"')


def _files(overlay: str, prefix: str) -> dict[str, str]:
    for obj in objects(overlay):
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", name):
            data: dict[str, str] = obj["data"]
            return data
    raise AssertionError(f"{overlay}: no ConfigMap {prefix}")


def _certificate(directory: Path) -> tuple[Path, Path]:
    """The hub's leaf certificate (the Secret nats-leafnodes-tls), valid for localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "tls.crt", directory / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def _node(
    overlay: str, work: Path, passwords: dict[str, str], leaf_port: int, env: dict[str, str]
) -> NatsNode:
    config = work / f"{overlay}-config"
    config.mkdir()
    for name, rendered in _files(overlay, "nats-config").items():
        if name == "nats.conf":
            continue
        text = HASHED.sub(lambda m: f'{m.group(1)}"{passwords[m.group(2)]}"', rendered)
        text = text.replace("listen: 0.0.0.0:7422", f"listen: 127.0.0.1:{leaf_port}")
        (config / name).write_text(text)
    (config / "nats.conf").write_text(NATS_CONF)
    domain = _files(overlay, "nats-env")["NATS_JETSTREAM_DOMAIN"]
    return NatsNode(overlay, config / "nats.conf", work, {"NATS_JETSTREAM_DOMAIN": domain, **env})


async def test_the_overlays_federate_with_their_own_credentials(tmp_path: Path) -> None:
    passwords = {
        name: f"test-{name}-password" for name in ("leaf-fr", "leaf-es", "federation", "admin")
    }
    leaf_port = free_port()
    crt, pem = _certificate(tmp_path)
    hub = _node(
        "hub",
        tmp_path,
        passwords,
        leaf_port,
        {
            "NATS_LEAF_TLS_CERT": str(crt),
            "NATS_LEAF_TLS_KEY": str(pem),
            "NATS_LEAF_USER": "admin",
            "NATS_LEAF_PASSWORD": passwords["admin"],
        },
    ).start()
    regions: dict[str, NatsNode] = {}
    try:
        for region in ("fr", "es"):
            url = f"tls://leaf-{region}:{passwords[f'leaf-{region}']}@localhost:{leaf_port}"
            # The hub's certificate is checked against the system's CAs: this one is ours.
            env = {"NATS_LEAF_REMOTE_URL": url, "SSL_CERT_FILE": str(crt)}
            regions[region] = _node(region, tmp_path, passwords, leaf_port, env).start()

        async def joined() -> bool:
            return all((n.monitor("leafz") or {}).get("leafnodes") for n in regions.values())

        await eventually(joined, within=30, what="fr and es joined the hub over TLS")

        def federation_url(region: str) -> str:
            return regions[region].url("federation", passwords["federation"])

        for region in regions:
            async with connect(federation_url(region)) as nc:
                await ensure_stream(nc.jetstream(), regional_stream_config(region))
        async with connect(hub.url("admin", passwords["admin"])) as admin:
            await ensure_hub(admin, regions)
        seen = {region: Recorder() for region in regions}
        links = {
            region: FederationLink(federation_url(region), region, seen[region])
            for region in regions
        }
        for link in links.values():
            await link.start()
        try:
            for link in links.values():
                await asyncio.wait_for(link.wait_ready(), 30)
            anna = entry("fr", "anna", "8001")
            await links["fr"].publish(anna)
            await eventually(lambda: seen["es"].messages == [anna], within=60, what="anna in es")

            # fr's federation user may not speak for es: refused by fr's own server.
            forged = entry("es", "mallory", "8002")
            async with connect(federation_url("fr")) as nc:
                with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
                    await nc.jetstream().publish(
                        forged.directory_subject(), b"{}", stream="DIRECTORY_FR", timeout=2
                    )
            # The services (no credentials: APP) do not even see the directory streams.
            async with connect(regions["fr"].url()) as services:
                with pytest.raises(nats.js.errors.NotFoundError):
                    await services.jetstream().stream_info("DIRECTORY_FR")
            # Wrong leaf credentials do not join.
            with pytest.raises(nats.errors.Error):
                await nats.connect(
                    hub.url("leaf-fr", passwords["leaf-es"]),
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=2,
                )
            await asyncio.sleep(1.0)
            assert forged.key not in seen["es"].seen_keys()
            assert seen["fr"].messages == []
        finally:
            for link in links.values():
                await link.stop()
    finally:
        for node in regions.values():
            node.stop()
        hub.stop()

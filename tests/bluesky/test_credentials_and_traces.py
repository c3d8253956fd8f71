"""Credentials: encrypted at rest, rotated to a new key at start, never in logs or traces.
Traces: a span per remote call, with the call's name and the number of writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from passerelle_bluesky_sender.crypto import key_fingerprint
from tests.bluesky.support import (
    bus,
    fake_did,
    ledger_path,
    metric,
    metrics_text,
    new_person,
    query,
    request_for,
    results_of,
    sender_env,
    start_sender,
)
from tests.peers.pds.harness import LocalPds
from tests.support.nats import NatsServer

pytestmark = pytest.mark.e2e


async def test_rotation_secrets_and_spans(
    pds: LocalPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    spans = tmp_path / "spans.jsonl"
    base = sender_env(
        pds.url,
        pds.plc_url,
        PASSERELLE_BLUESKY_CHECK_TARGETS="false",
        PASSERELLE_TRACE_FILE=str(spans),
        PASSERELLE_BLUESKY_REPLICA_ID="r1",
    )
    me = pds.create_account()
    db = ledger_path(tmp_path)
    sender = start_sender(nats_server, tmp_path, base | {"PASSERELLE_ENCRYPTION_KEYS": old})
    try:
        async with bus(nats_server.url) as b:
            person = new_person()
            assert (await b.link(me.handle, me.app_password, person)).error is None
            await b.publish(request_for(person, me.did, fake_did()))
            await results_of(b, person, 1)
        [row] = query(db, "SELECT key_id FROM bluesky_account WHERE did = ?", me.did)
        assert row["key_id"] == key_fingerprint(old.encode())
    finally:
        sender.stop()

    # A new key first, the old one still listed: everything is re-encrypted at start.
    both = f"{new},{old}"
    sender = start_sender(nats_server, tmp_path, base | {"PASSERELLE_ENCRYPTION_KEYS": both})
    try:
        [row] = query(db, "SELECT key_id FROM bluesky_account WHERE did = ?", me.did)
        assert row["key_id"] == key_fingerprint(new.encode())
    finally:
        sender.stop()

    # The old key gone: the credentials still open, the work goes on.
    sender = start_sender(nats_server, tmp_path, base | {"PASSERELLE_ENCRYPTION_KEYS": new})
    try:
        async with bus(nats_server.url) as b:
            await b.publish(request_for(person, me.did, fake_did()))
            results = await results_of(b, person, 2)
            assert {r.outcome for r in results} == {"followed"}
            text = await metrics_text(sender)
    finally:
        sender.stop()
    assert metric(text, "passerelle_follows_total", outcome="followed") >= 1
    assert metric(text, "passerelle_rate_budget_points_allowed", window="hour") >= 0

    # Nothing secret in the logs, the traces or the database file.
    secrets = [me.app_password, old, new]
    session = query(db, "SELECT access_jwt, refresh_jwt FROM bluesky_account")[0]
    for where in (sender.log_path, spans, db):
        text = where.read_bytes().decode(errors="replace")
        for secret in secrets:
            assert secret not in text, where
    assert all(value.startswith("gAAAA") for value in session.values())

    recorded = [json.loads(line) for line in spans.read_text().splitlines() if line.strip()]
    names = {s["name"] for s in recorded}
    assert "xrpc com.atproto.server.createSession" in names
    writes = [s for s in recorded if s["name"] == "xrpc com.atproto.repo.applyWrites"]
    assert writes
    assert writes[0]["attributes"]["bluesky.writes"] == 1
    assert writes[0]["attributes"]["rpc.method"] == "com.atproto.repo.applyWrites"
    for span in recorded:
        attributes = json.dumps(span.get("attributes", {}))
        assert "Bearer" not in attributes
        assert me.did not in attributes  # no personal identifier in span attributes

"""Linking and unlinking against a real PDS, through the real service over NATS."""

from __future__ import annotations

import pytest

from tests.bluesky.support import (
    bus,
    eventually,
    ledger_path,
    metric,
    metrics_text,
    new_person,
    query,
)
from tests.peers.pds.harness import LocalPds
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


async def test_link_with_the_right_app_password(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    alice = pds.create_account()
    person = new_person()
    async with bus(module_nats.url) as b:
        reply = await b.link(alice.handle, alice.app_password, person)
        assert reply.error is None, reply.error
        assert (reply.account, reply.handle, reply.network) == (alice.did, alice.handle, "bluesky")
        linked = await eventually(lambda: _linked_for(b, person), 10, "identity.linked published")
        assert (linked.account, linked.handle, linked.network) == (
            alice.did,
            alice.handle,
            "bluesky",
        )

    rows = query(
        ledger_path(shared_sender.work_dir),
        "SELECT * FROM bluesky_account WHERE person_id = ?",
        person,
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["did"] == alice.did
    assert row["pds_url"] == pds.url
    assert row["state"] == "active"
    # Encrypted at rest: neither the app password nor the tokens appear in clear.
    for column in ("app_password", "access_jwt", "refresh_jwt"):
        assert row[column].startswith("gAAAA"), column  # a Fernet token
    dump = ledger_path(shared_sender.work_dir).read_bytes()
    assert alice.app_password.encode() not in dump
    assert alice.app_password not in shared_sender.log_path.read_text()


async def _linked_for(b, person):  # type: ignore[no-untyped-def]
    return next((e for e in await b.linked() if e.person_id == person), None)


async def test_link_by_did_and_with_at_sign_and_case(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    bob = pds.create_account()
    async with bus(module_nats.url) as b:
        by_did = await b.link(bob.did, bob.app_password, None)
        assert (by_did.account, by_did.handle, by_did.error) == (bob.did, bob.handle, None)
        by_handle = await b.link("@" + bob.handle.upper(), bob.app_password, None)
        assert by_handle.account == bob.did
        assert by_handle.error is None


async def test_verify_only_when_there_is_no_person_yet(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    carol = pds.create_account()
    async with bus(module_nats.url) as b:
        reply = await b.link(carol.handle, carol.app_password, None)
        assert (reply.account, reply.handle, reply.error) == (carol.did, carol.handle, None)
        assert not [e for e in await b.linked() if e.account == carol.did]
    assert not query(
        ledger_path(shared_sender.work_dir),
        "SELECT did FROM bluesky_account WHERE did = ?",
        carol.did,
    )


async def test_wrong_password_unknown_handle_and_bad_identifiers(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    dave = pds.create_account()
    async with bus(module_nats.url) as b:
        wrong = await b.link(dave.handle, "aaaa-bbbb-cccc-dddd", new_person())
        assert wrong.account is None
        assert wrong.error is not None
        assert wrong.error.code == "wrong_password"
        unknown = await b.link("nobody-here.test", "aaaa-bbbb-cccc-dddd", new_person())
        assert unknown.error is not None
        assert unknown.error.code == "unknown_handle"
        unknown_did = await b.link("did:plc:" + "a" * 24, "aaaa-bbbb-cccc-dddd", None)
        assert unknown_did.error is not None
        assert unknown_did.error.code == "unknown_handle"
        for garbage in ("not a handle", "did:key:zabc", "x..y"):
            bad = await b.link(garbage, "aaaa-bbbb-cccc-dddd", None)
            assert bad.error is not None, garbage
            assert bad.error.code == "invalid_identifier", garbage
        # The main password is refused (an app password is asked for).
        main = await b.link(dave.handle, dave.password, new_person())
        assert main.error is not None
        assert main.error.code == "not_app_password"
    assert not query(
        ledger_path(shared_sender.work_dir),
        "SELECT did FROM bluesky_account WHERE did = ?",
        dave.did,
    )
    text = await metrics_text(shared_sender)
    assert metric(text, "passerelle_links_total", result="wrong_password") >= 1


async def test_one_account_one_person_and_relinking(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    erin, other = pds.create_account(), pds.create_account()
    first, second = new_person(), new_person()
    async with bus(module_nats.url) as b:
        assert (await b.link(erin.handle, erin.app_password, first)).error is None
        taken = await b.link(erin.handle, erin.app_password, second)
        assert taken.error is not None
        assert taken.error.code == "linked_to_another_person"
        # Linking again (same person) refreshes the credentials; no conflict.
        assert (await b.link(erin.handle, erin.app_password, first)).error is None
        # Linking another account replaces the person's link: the old one is unlinked.
        assert (await b.link(other.handle, other.app_password, first)).account == other.did
        unlinked = await eventually(
            lambda: _unlinked(b, erin.did), 10, "identity.unlinked for the replaced link"
        )
        assert unlinked[0].person_id == first
        assert unlinked[0].reason == "unlinked"
    rows = query(
        ledger_path(shared_sender.work_dir),
        "SELECT did FROM bluesky_account WHERE person_id = ?",
        first,
    )
    assert rows == [{"did": other.did}]


async def _unlinked(b, did):  # type: ignore[no-untyped-def]
    return [e for e in await b.unlinked() if e.account == did]


async def test_unlink_deletes_the_credentials(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    frank = pds.create_account()
    person = new_person()
    async with bus(module_nats.url) as b:
        assert (await b.link(frank.handle, frank.app_password, person)).error is None
        assert (await b.unlink(person)).removed is True
        assert (await b.unlink(person)).removed is False
        assert (await b.unlink(new_person())).removed is False
        events = await eventually(lambda: _unlinked(b, frank.did), 10, "identity.unlinked")
        assert [(e.person_id, e.reason) for e in events] == [(person, "unlinked")]
    assert not query(
        ledger_path(shared_sender.work_dir),
        "SELECT did FROM bluesky_account WHERE person_id = ?",
        person,
    )

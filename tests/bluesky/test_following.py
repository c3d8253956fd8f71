"""Following through the real service, against a real PDS: records, results, exactly once."""

from __future__ import annotations

import pytest
from atproto import models

from passerelle_contracts import BlueskyFollowRequested, BlueskyFollowsRequested, FollowResult
from tests.bluesky.support import (
    Bus,
    bus,
    eventually,
    ledger_path,
    metric,
    metrics_text,
    new_person,
    query,
    request_for,
)
from tests.peers.pds.harness import LocalPds, PdsAccount
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e


async def link(b: Bus, account: PdsAccount) -> str:
    person = new_person()
    reply = await b.link(account.handle, account.app_password, person)
    assert reply.error is None, reply.error
    return person


async def results_for(b: Bus, person: str, count: int, within: float = 60) -> list[FollowResult]:
    async def check() -> list[FollowResult]:
        found = [r for r in await b.results() if r.person_id == person]
        return found if len(found) >= count else []

    return await eventually(check, within, f"{count} results for {person}")


async def test_follows_n_accounts_once_each(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    me = pds.create_account()
    targets = pds.create_accounts(25, prefix="target")
    async with bus(module_nats.url) as b:
        person = await link(b, me)
        requests = [request_for(person, me.did, t.did) for t in targets]
        # Version 1 (one follow a message) for some, version 2 (several) for the rest,
        # as matching sends them now.
        for r in requests[:5]:
            await b.publish(r)
        for first in range(5, len(requests), 8):
            await b.publish(several(requests[first : first + 8]))
        results = await results_for(b, person, len(requests))
        assert sorted(r.target for r in results) == sorted(t.did for t in targets)
        assert {(r.outcome, r.reason) for r in results} == {("followed", None)}
        assert {r.follow_id for r in results} == {r.follow_id for r in requests}

        # The same requests again (a redelivery after JetStream's dedupe window, or matching
        # asking twice, grouped otherwise): nothing new is followed, no second result.
        for r in requests[:10]:
            await b.publish_raw(
                r.subject, r.model_dump_json().encode(), msg_id="again-" + r.follow_id
            )
        again = several(requests[10:])
        await b.publish_raw(again.subject, again.model_dump_json().encode(), msg_id="again")
        await eventually(lambda: _drained(b), 30, "requests consumed")
        await _settled(shared_sender, me.did)
        assert len([r for r in await b.results() if r.person_id == person]) == len(requests)

    followed = pds.followed_dids(me.did)
    assert sorted(followed) == sorted(t.did for t in targets)  # each once, records visible
    rows = query(
        ledger_path(shared_sender.work_dir),
        "SELECT state, outcome, record_uri FROM bluesky_follow WHERE actor = ?",
        me.did,
    )
    assert len(rows) == 25
    assert {(r["state"], r["outcome"]) for r in rows} == {("done", "followed")}
    records = pds.list_follows(me.did)
    assert {r["record_uri"] for r in rows} == {r["uri"] for r in records}
    # What the sender wrote is a valid app.bsky.graph.follow by the lexicon, as the atproto
    # SDK reads it (strict: the subject is a DID, createdAt a datetime).
    for record in records:
        follow = models.get_or_create(
            record["value"], models.AppBskyGraphFollow.Record, strict_string_format=True
        )
        assert isinstance(follow, models.AppBskyGraphFollow.Record)
    text = await metrics_text(shared_sender)
    assert metric(text, "passerelle_follows_total", outcome="followed") >= 25


def several(requests: list[BlueskyFollowRequested]) -> BlueskyFollowsRequested:
    """One version-2 message carrying these follows."""
    return BlueskyFollowsRequested(
        region=requests[0].region, follows=tuple(f for r in requests for f in r.requests())
    )


async def _drained(b: Bus) -> bool:
    return await b.pending_requests() == 0


async def _settled(sender: ServiceProcess, did: str) -> None:
    async def check() -> bool:
        rows = query(
            ledger_path(sender.work_dir),
            "SELECT count(*) AS n FROM bluesky_follow WHERE actor = ? AND "
            "(state IN ('pending', 'in_flight') OR result_pending)",
            did,
        )
        return rows[0]["n"] == 0

    await eventually(check, 30, "ledger settled")


async def test_already_followed_targets_are_skipped(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    me = pds.create_account()
    targets = pds.create_accounts(6, prefix="known")
    pds.create_follows(me, [t.did for t in targets[:3]])  # followed before passerelle
    async with bus(module_nats.url) as b:
        person = await link(b, me)
        for t in targets:
            await b.publish(request_for(person, me.did, t.did))
        results = await results_for(b, person, 6)
    outcomes = {r.target: r.outcome for r in results}
    assert outcomes == {
        **{t.did: "already_following" for t in targets[:3]},
        **{t.did: "followed" for t in targets[3:]},
    }
    assert sorted(pds.followed_dids(me.did)) == sorted(t.did for t in targets)  # no duplicate


async def test_deleted_target_fails_once_and_bad_requests_are_answered(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    me = pds.create_account()
    alive, gone = pds.create_account(), pds.create_account()
    r = pds.http.post(
        "/xrpc/com.atproto.admin.deleteAccount", json={"did": gone.did}, auth=pds.admin_auth
    )
    assert r.status_code == 200, r.text
    stranger = pds.create_account()  # never linked here
    async with bus(module_nats.url) as b:
        person = await link(b, me)
        for target in (alive.did, gone.did, me.did, "did:web:bad host"):
            await b.publish(request_for(person, me.did, target))
        await b.publish(request_for(new_person(), stranger.did, alive.did))
        results = await results_for(b, person, 4)
        by_target = {r.target: (r.outcome, r.reason) for r in results}
        assert by_target == {
            alive.did: ("followed", None),
            gone.did: ("failed", "target_not_found"),
            me.did: ("failed", "self_follow"),
            "did:web:bad host": ("failed", "invalid_target"),
        }
        # The deleted target asked again: no new attempt, no new result.
        again = request_for(person, me.did, gone.did)
        await b.publish_raw(again.subject, again.model_dump_json().encode(), "again-gone")
        await eventually(lambda: _drained(b), 30, "requests consumed")
        await _settled(shared_sender, me.did)
        assert len([r for r in await b.results() if r.person_id == person]) == 4
        not_linked = [
            r for r in await b.results() if r.target == alive.did and r.person_id != person
        ]
        assert [(r.outcome, r.reason) for r in not_linked] == [("failed", "not_linked")]
    assert pds.followed_dids(me.did) == [alive.did]
    assert pds.followed_dids(stranger.did) == []


async def test_poison_message_goes_to_dead_letters(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    async with bus(module_nats.url) as b:
        before = len(await b.dead_letters())
        await b.publish_raw("follow.requested.bluesky", b'{"type": "nonsense"}', "poison-1")

        async def dead() -> bool:
            return len(await b.dead_letters()) > before

        await eventually(dead, 60, "the poison message dead-lettered")
        assert await b.pending_requests() == 0


async def test_unlink_ends_pending_follows_and_erasure_forgets_everything(
    pds: LocalPds, module_nats: NatsServer, shared_sender: ServiceProcess
) -> None:
    me = pds.create_account()
    targets = pds.create_accounts(3, prefix="later")
    db = ledger_path(shared_sender.work_dir)
    async with bus(module_nats.url) as b:
        person = await link(b, me)
        await b.publish(request_for(person, me.did, targets[0].did))
        await results_for(b, person, 1)
        assert (await b.unlink(person)).removed
        # Asked after the unlink: answered, not followed.
        await b.publish(request_for(person, me.did, targets[1].did))
        results = await results_for(b, person, 2)
        assert (results[1].outcome, results[1].reason) == ("failed", "not_linked")
        # Linked again: the earlier follow is not repeated, new ones proceed.
        reply = await b.link(me.handle, me.app_password, person)
        assert reply.error is None
        await b.publish(request_for(person, me.did, targets[2].did))
        again = request_for(person, me.did, targets[1].did)
        await b.publish_raw(
            again.subject, again.model_dump_json().encode(), "relink-" + again.follow_id
        )
        results = await results_for(b, person, 4)
        assert sorted(pds.followed_dids(me.did)) == sorted(t.did for t in targets)

        await b.erase(person)

        async def forgotten() -> bool:
            counts = [
                query(db, f"SELECT count(*) AS n FROM {table} WHERE {column} = ?", value)[0]["n"]
                for table, column, value in (
                    ("bluesky_account", "person_id", person),
                    ("bluesky_follow", "person_id", person),
                    ("bluesky_follow", "actor", me.did),
                    ("bluesky_known_follow", "actor", me.did),
                    ("bluesky_budget_spend", "did", me.did),
                    ("bluesky_target", "did", me.did),
                )
            ]
            return not any(counts)

        await eventually(forgotten, 30, "nothing about the person remains")

"""Following across real test instances: resolve, relationships, follow, results, failures."""

from __future__ import annotations

import asyncio
import json
import time

import nats.js.errors
from sqlalchemy import text

from passerelle_contracts import MastodonFollowsRequested, UserErased
from passerelle_contracts.streams import DEAD_LETTERS, FOLLOW_REQUESTS, dead_letter_subject
from passerelle_platform.broker import publish_event
from tests.mastodon.support import Harness


async def link_alice(harness: Harness, **account: int) -> str:
    harness.fleet["alpha.test"].create_account("alice", **account)
    return await harness.sign_in("alpha.test", "alice", "p-alice")


def summary(harness: Harness, domain: str, username: str) -> dict[str, int]:
    """The server's count of follow attempts by outcome (zeros left out)."""
    counts: dict[str, int] = harness.fleet[domain].follows(username)["summary"]
    return {k: v for k, v in counts.items() if v}


async def test_follows_across_instances(harness: Harness) -> None:
    alpha, beta, gamma = (harness.fleet[d] for d in ("alpha.test", "beta.test", "gamma.test"))
    actor = await link_alice(harness)
    alpha.create_account("carol")
    beta.create_account("bob", followers_count=10)
    gamma.create_account("dave", locked=True)
    targets = ["bob@beta.test", "carol@alpha.test", "dave@gamma.test", "ghost@beta.test", actor]
    await harness.request_follows("p-alice", actor, targets)

    results = await harness.wait_results("p-alice", len(targets))
    outcomes = {t: (r.outcome, r.reason) for t, r in results.items()}
    assert outcomes == {
        "bob@beta.test": ("followed", None),
        "carol@alpha.test": ("followed", None),
        "dave@gamma.test": ("followed", None),  # a request: dave approves followers
        "ghost@beta.test": ("failed", "target_not_found"),
        "alice@alpha.test": ("failed", "self"),
    }
    assert summary(harness, "alpha.test", "alice") == {"created": 3}
    # Federation delivered the remote follows to their instances.
    await harness.wait_for(
        lambda: (
            [(f["account"], f["target"], f["state"]) for f in beta.follows()["follows"]]
            == [("alice@alpha.test", "bob", "accepted")]
        ),
        what="bob's instance accepted the follow",
    )
    await harness.wait_for(
        lambda: (
            [(f["target"], f["state"]) for f in gamma.follows()["follows"]]
            == [("dave", "requested")]
        ),
        what="dave's instance got the follow request",
    )


async def test_already_followed_accounts_are_not_followed_again(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    actor = await link_alice(harness)
    alpha.create_account("carol")
    token = await asyncio.to_thread(alpha.login, "alice")
    carol = await asyncio.to_thread(alpha.resolve, token, "carol@alpha.test")
    assert carol is not None
    with alpha.api(token) as api:
        assert api.post(f"/api/v1/accounts/{carol['id']}/follow").status_code == 200

    await harness.request_follows("p-alice", actor, ["carol@alpha.test"])
    results = await harness.wait_results("p-alice", 1)
    assert results["carol@alpha.test"].outcome == "already_following"
    assert summary(harness, "alpha.test", "alice") == {"created": 1}  # the one made by hand


async def test_redelivered_requests_follow_once(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_accounts(20, prefix="t")
    targets = [f"t{i}@beta.test" for i in range(1, 21)]
    requests = await harness.request_follows("p-alice", actor, targets)
    # The same requests again, as new messages (past JetStream's dedupe), twice: one
    # follow a message (version 1), then several (version 2, as matching sends them).
    js = harness.edge.connection.jetstream()
    for r in requests:
        await js.publish(
            r.subject, r.model_dump_json().encode(), headers={"Nats-Msg-Id": f"{r.dedupe_id()}:a"}
        )
    for first in range(0, len(requests), 7):
        message = MastodonFollowsRequested(
            region=requests[0].region,
            follows=tuple(f for r in requests[first : first + 7] for f in r.requests()),
        )
        await js.publish(
            message.subject,
            message.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{message.dedupe_id()}:b"},
        )
    await harness.wait_results("p-alice", 20)
    await asyncio.sleep(1.0)  # let any duplicate work show up
    assert summary(harness, "alpha.test", "alice") == {"created": 20}
    assert {r.outcome for r in harness.results} <= {"followed", "already_following"}
    assert sum(r.outcome == "followed" for r in harness.results) == 20


async def test_async_follows_are_not_failures(harness: Harness) -> None:
    gamma = harness.fleet["gamma.test"]
    gamma.configure(async_follow=True, async_follow_delay=0.5)
    gamma.create_account("gina")
    harness.fleet["alpha.test"].create_account("amy")
    acct = await harness.sign_in("gamma.test", "gina", "p-gina")
    await harness.request_follows("p-gina", acct, ["amy@alpha.test"])
    results = await harness.wait_results("p-gina", 1)
    assert results["amy@alpha.test"].outcome == "followed"
    assert summary(harness, "gamma.test", "gina") == {"created": 1}


async def test_servers_without_rate_headers(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    beta.configure(no_rate_limit_headers=True)
    beta.create_account("bea")
    beta.create_accounts(5, prefix="u")
    acct = await harness.sign_in("beta.test", "bea", "p-bea")
    await harness.request_follows("p-bea", acct, [f"u{i}@beta.test" for i in range(1, 6)])
    results = await harness.wait_results("p-bea", 5)
    assert {r.outcome for r in results.values()} == {"followed"}


async def test_server_errors_are_retried(harness: Harness) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_account("bob")
    alpha.inject_fault(path="/api/v1/accounts/*/follow", method="POST", status=503, count=2)
    alpha.inject_fault(path="/api/v2/search", status=502, count=1)
    await harness.request_follows("p-alice", actor, ["bob@beta.test"])
    results = await harness.wait_results("p-alice", 1)
    assert results["bob@beta.test"].outcome == "followed"
    assert summary(harness, "alpha.test", "alice") == {"created": 1}


async def test_a_revoked_token_is_reported_and_stops_the_follows(harness: Harness) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_accounts(3, prefix="t")
    alpha.revoke_tokens(username="alice")
    await harness.request_follows("p-alice", actor, [f"t{i}@beta.test" for i in range(1, 4)])
    results = await harness.wait_results("p-alice", 3)
    assert {(r.outcome, r.reason) for r in results.values()} == {("failed", "token_revoked")}
    await harness.wait_for(lambda: len(harness.unlinked) == 1, what="identity.unlinked")
    assert harness.unlinked[0].reason == "credential_revoked"
    assert harness.unlinked[0].account == actor
    # Relinking and asking again works.
    await harness.sign_in("alpha.test", "alice", "p-alice")
    harness.results.clear()
    await harness.request_follows("p-alice", actor, ["t1@beta.test"])
    # The same request id was already published: JetStream's dedupe drops it within the
    # window; matching asks again later. Here, publish a fresh copy.
    request = harness.follow_request("p-alice", actor, "t1@beta.test")
    await harness.edge.connection.jetstream().publish(
        request.subject, request.model_dump_json().encode()
    )
    results = await harness.wait_results("p-alice", 1)
    assert results["t1@beta.test"].outcome == "followed"


async def test_follow_cap_stops_and_says_so(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    actor = await link_alice(harness, following_count=7_499, followers_count=100)
    alpha.create_accounts(3, prefix="c")
    await harness.request_follows("p-alice", actor, [f"c{i}@alpha.test" for i in range(1, 4)])
    results = await harness.wait_results("p-alice", 3)
    server = harness.fleet["alpha.test"].follows("alice")
    assert sorted((r.outcome, r.reason) for r in results.values()) == [
        ("failed", "follow_cap"),
        ("failed", "follow_cap"),
        ("followed", None),
    ], server
    assert summary(harness, "alpha.test", "alice") == {"created": 1}  # never refused


async def test_unlink_ends_open_follows(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_account("bob")
    beta.configure(no_rate_limit_headers=False)
    beta.inject_fault(path="/.well-known/webfinger", status=503, count=None)
    await harness.request_follows("p-alice", actor, ["bob@beta.test"])
    await asyncio.sleep(0.5)
    assert (await harness.unlink("p-alice")).removed
    results = await harness.wait_results("p-alice", 1)
    assert (results["bob@beta.test"].outcome, results["bob@beta.test"].reason) in {
        ("failed", "unlinked"),
        ("failed", "target_not_found"),
    }


async def test_erasure_forgets_everything(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    actor = await link_alice(harness)
    alpha.create_account("carol")
    await harness.request_follows("p-alice", actor, ["carol@alpha.test"])
    await harness.wait_results("p-alice", 1)
    await publish_event(harness.edge, UserErased(region="test", person_id="p-alice"))
    store, ledger = harness.local.store, harness.local.ledger
    await harness.wait_for(lambda: store.link("p-alice") is None, what="link forgotten")
    await harness.wait_for(lambda: all(t["revoked_at"] for t in alpha.tokens()), what="revoked")
    assert ledger.backlog() == 0
    with ledger.engine.connect() as conn:
        for table in ("mastodon_follow", "mastodon_link", "mastodon_pending_link"):
            count = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert count == 0, table
        assert (
            conn.execute(
                text("SELECT count(*) FROM mastodon_resolved WHERE acct = :a"), {"a": actor}
            ).scalar()
            == 0
        )


async def test_a_poison_message_goes_to_the_dead_letters_alone(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_account("bob")
    js = harness.edge.connection.jetstream()
    await js.publish("follow.requested.mastodon", b'{"type": "follow.requested.mastodon"}')
    await harness.request_follows("p-alice", actor, ["bob@beta.test"])
    results = await harness.wait_results("p-alice", 1)
    assert results["bob@beta.test"].outcome == "followed"
    subject = dead_letter_subject(FOLLOW_REQUESTS.name, "mastodon-follows")

    async def dead() -> list[bytes]:
        try:
            info = await js.stream_info(DEAD_LETTERS.name, subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            return []
        if not info.state.messages:
            return []
        message = await js.get_last_msg(DEAD_LETTERS.name, subject)
        return [message.data or b""]

    deadline = asyncio.get_running_loop().time() + 30
    while not await dead():
        assert asyncio.get_running_loop().time() < deadline, "no dead letter"
        await asyncio.sleep(0.2)
    assert json.loads((await dead())[0]) == {"type": "follow.requested.mastodon"}


async def test_granular_scopes_refused_after_linking_ask_the_person_again(
    harness: Harness,
) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_account("bob")
    alpha.configure(granular_scopes_unsupported=True)  # e.g. the server was changed
    await harness.request_follows("p-alice", actor, ["bob@beta.test"])
    results = await harness.wait_results("p-alice", 1)
    assert (results["bob@beta.test"].outcome, results["bob@beta.test"].reason) == (
        "failed",
        "reauthorize_required",
    )
    await harness.wait_for(lambda: len(harness.unlinked) == 1, what="identity.unlinked")
    again = await harness.authorize("alpha.test")
    assert "scope=read+write+follow" in (again.authorize_url or "")


async def test_a_429_waits_for_the_announced_reset(harness: Harness) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    actor = await link_alice(harness)
    beta.create_account("bob")
    alpha.inject_fault(path="/api/v1/accounts/*/follow", method="POST", status=429, reset_in=2.0)
    started = time.monotonic()
    await harness.request_follows("p-alice", actor, ["bob@beta.test"])
    results = await harness.wait_results("p-alice", 1)
    assert results["bob@beta.test"].outcome == "followed"
    assert time.monotonic() - started >= 2.0  # not before the reset
    assert summary(harness, "alpha.test", "alice") == {"created": 1}


async def test_lanes_needing_the_same_target_look_it_up_once(harness: Harness) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    alpha.create_account("alice")
    alpha.create_account("erin")
    beta.create_account("bob")
    alice = await harness.sign_in("alpha.test", "alice", "p-alice")
    erin = await harness.sign_in("alpha.test", "erin", "p-erin")
    # Slow searches: the two lanes are surely looking bob up at the same moment.
    alpha.inject_fault(path="/api/v2/search", method="GET", latency=1.0, count=None)
    await asyncio.gather(
        harness.request_follows("p-alice", alice, ["bob@beta.test"]),
        harness.request_follows("p-erin", erin, ["bob@beta.test"]),
    )
    for person in ("p-alice", "p-erin"):
        results = await harness.wait_results(person, 1)
        assert results["bob@beta.test"].outcome == "followed"
    (rule,) = alpha.inject_faults()  # no new rule: the current ones, with their hits
    assert rule["hits"] == 1
    assert {f["account"] for f in alpha.follows()["follows"]} == {"alice", "erin"}

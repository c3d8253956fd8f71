"""Failures: a sender killed mid-batch, faults between it and the PDS, a revoked credential.

The sender runs as a real process, pointed at a fault-injecting proxy in front of the real
PDS. Whatever happens, every follow ends up exactly once in the person's repo; a link that
cannot be made gets a clear error and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bluesky.proxy import Fault, ProxiedPds, proxied
from tests.bluesky.support import (
    Bus,
    bus,
    eventually,
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
from tests.peers.pds.harness import LocalPds, PdsAccount
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.e2e

APPLY = "/xrpc/com.atproto.repo.applyWrites"
LIST = "/xrpc/com.atproto.repo.listRecords"
LOGIN = "/xrpc/com.atproto.server.createSession"
REFRESH = "/xrpc/com.atproto.server.refreshSession"
RESOLVE = "/xrpc/com.atproto.identity.resolveHandle"
HTTP_TIMEOUT = 2.0
EXPIRED = b'{"error":"ExpiredToken","message":"Token has expired"}'


@pytest.fixture(scope="module")
def proxy(pds: LocalPds) -> Iterator[ProxiedPds]:
    p = proxied(pds.url, pds.plc_url)
    try:
        yield p
    finally:
        p.stop()


def proxied_env(proxy: ProxiedPds, **extra: str) -> dict[str, str]:
    settings = {
        "PASSERELLE_BLUESKY_CHECK_TARGETS": "false",
        "PASSERELLE_BLUESKY_HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
        "PASSERELLE_BLUESKY_RETRY_BASE_SECONDS": "0.2",
        "PASSERELLE_BLUESKY_RETRY_MAX_SECONDS": "2",
    }
    return sender_env(proxy.url, proxy.plc_url, **(settings | extra))


@pytest.fixture(scope="module")
def faulty_sender(
    proxy: ProxiedPds, module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    work = tmp_path_factory.mktemp("faulty")
    # Sessions are refreshed before nearly every call, so faults of refreshSession (and
    # logging in again when a refresh token is refused) happen in these tests too.
    env = proxied_env(proxy, PASSERELLE_BLUESKY_SESSION_MAX_AGE_SECONDS="1")
    process = start_sender(module_nats, work, env)
    try:
        yield process
    finally:
        process.stop()


async def linked(b: Bus, account: PdsAccount) -> str:
    person = new_person()
    reply = await b.link(account.handle, account.app_password, person)
    assert reply.error is None, reply.error
    return person


def assert_exactly_once(pds: LocalPds, me: PdsAccount, targets: list[str]) -> None:
    followed = Counter(pds.followed_dids(me.did))
    duplicates = {t: n for t, n in followed.items() if n > 1}
    assert not duplicates, f"followed more than once: {duplicates}"
    assert sorted(followed) == sorted(targets)


async def test_killed_mid_batch_then_restarted_follows_exactly_once(
    pds: LocalPds, proxy: ProxiedPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    # A long timeout: the sender is surely still waiting for its answer when it dies. The
    # restarted process is the same replica (same id: it takes its accounts back at once).
    env = proxied_env(
        proxy, PASSERELLE_BLUESKY_HTTP_TIMEOUT_SECONDS="60", PASSERELLE_BLUESKY_REPLICA_ID="r1"
    )
    sender = start_sender(nats_server, tmp_path, env)
    me = pds.create_account()
    targets = [fake_did() for _ in range(450)]
    # The PDS applies the first batch, then the answer is held: the sender dies not knowing.
    hold = proxy.pds.add(Fault(APPLY, "delay_after", seconds=60, times=1))
    try:
        async with bus(nats_server.url) as b:
            person = await linked(b, me)
            await b.publish_all([request_for(person, me.did, t) for t in targets])

            async def batch_applied() -> int:
                return len(pds.followed_dids(me.did)) if hold.fired == 1 else 0

            applied = await eventually(batch_applied, 60, "first batch applied at the PDS")
            sender.kill()
            in_flight = query(
                ledger_path(tmp_path),
                "SELECT count(*) AS n FROM bluesky_follow WHERE actor = ? AND state = 'in_flight'",
                me.did,
            )
            assert in_flight[0]["n"] == applied  # applied, but the sender had not recorded it
            proxy.pds.clear()
            sender = start_sender(nats_server, tmp_path, env)
            results = await results_of(b, person, len(targets), within=120)
    finally:
        proxy.pds.clear()
        sender.stop()
    assert Counter(r.follow_id for r in results).most_common(1)[0][1] == 1
    assert {r.outcome for r in results} == {"followed"}
    assert_exactly_once(pds, me, targets)


async def test_killed_before_acking_requests_redelivered_once(
    pds: LocalPds, proxy: ProxiedPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Requests delivered to a sender that dies are redelivered; none is followed twice."""
    env = proxied_env(proxy, PASSERELLE_BLUESKY_REPLICA_ID="r2")
    sender = start_sender(nats_server, tmp_path, env)
    me = pds.create_account()
    targets = [fake_did() for _ in range(300)]
    slow = proxy.pds.add(Fault(APPLY, "delay_after", seconds=3, times=-1))
    try:
        async with bus(nats_server.url) as b:
            person = await linked(b, me)
            await b.publish_all([request_for(person, me.did, t) for t in targets[:150]])
            await eventually(lambda: _fired(slow), 60, "a batch under way")
            sender.kill()
            await b.publish_all([request_for(person, me.did, t) for t in targets[150:]])
            # The same requests again (matching replaying them): deduplicated or ignored.
            await b.publish_all([request_for(person, me.did, t) for t in targets[:50]])
            proxy.pds.clear()
            sender = start_sender(nats_server, tmp_path, env)
            results = await results_of(b, person, len(targets), within=120)
    finally:
        proxy.pds.clear()
        sender.stop()
    assert len(results) == len(targets)
    assert_exactly_once(pds, me, targets)


async def _fired(fault: Fault) -> bool:
    return fault.fired > 0


FAULTS = {
    "429_burst": lambda: Fault(
        APPLY,
        "status",
        status=429,
        body=b'{"error":"RateLimitExceeded","message":"Rate Limit Exceeded"}',
        headers=lambda: {
            "ratelimit-limit": "5000",
            "ratelimit-remaining": "0",
            "ratelimit-reset": str(int(time.time()) + 3),
            "ratelimit-policy": "5000;w=3600",
            "retry-after": "3",
        },
        times=3,
    ),
    "502_before": lambda: Fault(APPLY, "status", status=502, times=2),
    "500_after_applying": lambda: Fault(APPLY, "status_after", status=500, times=1),
    "dropped_before": lambda: Fault(APPLY, "drop_before", times=2),
    "dropped_after_applying": lambda: Fault(APPLY, "drop_after", times=1),
    "timeout_then_applied": lambda: Fault(APPLY, "hang", seconds=HTTP_TIMEOUT + 1.5, times=1),
    "reads_fail": lambda: Fault(LIST, "status", status=503, times=3),
    # Sessions: an access token the PDS says has expired (refresh, then the same batch
    # again), a PDS unreachable or failing when refreshing, a refresh token refused (log
    # in again with the app password, once).
    "access_token_expired": lambda: Fault(APPLY, "status", status=400, body=EXPIRED, times=1),
    "refresh_unreachable": lambda: Fault(REFRESH, "drop_before", times=2),
    "refresh_5xx": lambda: Fault(REFRESH, "status", status=503, times=2),
    "refresh_token_refused": lambda: Fault(REFRESH, "status", status=400, body=EXPIRED, times=1),
}
#: Logins (createSession) each fault may cause once the account is linked.
LOGINS_AFTER_LINK = {"refresh_token_refused": 1}


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_faults_never_lose_or_repeat_a_follow(
    name: str,
    pds: LocalPds,
    proxy: ProxiedPds,
    module_nats: NatsServer,
    faulty_sender: ServiceProcess,
) -> None:
    me = pds.create_account()
    targets = [fake_did() for _ in range(260)]
    async with bus(module_nats.url) as b:
        person = await linked(b, me)
        linked_at = time.time()
        fault = proxy.pds.add(FAULTS[name]())
        if fault.path == REFRESH:
            # The session (1 s) must be old by the first call, however fast the batch.
            await asyncio.sleep(1.5)
        try:
            started = time.monotonic()
            await b.publish_all([request_for(person, me.did, t) for t in targets])
            results = await results_of(b, person, len(targets), within=90)
            elapsed = time.monotonic() - started
        finally:
            proxy.pds.clear()
    assert fault.fired >= 1
    assert {r.outcome for r in results} == {"followed"}
    assert len({r.follow_id for r in results}) == len(targets)
    assert_exactly_once(pds, me, targets)
    # Sessions are reused and refreshed: no login unless a refresh token was refused.
    logins = [c for c in proxy.pds.calls(LOGIN) if c.at >= linked_at]
    assert len(logins) == LOGINS_AFTER_LINK.get(name, 0), name
    if name == "access_token_expired":
        refused = [c for c in proxy.pds.calls(APPLY) if c.fault and c.at >= linked_at]
        assert len(refused) == 1  # then the same batch went through
    if name == "429_burst":
        assert elapsed >= 2.0  # it waited for the announced reset
        text = await metrics_text(faulty_sender)
        assert metric(text, "passerelle_rate_limited_total", scope="write") >= 1


async def test_revoked_credential_breaks_the_link_once_and_relinking_resumes(
    pds: LocalPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = sender_env(
        pds.url,
        pds.plc_url,
        PASSERELLE_BLUESKY_CHECK_TARGETS="false",
        PASSERELLE_BLUESKY_SESSION_MAX_AGE_SECONDS="0.001",  # refresh before every call
    )
    sender = start_sender(nats_server, tmp_path, env)
    me = pds.create_account()
    first, later = [fake_did() for _ in range(3)], [fake_did() for _ in range(4)]
    try:
        async with bus(nats_server.url) as b:
            person = await linked(b, me)
            await b.publish_all([request_for(person, me.did, t) for t in first])
            await results_of(b, person, 3)
            pds.xrpc_post(
                "com.atproto.server.revokeAppPassword",
                {"name": "passerelle"},
                headers=me.auth_headers,
            )
            await b.publish_all([request_for(person, me.did, t) for t in later])

            async def revoked() -> list[object]:
                return [
                    e
                    for e in await b.unlinked()
                    if e.account == me.did and e.reason == "credential_revoked"
                ]

            events = await eventually(revoked, 30, "identity.unlinked(credential_revoked)")
            assert len(events) == 1
            assert events[0].person_id == person  # type: ignore[attr-defined]
            # The person's work stops: no error storm, no login loop.
            await asyncio.sleep(3)
            text = await metrics_text(sender)
            logins = metric(
                text, "passerelle_remote_calls_total", method="com.atproto.server.createSession"
            )
            assert logins <= 2
            rows = query(
                ledger_path(tmp_path),
                "SELECT state FROM bluesky_follow WHERE actor = ? AND state = 'pending'",
                me.did,
            )
            assert len(rows) == 4  # kept, paused
            assert len([r for r in await b.results() if r.person_id == person]) == 3
            assert metric(text, "passerelle_follow_backlog", state="paused") == 4
            await asyncio.sleep(2)
            text = await metrics_text(sender)
            assert (
                metric(
                    text,
                    "passerelle_remote_calls_total",
                    method="com.atproto.server.createSession",
                )
                == logins
            )

            # A new app password: linked again, the paused follows proceed.
            fresh = pds.xrpc_post(
                "com.atproto.server.createAppPassword",
                {"name": "passerelle-2"},
                headers=me.auth_headers,
            )["password"]
            reply = await b.link(me.handle, fresh, person)
            assert reply.error is None
            await results_of(b, person, 7)
    finally:
        sender.stop()
    assert sorted(pds.followed_dids(me.did)) == sorted(first + later)


RATE_LIMITED = b'{"error":"RateLimitExceeded","message":"Rate Limit Exceeded"}'
LINK_FAULTS = {
    # where (the PDS's proxy or the PLC directory's), fault, error code told to the edge
    "pds_dropped": ("pds", lambda: Fault(LOGIN, "drop_before"), "pds_unreachable"),
    "pds_5xx": ("pds", lambda: Fault(LOGIN, "status", status=503), "pds_unreachable"),
    "pds_timeout": (
        "pds",
        lambda: Fault(LOGIN, "hang", seconds=HTTP_TIMEOUT + 1.5),
        "pds_unreachable",
    ),
    "pds_login_limit": (
        "pds",
        lambda: Fault(
            LOGIN,
            "status",
            status=429,
            body=RATE_LIMITED,
            headers=lambda: {
                "ratelimit-limit": "30",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(int(time.time()) + 240),
                "ratelimit-policy": "30;w=300",
            },
        ),
        "rate_limited",
    ),
    "resolver_5xx": ("pds", lambda: Fault(RESOLVE, "status", status=502), "directory_unreachable"),
    "directory_5xx": ("plc", lambda: Fault("/did:", "status", status=503), "directory_unreachable"),
    # Down until cleared: the HTTP client retries a GET once on a dropped kept-alive connection.
    "directory_dropped": (
        "plc",
        lambda: Fault("/did:", "drop_before", times=-1),
        "directory_unreachable",
    ),
}


@pytest.mark.parametrize("name", sorted(LINK_FAULTS))
async def test_link_errors_when_the_pds_or_the_directory_fails(
    name: str,
    pds: LocalPds,
    proxy: ProxiedPds,
    module_nats: NatsServer,
    faulty_sender: ServiceProcess,
) -> None:
    where, make, code = LINK_FAULTS[name]
    me = pds.create_account()
    person = new_person()
    fault = (proxy.pds if where == "pds" else proxy.plc).add(make())
    try:
        async with bus(module_nats.url) as b:
            reply = await b.link(me.handle, me.app_password, person)
            assert fault.fired >= 1
            assert reply.account is None
            assert reply.error is not None
            assert reply.error.code == code, reply.error
            assert reply.error.message
            assert me.app_password not in reply.error.message
            if code == "rate_limited":
                assert "4 minutes" in reply.error.message  # when to try again
            # Nothing was kept or announced; once the fault is gone, linking works.
            assert not query(
                ledger_path(faulty_sender.work_dir),
                "SELECT did FROM bluesky_account WHERE did = ?",
                me.did,
            )
            assert not [e for e in await b.linked() if e.account == me.did]
            proxy.pds.clear()
            proxy.plc.clear()
            again = await b.link(me.handle, me.app_password, person)
            assert (again.error, again.account) == (None, me.did)
    finally:
        proxy.pds.clear()
        proxy.plc.clear()

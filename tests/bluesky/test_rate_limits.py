"""Rate limits: the real PDS's (``rateLimitsEnabled``), and resumption on a fast clock.

- Against the real PDS with Bluesky's limits on: the person also used their account
  (points the sender did not spend); the sender reads the headers, follows exactly as
  many as the hourly budget still allows, never gets a 429 (seen on the wire, by a
  proxy that only forwards), and keeps the rest for after the reset announced by the
  server.
- Through the proxy, which enforces the same limits on a fast clock shared with the
  sender: after each reset the sender resumes, hour after hour and day after day, without
  losing or repeating a follow and without ever going over.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from passerelle_bluesky_sender.clock import FastClock
from tests.bluesky.proxy import proxied
from tests.bluesky.ratelimit import CREATE_COST, WriteLimiter
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
from tests.peers.pds.harness import FOLLOW_COLLECTION, LocalPds
from tests.support.nats import NatsServer

pytestmark = pytest.mark.e2e

APPLY = "/xrpc/com.atproto.repo.applyWrites"


def own_writes(pds: LocalPds, headers: dict[str, str], did: str, count: int) -> None:
    """The person follows people from their own app (no bypass: it uses their budget)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    writes = [
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": FOLLOW_COLLECTION,
            "value": {"$type": FOLLOW_COLLECTION, "subject": fake_did(), "createdAt": now},
        }
        for _ in range(count)
    ]
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites", json={"repo": did, "writes": writes}, headers=headers
    )
    assert r.status_code == 200, r.text


async def test_stops_at_the_real_pds_limit_and_keeps_the_rest_for_the_reset(
    pds_rate_limited: LocalPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    pds = pds_rate_limited
    me = pds.create_account()
    session = pds.create_session(me.handle, me.app_password)
    headers = {"Authorization": f"Bearer {session['accessJwt']}"}
    # The server's hourly window starts with the first point, during the first call.
    before_first = time.time()
    own_writes(pds, headers, me.did, 200)
    after_first = time.time()
    for _ in range(2):
        own_writes(pds, headers, me.did, 200)  # 1,800 points of the hour spent elsewhere
    remaining = 5000 - 1800
    allowed = remaining // CREATE_COST  # 1,066 follows

    # A proxy that only forwards and records: what the PDS answered, seen from outside.
    proxy = proxied(pds.url, pds.plc_url)
    env = sender_env(proxy.url, proxy.plc_url, PASSERELLE_BLUESKY_CHECK_TARGETS="false")
    sender = start_sender(nats_server, tmp_path, env)
    targets = [fake_did() for _ in range(allowed + 134)]
    db = ledger_path(tmp_path)
    try:
        async with bus(nats_server.url) as b:
            person = new_person()
            assert (await b.link(me.handle, me.app_password, person)).error is None
            await b.publish_all([request_for(person, me.did, t) for t in targets])
            results = await results_of(b, person, allowed, within=120)
            await asyncio.sleep(3)  # would it try again? (it must not)
            results = [r for r in await b.results() if r.person_id == person]
            text = await metrics_text(sender)
    finally:
        sender.stop()
        proxy.stop()

    assert len(results) == allowed
    assert {r.outcome for r in results} == {"followed"}
    mine = Counter(pds.followed_dids(me.did))
    assert sum(mine[t] for t in targets) == allowed
    assert max(mine.values()) == 1
    # Never refused, never over: every applyWrites the PDS saw was applied (a call over
    # the budget would have been a 429, one of more than 200 writes a 400), and together
    # they hold exactly the follows the budget left (at least 6 calls: 5 × 200 + 66; more
    # when the sender went ahead with a batch before the intake had recorded 200 rows).
    writes = proxy.pds.calls(APPLY)
    assert [w.status for w in writes] == [200] * len(writes)
    assert len(writes) >= -(-allowed // 200)
    assert len(proxy.pds.applied) == allowed
    assert metric(text, "passerelle_rate_limited_total") == 0
    calls = metric(text, "passerelle_remote_calls_total", method="com.atproto.repo.applyWrites")
    assert calls == len(writes)

    # The rest waits in the ledger, untried.
    waiting = query(db, "SELECT attempts FROM bluesky_follow WHERE state = 'pending'")
    assert len(waiting) == len(targets) - allowed
    assert {w["attempts"] for w in waiting} == {0}
    # It read the headers: the points spent elsewhere are in its budget log, dated so that
    # they free up exactly at the server's reset (one hour after the window started).
    external = query(db, "SELECT at, points FROM bluesky_budget_spend WHERE kind = 'external'")
    assert sum(e["points"] for e in external) == 1800
    window_start = min(e["at"] for e in external)  # frees 3600 s later
    assert before_first - 1 <= window_start <= after_first + 1  # (the reset is in whole s)
    # And the server agrees there is nothing left this hour.
    r = pds.http.post(
        "/xrpc/com.atproto.repo.createRecord",
        json={
            "repo": me.did,
            "collection": FOLLOW_COLLECTION,
            "record": {
                "$type": FOLLOW_COLLECTION,
                "subject": fake_did(),
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
        },
        headers=headers,
    )
    assert r.status_code == 429
    assert int(r.headers["RateLimit-Remaining"]) == 0


# (window, batch): the batch whose points had to leave that window before the next one.
HOURLY_WAITS = [(3600.0, 0), (3600.0, 1)]
DAILY_WAITS = [(3600.0, 0), (86400.0, 0)]


@pytest.mark.parametrize(
    ("speedup", "per_hour", "per_day", "backlog", "waits"),
    [
        # Scaled down so that one batch (1-3 s on this shared machine) is an hour's budget.
        (720.0, 600, 35000, 500, HOURLY_WAITS),  # three hourly windows: 200 + 200 + 100
        (2880.0, 600, 1200, 500, DAILY_WAITS),  # the daily limit after 400, the rest next day
    ],
    ids=["hourly", "daily"],
)
async def test_resumes_after_each_reset_on_a_fast_clock(
    speedup: float,
    per_hour: int,
    per_day: int,
    backlog: int,
    waits: list[tuple[float, int]],
    pds: LocalPds,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    origin = time.time()
    clock = FastClock(speedup, origin)
    limiter = WriteLimiter(clock.now, limits=((per_hour, 3600.0), (per_day, 86400.0)))
    proxy = proxied(pds.url, pds.plc_url, limiter=limiter)
    env = sender_env(
        proxy.url,
        proxy.plc_url,
        PASSERELLE_BLUESKY_CHECK_TARGETS="false",
        PASSERELLE_BLUESKY_CLOCK_SPEEDUP=str(speedup),
        PASSERELLE_BLUESKY_CLOCK_ORIGIN=str(origin),
        PASSERELLE_BLUESKY_POINTS_PER_HOUR=str(per_hour),
        PASSERELLE_BLUESKY_POINTS_PER_DAY=str(per_day),
        # The first batch waits (up to 5 real seconds) until 200 requests are in the ledger,
        # however slowly this loaded machine publishes and records them: a batch per window.
        PASSERELLE_BLUESKY_BATCH_LINGER_SECONDS=str(5 * speedup),
        PASSERELLE_BLUESKY_RETRY_BASE_SECONDS="60",
    )
    sender = start_sender(nats_server, tmp_path, env)
    me = pds.create_account()
    targets = [fake_did() for _ in range(backlog)]
    try:
        async with bus(nats_server.url) as b:
            person = new_person()
            assert (await b.link(me.handle, me.app_password, person)).error is None
            await b.publish_all([request_for(person, me.did, t) for t in targets])
            results = await results_of(b, person, backlog, within=180)
    finally:
        sender.stop()
        proxy.stop()

    assert limiter.refused == 0, limiter.refusals  # never over a limit
    assert {r.outcome for r in results} == {"followed"}
    assert len({r.follow_id for r in results}) == backlog
    mine = Counter(pds.followed_dids(me.did))
    assert sorted(mine) == sorted(targets)
    assert max(mine.values()) == 1
    assert all(call.status == 200 for call in proxy.pds.calls(APPLY))
    # Each batch is one window's budget; after each, the sender waited for the window
    # and resumed promptly: the sender dates a call's points when its answer arrives
    # (never earlier than the server counted them), so the next batch is due one window
    # after that answer, and went out within 1.5 real seconds of it (the time to read
    # the ledger, perhaps refresh the session, and send, on a shared machine).
    applied = proxy.pds.applied_at
    assert [n for _, _, n in applied] == [200, 200, 100]
    first = applied[0][0]
    timeline = [(round((c - first) / 3600, 2), round((a - first) / 3600, 2)) for c, a, _ in applied]
    for i, (window, after) in enumerate(waits, start=1):
        due = applied[after][1] + window
        assert due <= applied[i][0] <= due + 1.5 * speedup, (i, timeline)


async def test_too_many_sign_ins_get_a_clear_error_from_the_real_pds(
    pds_rate_limited: LocalPds, nats_server: NatsServer, tmp_path: Path
) -> None:
    """createSession is limited to 30 per 5 minutes per account (failed ones count)."""
    pds = pds_rate_limited
    me = pds.create_account()
    sender = start_sender(nats_server, tmp_path, sender_env(pds.url, pds.plc_url))
    try:
        async with bus(nats_server.url) as b:
            wrong = [await b.link(me.handle, "aaaa-bbbb-cccc-dddd", None) for _ in range(30)]
            refused = await b.link(me.handle, me.app_password, new_person())
    finally:
        sender.stop()
    assert {r.error.code for r in wrong if r.error is not None} == {"wrong_password"}
    assert all(r.error is not None for r in wrong)
    assert refused.account is None
    assert refused.error is not None
    assert refused.error.code == "rate_limited"
    assert "minutes" in refused.error.message  # when to try again

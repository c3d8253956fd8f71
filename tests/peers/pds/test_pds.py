"""Facts about a real Bluesky PDS that passerelle's bluesky_sender relies on.

Runs against the PDS started by tests/peers/pds (see docs/testing-bluesky.md). If one of these
fails after a PDS upgrade, the sender's assumptions need a look.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
import pytest

from tests.peers.pds.fixtures import pds, pds_factory, pds_rate_limited
from tests.peers.pds.harness import FOLLOW_COLLECTION, LocalPds, PdsAccount

__all__ = ["pds", "pds_factory", "pds_rate_limited"]  # fixtures used below

B32 = "abcdefghijklmnopqrstuvwxyz234567"
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


def fake_did() -> str:
    """A well-formed did:plc nobody has: follow subjects are not checked for existence."""
    return "did:plc:" + "".join(secrets.choice(B32) for _ in range(24))


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def follow_writes(subjects: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": FOLLOW_COLLECTION,
            "value": {"$type": FOLLOW_COLLECTION, "subject": s, "createdAt": now_iso()},
        }
        for s in subjects
    ]


def app_session(pds: LocalPds, acct: PdsAccount) -> dict[str, str]:
    """Log in with the app password, as the sender does; return the Authorization header."""
    s = pds.create_session(acct.handle, acct.app_password)
    return {"Authorization": f"Bearer {s['accessJwt']}"}


# -- server --------------------------------------------------------------------------------------


def test_health_version_and_loopback_only(pds: LocalPds) -> None:
    r = pds.http.get("/xrpc/_health")
    assert r.status_code == 200
    assert r.json() == {"version": "0.5.35"}
    assert pds.url == f"http://localhost:{pds.port}"
    listening = [
        c.laddr
        for c in psutil.Process(pds.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert {a.port for a in listening} == {pds.port, pds.plc_port}
    assert {a.ip for a in listening} == {"127.0.0.1"}


# -- identity ------------------------------------------------------------------------------------


def test_handle_resolves_on_the_pds(pds: LocalPds) -> None:
    acct = pds.create_account()
    assert acct.handle.endswith(".test")
    assert acct.did.startswith("did:plc:")
    assert pds.resolve_handle(acct.handle) == acct.did

    r = pds.http.get(
        "/xrpc/com.atproto.identity.resolveHandle", params={"handle": "nobody-here.test"}
    )
    assert r.status_code == 400
    assert r.json() == {"error": "HandleNotFound", "message": "Unable to resolve handle"}


def test_did_document_from_plc_names_the_pds(pds: LocalPds) -> None:
    acct = pds.create_account()
    doc = pds.did_document(acct.did)
    assert doc["id"] == acct.did
    assert doc["alsoKnownAs"] == [f"at://{acct.handle}"]
    [service] = [s for s in doc["service"] if s["id"] == "#atproto_pds"]
    assert service["type"] == "AtprotoPersonalDataServer"
    assert service["serviceEndpoint"] == pds.url

    r = httpx.get(f"{pds.plc_url}/{fake_did()}", trust_env=False)
    assert r.status_code == 404


# -- login ---------------------------------------------------------------------------------------


def test_create_session_with_app_password(pds: LocalPds) -> None:
    acct = pds.create_account()
    assert len(acct.app_password) == 19  # xxxx-xxxx-xxxx-xxxx
    for identifier in (acct.handle, acct.did):
        s = pds.create_session(identifier, acct.app_password)
        assert s["did"] == acct.did
        assert s["handle"] == acct.handle
        assert s["active"] is True
        assert s["accessJwt"]
        assert s["refreshJwt"]

    body = {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}
    for identifier, password in ((acct.handle, "wrong-password"), ("nobody-here.test", "x")):
        r = pds.http.post(
            "/xrpc/com.atproto.server.createSession",
            json={"identifier": identifier, "password": password},
        )
        assert r.status_code == 401
        assert r.json() == body


def test_app_password_session_cannot_create_app_passwords(pds: LocalPds) -> None:
    acct = pds.create_account()
    r = pds.http.post(
        "/xrpc/com.atproto.server.createAppPassword",
        json={"name": "another"},
        headers=app_session(pds, acct),
    )
    assert r.status_code == 400
    assert r.json() == {"error": "InvalidToken", "message": "Bad token scope"}


# -- follows -------------------------------------------------------------------------------------


def test_apply_writes_200_follows_then_list_records(pds: LocalPds) -> None:
    acct = pds.create_account()
    auth = app_session(pds, acct)
    subjects = [fake_did() for _ in range(200)]
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites",
        json={"repo": acct.did, "writes": follow_writes(subjects)},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 200
    assert {x["$type"] for x in results} == {"com.atproto.repo.applyWrites#createResult"}
    assert all(x["uri"].startswith(f"at://{acct.did}/{FOLLOW_COLLECTION}/") for x in results)

    records = pds.list_records(acct.did, FOLLOW_COLLECTION, page_size=70)  # 3 pages
    assert len(records) == 200
    assert sorted(rec["value"]["subject"] for rec in records) == sorted(subjects)
    assert {rec["uri"] for rec in records} == {x["uri"] for x in results}
    # listRecords needs no auth.
    r = pds.http.get(
        "/xrpc/com.atproto.repo.listRecords",
        params={"repo": acct.handle, "collection": FOLLOW_COLLECTION, "limit": 1},
    )
    assert r.status_code == 200
    assert r.json()["cursor"]


def test_apply_writes_limits_and_duplicates(pds: LocalPds) -> None:
    acct = pds.create_account()
    auth = app_session(pds, acct)
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites",
        json={"repo": acct.did, "writes": follow_writes([fake_did() for _ in range(201)])},
        headers=auth,
    )
    assert r.status_code == 400
    assert r.json() == {"error": "InvalidRequest", "message": "Too many writes. Max: 200"}

    # The PDS does not de-duplicate follows: the sender must.
    dup = fake_did()
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites",
        json={"repo": acct.did, "writes": follow_writes([dup, dup])},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert pds.followed_dids(acct.did) == [dup, dup]


def test_no_appview(pds: LocalPds) -> None:
    acct = pds.create_account()
    r = pds.http.get(
        "/xrpc/app.bsky.graph.getFollows", params={"actor": acct.did}, headers=acct.auth_headers
    )
    assert r.status_code == 502
    assert r.json() == {"error": "UpstreamFailure", "message": "Upstream service unreachable"}


# -- rate limits ---------------------------------------------------------------------------------


def rate_headers(r: httpx.Response) -> dict[str, str]:
    return {h: r.headers[h] for h in RATE_HEADERS if h in r.headers}


def test_rate_limits(pds_rate_limited: LocalPds) -> None:
    pds = pds_rate_limited
    acct = pds.create_account()  # set-up calls carry the bypass key

    # Login: 30 per 5 minutes (and 300 per day) per identifier+IP.
    r = pds.http.post(
        "/xrpc/com.atproto.server.createSession",
        json={"identifier": acct.handle, "password": acct.app_password},
    )
    assert r.status_code == 200
    h = rate_headers(r)
    assert set(h) == set(RATE_HEADERS)
    assert (h["RateLimit-Limit"], h["RateLimit-Remaining"], h["RateLimit-Policy"]) == (
        "30",
        "29",
        "30;w=300",
    )
    reset = int(h["RateLimit-Reset"])  # epoch seconds
    assert time.time() < reset <= time.time() + 301
    auth = {"Authorization": f"Bearer {r.json()['accessJwt']}"}

    r = pds.http.post(
        "/xrpc/com.atproto.server.createSession",
        json={"identifier": acct.handle, "password": "wrong"},
    )
    assert r.status_code == 401  # a failed login counts too
    assert r.headers["RateLimit-Remaining"] == "28"

    # Reads: the global 3,000 requests per 5 minutes per IP.
    r = pds.http.get("/xrpc/com.atproto.identity.resolveHandle", params={"handle": acct.handle})
    assert rate_headers(r)["RateLimit-Policy"] == "3000;w=300"

    # Writes: 5,000 points per hour per account, a create costs 3 -> 8 x 200 creates pass
    # (4,800 points), the 9th call (600 more) is refused. The headers describe whichever limit
    # has the fewest points left: the per-IP one for the first calls, then the hourly write one.
    remaining = []
    statuses = []
    for _ in range(9):
        r = pds.http.post(
            "/xrpc/com.atproto.repo.applyWrites",
            json={"repo": acct.did, "writes": follow_writes([fake_did() for _ in range(200)])},
            headers=auth,
        )
        statuses.append(r.status_code)
        remaining.append((r.headers["RateLimit-Policy"], int(r.headers["RateLimit-Remaining"])))
    assert statuses == [200] * 8 + [429]
    assert remaining[3:8] == [("5000;w=3600", 5000 - 600 * n) for n in range(4, 9)]
    assert r.json() == {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
    h = rate_headers(r)
    assert (h["RateLimit-Limit"], h["RateLimit-Remaining"], h["RateLimit-Policy"]) == (
        "5000",
        "0",
        "5000;w=3600",
    )
    retry_after = int(r.headers["Retry-After"])  # seconds
    assert 3500 < retry_after <= 3600
    assert abs(int(h["RateLimit-Reset"]) - (time.time() + retry_after)) < 5
    assert len(pds.list_follows(acct.did)) == 1600  # the refused call wrote nothing

    # The refused call used up the remaining 200 points: even one create (3 points) is refused.
    r = pds.http.post(
        "/xrpc/com.atproto.repo.createRecord",
        json={
            "repo": acct.did,
            "collection": FOLLOW_COLLECTION,
            "record": {"$type": FOLLOW_COLLECTION, "subject": fake_did(), "createdAt": now_iso()},
        },
        headers=auth,
    )
    assert r.status_code == 429

    # Budgets are per account: another account still writes; the bypass header skips limits.
    other = pds.create_account()
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites",
        json={"repo": other.did, "writes": follow_writes([fake_did()])},
        headers=app_session(pds, other),
    )
    assert r.status_code == 200
    r = pds.http.post(
        "/xrpc/com.atproto.repo.applyWrites",
        json={"repo": acct.did, "writes": follow_writes([fake_did()])},
        headers={**auth, **pds.bypass_headers},
    )
    assert r.status_code == 200
    assert "RateLimit-Limit" not in r.headers


# -- the atproto Python SDK ----------------------------------------------------------------------


def test_atproto_sdk_against_local_pds(pds: LocalPds) -> None:
    # atproto is a dev dependency (of passerelle-bluesky-sender): this test always runs.
    import atproto
    from atproto import exceptions, models

    acct = pds.create_account()
    target = pds.create_account()

    # login() fetches the profile from the AppView by default: 502 here.
    with pytest.raises(exceptions.NetworkError):
        atproto.Client(base_url=pds.url).login(acct.handle, acct.app_password)

    client = atproto.Client(base_url=pds.url)
    assert client.login(acct.handle, acct.app_password, fetch_bsky_profile=False) is None
    assert client.me is None  # so the high-level helpers refuse...
    with pytest.raises(exceptions.LoginRequiredError):
        client.follow(target.did)

    # ... but the generated XRPC namespaces work.
    writes = [
        models.ComAtprotoRepoApplyWrites.Create(
            collection=FOLLOW_COLLECTION,
            value=models.AppBskyGraphFollow.Record(
                subject=s, created_at=client.get_current_time_iso()
            ),
        )
        for s in [target.did, *(fake_did() for _ in range(199))]
    ]
    res = client.com.atproto.repo.apply_writes(
        models.ComAtprotoRepoApplyWrites.Data(repo=acct.did, writes=writes)
    )
    assert len(res.results) == 200
    page = client.com.atproto.repo.list_records(
        models.ComAtprotoRepoListRecords.Params(
            repo=acct.did, collection=FOLLOW_COLLECTION, limit=100
        )
    )
    assert len(page.records) == 100
    assert page.cursor
    assert len(pds.list_follows(acct.did)) == 200

    did = client.com.atproto.identity.resolve_handle(
        models.ComAtprotoIdentityResolveHandle.Params(handle=target.handle)
    ).did
    assert did == target.did
    resolver = atproto.IdResolver(plc_url=pds.plc_url)
    assert resolver.did.resolve(target.did).get_pds_endpoint() == pds.url

    with pytest.raises(exceptions.UnauthorizedError) as err:
        atproto.Client(base_url=pds.url).login(acct.handle, "wrong", fetch_bsky_profile=False)
    assert err.value.response.status_code == 401
    assert err.value.response.content.error == "AuthenticationRequired"

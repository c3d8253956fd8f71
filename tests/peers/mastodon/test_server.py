"""The test Mastodon server, exercised over HTTP against real processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.peers.mastodon.clock import parse_iso
from tests.peers.mastodon.fixtures import mastodon_fleet, mastodon_fleet_session
from tests.peers.mastodon.harness import MastodonFleet, MastodonInstance, MastodonTestError

__all__ = ["mastodon_fleet", "mastodon_fleet_session"]  # fixtures used below

GRANULAR = "read:accounts read:follows read:search write:follows"
DAY0 = "2030-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    with MastodonFleet(
        ("alpha.test", "beta.test", "gamma.test"),
        base_dir=tmp_path_factory.mktemp("fleet"),
        quirks={
            "gamma.test": [
                "granular-scopes",
                "no-rate-headers",
                "async-follow",
                "no-oauth-metadata",
            ]
        },
        extra_args={"gamma.test": ["--async-follow-delay", "0.3"]},
    ) as started:
        yield started


@pytest.fixture
def alpha(fleet: MastodonFleet) -> MastodonInstance:
    fleet.reset()
    return fleet["alpha"]


@pytest.fixture
def beta(fleet: MastodonFleet, alpha: MastodonInstance) -> MastodonInstance:
    return fleet["beta"]


@pytest.fixture
def gamma(fleet: MastodonFleet, alpha: MastodonInstance) -> MastodonInstance:
    return fleet["gamma"]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def rel(inst: MastodonInstance, token: str, account_id: str) -> dict[str, Any]:
    with inst.api(token) as api:
        response = api.get("/api/v1/accounts/relationships", params={"id[]": account_id})
    response.raise_for_status()
    result: dict[str, Any] = response.json()[0]
    return result


# --- OAuth ---------------------------------------------------------------------------------


def test_oauth_code_flow_round_trips_state(alpha: MastodonInstance) -> None:
    alpha.create_account("alice")
    app = alpha.register_app(scopes="read write follow")
    assert app.raw["redirect_uris"] == [app.redirect_uri]
    result = alpha.click_authorize(alpha.authorize_url(app, state="xyz 123"), "alice")
    assert result.location.startswith(app.redirect_uri + "?")
    assert result.state == "xyz 123"
    assert result.code
    token = alpha.exchange_code(app, result.code)
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read write follow"
    with alpha.api(token["access_token"]) as api:
        me = api.get("/api/v1/accounts/verify_credentials")
    assert me.status_code == 200
    assert me.json()["acct"] == "alice"
    assert me.headers["X-RateLimit-Limit"] == "300"
    # A code is single-use.
    with pytest.raises(MastodonTestError, match="invalid_grant"):
        alpha.exchange_code(app, result.code)


def test_oauth_deny_bad_secret_bad_redirect_bad_scope(alpha: MastodonInstance) -> None:
    alpha.create_account("alice")
    app = alpha.register_app(scopes="read write:follows")
    denied = alpha.click_authorize(alpha.authorize_url(app, state="s1"), "alice", approve=False)
    assert denied.error == "access_denied"
    assert denied.state == "s1"
    assert denied.code is None

    code = alpha.click_authorize(alpha.authorize_url(app), "alice").code
    assert code is not None
    bad = alpha.http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": app.client_id,
            "client_secret": "wrong",
            "redirect_uri": app.redirect_uri,
        },
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    with pytest.raises(MastodonTestError, match="invalid_grant"):
        alpha.exchange_code(app, code, redirect_uri="http://elsewhere.example/cb")

    with pytest.raises(MastodonTestError, match="invalid_redirect_uri"):
        alpha.click_authorize(
            alpha.authorize_url(app, redirect_uri="http://evil.example/cb"), "alice"
        )
    wider = alpha.click_authorize(
        alpha.authorize_url(app, scopes="read write", state="s2"), "alice"
    )
    assert wider.error == "invalid_scope"
    assert wider.state == "s2"


def test_pkce_sign_in_page_and_revoke(alpha: MastodonInstance) -> None:
    from tests.peers.mastodon.harness import pkce_pair

    alpha.create_account("alice", password="pw")
    app = alpha.register_app()
    verifier, challenge = pkce_pair()
    url = alpha.authorize_url(app, code_challenge=challenge, code_challenge_method="S256")
    # A browser without a session is sent to the sign-in page, then back.
    with httpx.Client(base_url=alpha.url, follow_redirects=True) as browser:
        first = browser.get(url)
        assert first.url.path == "/auth/sign_in"
        back = browser.post("/auth/sign_in", data={"username": "alice", "password": "pw"})
        assert back.status_code == 200
        assert "Authorize" in back.text
        assert "@alice@alpha.test" in back.text
    code = alpha.click_authorize(url, "alice").code
    assert code is not None
    with pytest.raises(MastodonTestError, match="invalid_grant"):
        alpha.exchange_code(app, code, code_verifier="not-the-verifier")
    code = alpha.click_authorize(url, "alice").code
    assert code is not None
    token = alpha.exchange_code(app, code, code_verifier=verifier)["access_token"]

    revoke = alpha.http.post(
        "/oauth/revoke",
        data={"token": token, "client_id": app.client_id, "client_secret": app.client_secret},
    )
    assert revoke.status_code == 200
    with alpha.api(token) as api:
        gone = api.get("/api/v1/accounts/verify_credentials")
    assert gone.status_code == 401
    assert gone.json() == {"error": "The access token was revoked"}

    other = alpha.login("alice")
    assert alpha.revoke_tokens(username="alice") == 2  # both, one already revoked
    with alpha.api(other) as api:
        assert api.get("/api/v1/accounts/verify_credentials").status_code == 401
        assert api.get("/api/v1/instance").status_code == 200  # public endpoint
    with alpha.api("nonsense") as api:
        invalid = api.get("/api/v1/accounts/verify_credentials")
    assert invalid.json() == {"error": "The access token is invalid"}


def test_scopes_are_checked_on_every_endpoint(alpha: MastodonInstance) -> None:
    alpha.create_account("alice")
    bob = alpha.create_account("bob")
    read_only = alpha.login("alice", scopes="read:accounts")
    with alpha.api(read_only) as api:
        assert api.get("/api/v1/accounts/verify_credentials").status_code == 200
        follow = api.post(f"/api/v1/accounts/{bob['id']}/follow")
        assert follow.status_code == 403
        assert follow.json() == {"error": "This action is outside the authorized scopes"}
        assert api.get("/api/v2/search", params={"q": "bob"}).status_code == 403
        assert api.get("/api/v1/accounts/relationships?id[]=1").status_code == 403

    granular = alpha.login("alice", scopes=GRANULAR)
    with alpha.api(granular) as api:
        assert api.get("/api/v1/accounts/verify_credentials").status_code == 200
        assert api.get("/api/v2/search", params={"q": "bob@alpha.test"}).json()["accounts"]
        assert api.post(f"/api/v1/accounts/{bob['id']}/follow").status_code == 200
        assert api.get(f"/api/v1/accounts/relationships?id[]={bob['id']}").status_code == 200

    profile = alpha.login("alice", scopes="profile")
    with alpha.api(profile) as api:
        assert api.get("/api/v1/accounts/verify_credentials").status_code == 200
        assert api.get("/api/v2/search", params={"q": "bob"}).status_code == 403


def test_oauth_metadata_instance_and_software(
    alpha: MastodonInstance, gamma: MastodonInstance
) -> None:
    meta = alpha.http.get("/.well-known/oauth-authorization-server")
    assert meta.status_code == 200
    assert meta.json()["token_endpoint"] == f"{alpha.url}/oauth/token"
    assert "write:follows" in meta.json()["scopes_supported"]
    assert gamma.http.get("/.well-known/oauth-authorization-server").status_code == 404
    alpha.configure(no_oauth_metadata=True)
    assert alpha.http.get("/.well-known/oauth-authorization-server").status_code == 404

    assert alpha.http.get("/api/v1/instance").json()["version"] == "4.3.2"
    assert alpha.http.get("/api/v2/instance").json()["domain"] == "alpha.test"
    alpha.configure(software="pleroma")
    assert "Pleroma" in alpha.http.get("/api/v1/instance").json()["version"]
    assert alpha.http.get("/api/v2/instance").status_code == 404
    alpha.configure(software="mastodon", version="4.2.0-beta1")
    assert alpha.http.get("/api/v1/instance").json()["version"] == "4.2.0-beta1"


# --- federation ----------------------------------------------------------------------------


def test_cross_instance_resolve(alpha: MastodonInstance, beta: MastodonInstance) -> None:
    alpha.create_account("alice")
    beta_bob = beta.create_account("bob", followers_count=42, display_name="Bob B.")
    token = alpha.login("alice")
    with alpha.api(token) as api:
        known_only = api.get("/api/v2/search", params={"q": "@bob@beta.test", "type": "accounts"})
        assert known_only.json()["accounts"] == []
    bob = alpha.resolve(token, "bob@beta.test")
    assert bob is not None
    assert bob["acct"] == "bob@beta.test"
    assert bob["id"] != beta_bob["id"]  # a local id for the remote account
    assert bob["followers_count"] == 42
    assert bob["display_name"] == "Bob B."
    assert bob["url"] == "https://beta.test/@bob"
    with alpha.api(token) as api:
        again = api.get("/api/v2/search", params={"q": "bob@beta.test"}).json()["accounts"]
        assert [a["id"] for a in again] == [bob["id"]]
        assert (
            api.get("/api/v1/accounts/lookup", params={"acct": "bob@beta.test"}).json()["id"]
            == (bob["id"])
        )
        anonymous = httpx.get(
            f"{alpha.url}/api/v2/search", params={"q": "x@beta.test", "resolve": "true"}
        )
        assert anonymous.status_code == 401
    assert alpha.resolve(token, "nobody@beta.test") is None
    assert alpha.resolve(token, "bob@unknown.test") is None
    assert alpha.resolve(token, "alice@alpha.test") is not None


def test_remote_follow_is_requested_until_accepted(
    alpha: MastodonInstance, beta: MastodonInstance
) -> None:
    alpha.create_account("alice")
    beta.create_account("bob")
    token = alpha.login("alice")
    bob = alpha.resolve(token, "bob@beta.test")
    assert bob is not None
    with alpha.api(token) as api:
        answer = api.post(f"/api/v1/accounts/{bob['id']}/follow")
    assert answer.status_code == 200
    # Mastodon answers optimistically; the relationship is a request until beta accepts.
    assert answer.json()["following"] is True
    eventually(lambda: rel(alpha, token, bob["id"])["following"])
    assert rel(alpha, token, bob["id"])["requested"] is False
    on_beta = beta.follows()["follows"]
    assert [(f["account"], f["target"], f["state"]) for f in on_beta] == [
        ("alice@alpha.test", "bob", "accepted")
    ]
    assert beta.accounts()[0]["followers_count"] == 1
    with alpha.api(token) as api:
        me = api.get("/api/v1/accounts/verify_credentials").json()
        assert me["following_count"] == 1
        assert api.post(f"/api/v1/accounts/{bob['id']}/unfollow").json()["following"] is False
    eventually(lambda: not beta.follows()["follows"])


def test_locked_account_gets_a_follow_request(
    alpha: MastodonInstance, beta: MastodonInstance
) -> None:
    alpha.create_account("alice")
    beta.create_account("carol", locked=True)
    token = alpha.login("alice")
    carol = alpha.resolve(token, "carol@beta.test")
    assert carol is not None
    assert carol["locked"] is True
    with alpha.api(token) as api:
        answer = api.post(f"/api/v1/accounts/{carol['id']}/follow").json()
    assert (answer["following"], answer["requested"]) == (False, True)
    eventually(lambda: bool(beta.follows()["follows"]))
    carol_token = beta.login("carol")
    with beta.api(carol_token) as api:
        requests = api.get("/api/v1/follow_requests").json()
        assert [a["acct"] for a in requests] == ["alice@alpha.test"]
        assert api.post(f"/api/v1/follow_requests/{requests[0]['id']}/authorize").status_code == 200
    eventually(lambda: rel(alpha, token, carol["id"])["following"])


# --- follows, relationships, pagination ----------------------------------------------------


def test_follow_relationships_duplicates_and_following_pages(alpha: MastodonInstance) -> None:
    alpha.create_account("alice")
    targets = alpha.create_accounts(5, prefix="t")
    token = alpha.login("alice")
    with alpha.api(token) as api:
        for target in targets:
            assert api.post(f"/api/v1/accounts/{target['id']}/follow").json()["following"]
        duplicate = api.post(f"/api/v1/accounts/{targets[0]['id']}/follow")
        assert duplicate.status_code == 200
        rels = api.get(
            "/api/v1/accounts/relationships",
            params=[("id[]", t["id"]) for t in targets[:2]] + [("id[]", "404")],
        ).json()
        assert [(r["id"], r["following"], r["followed_by"]) for r in rels] == [
            (t["id"], True, False) for t in targets[:2]
        ]
        me = api.get("/api/v1/accounts/verify_credentials").json()
        assert me["following_count"] == 5
        assert api.get(f"/api/v1/accounts/{targets[0]['id']}").json()["followers_count"] == 1
        seen: list[str] = []
        url: str | None = f"/api/v1/accounts/{me['id']}/following?limit=2"
        while url:
            page = api.get(url)
            seen += [a["username"] for a in page.json()]
            url = page.links.get("next", {}).get("url")
            assert "prev" in page.links or not page.json()
    assert seen == ["t5", "t4", "t3", "t2", "t1"]
    summary = alpha.follows("alice")["summary"]
    assert summary["created"] == 5
    assert summary["duplicate"] == 1
    assert summary["violations"] == 0
    first = alpha.follows("alice")["follows"][0]
    assert first["target"] == "t1"
    assert parse_iso(first["created_at"]) > 0


# --- limits --------------------------------------------------------------------------------


def test_400_follows_per_day_on_an_accelerated_clock(alpha: MastodonInstance) -> None:
    alpha.set_clock(now=DAY0, speedup=1000)  # 5 minutes pass in 0.3 s; a day in 86 s
    alpha.create_account("alice")
    targets = alpha.create_accounts(402, prefix="t")
    # Two tokens of one account: the day's 400 follows are the account's, while a
    # fast machine would pass a single token's 300 calls per (0.3 s) window.
    token, second = alpha.login("alice"), alpha.login("alice")
    with alpha.api(token) as api:
        for target in targets[:200]:
            answer = api.post(f"/api/v1/accounts/{target['id']}/follow")
            assert answer.status_code == 200, answer.text
    with alpha.api(second) as api:
        for target in targets[200:400]:
            answer = api.post(f"/api/v1/accounts/{target['id']}/follow")
            assert answer.status_code == 200, answer.text
        assert answer.headers["X-RateLimit-Limit"] == "400"
        assert answer.headers["X-RateLimit-Remaining"] == "0"
        refused = api.post(f"/api/v1/accounts/{targets[400]['id']}/follow")
    assert refused.status_code == 429
    assert refused.json() == {"error": "Too many requests"}
    assert refused.headers["X-RateLimit-Limit"] == "400"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    reset = refused.headers["X-RateLimit-Reset"]
    assert reset.startswith("2030-01-02T00:00:00.")
    assert reset.endswith("Z")
    assert len(reset) == len("2030-01-02T00:00:00.000000Z")
    summary = alpha.follows("alice")["summary"]
    assert (summary["created"], summary["refused_rate_limit"]) == (400, 1)
    alpha.set_clock(now="2030-01-02T00:00:01Z")
    with alpha.api(token) as api:
        again = api.post(f"/api/v1/accounts/{targets[400]['id']}/follow")
    assert again.status_code == 200
    assert again.headers["X-RateLimit-Remaining"] != "0"


def test_300_requests_per_5_minutes_per_token(alpha: MastodonInstance) -> None:
    alpha.set_clock(now=DAY0, speedup=0)  # frozen
    alpha.create_account("alice")
    bob = alpha.create_account("bob")
    token, other = alpha.login("alice"), alpha.login("alice")
    with alpha.api(token) as api:
        for i in range(300):
            ok = api.get("/api/v1/accounts/verify_credentials")
            assert ok.status_code == 200
            assert ok.headers["X-RateLimit-Remaining"] == str(299 - i)
        refused = api.get("/api/v1/accounts/verify_credentials")
        assert refused.status_code == 429
        assert refused.json() == {"error": "Too many requests"}
        assert refused.headers["X-RateLimit-Reset"] == "2030-01-01T00:05:00.000000Z"
        assert api.post(f"/api/v1/accounts/{bob['id']}/follow").status_code == 429
        with alpha.api(other) as second:  # the budget is per token
            assert second.get("/api/v1/accounts/verify_credentials").status_code == 200
        alpha.configure(no_rate_limit_headers=True)  # limits still hold, silently
        silent = api.get("/api/v1/accounts/verify_credentials")
        assert silent.status_code == 429
        assert "X-RateLimit-Reset" not in silent.headers
        alpha.advance_clock(300)
        assert api.get("/api/v1/accounts/verify_credentials").status_code == 200
    assert alpha.follows("alice")["summary"]["refused_request_limit"] == 1


def test_follow_cap(alpha: MastodonInstance) -> None:
    alpha.create_account("alice", following_count=7_499)
    alpha.create_account("star", followers_count=10_000, following_count=10_999)
    targets = alpha.create_accounts(3, prefix="t")
    alice, star = alpha.login("alice"), alpha.login("star")
    with alpha.api(alice) as api:
        assert api.post(f"/api/v1/accounts/{targets[0]['id']}/follow").status_code == 200
        capped = api.post(f"/api/v1/accounts/{targets[1]['id']}/follow")
    assert capped.status_code == 422
    assert capped.json()["error"].startswith("Validation failed: You cannot follow more than ")
    with alpha.api(star) as api:  # 1.1 × followers lifts the cap above 7,500
        assert api.post(f"/api/v1/accounts/{targets[0]['id']}/follow").status_code == 200
    assert alpha.follows("alice")["summary"]["refused_cap"] == 1


# --- quirks --------------------------------------------------------------------------------


def test_quirk_granular_scopes_unsupported(gamma: MastodonInstance) -> None:
    gamma.create_account("alice")
    target = gamma.create_account("bob")
    granular = gamma.login("alice", scopes=GRANULAR)  # registration accepts them
    with gamma.api(granular) as api:
        for path in (
            "/api/v1/accounts/verify_credentials",
            "/api/v2/search?q=bob",
            f"/api/v1/accounts/relationships?id[]={target['id']}",
        ):
            answer = api.get(path)
            assert answer.status_code == 403
            assert answer.json()["error"] == "out_of_scope_for_token"
        assert api.post(f"/api/v1/accounts/{target['id']}/follow").status_code == 200
    plain = gamma.login("alice", scopes="read write follow")
    with gamma.api(plain) as api:
        answer = api.get("/api/v1/accounts/verify_credentials")
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.lower().startswith("x-ratelimit")]


def test_quirk_async_follow(gamma: MastodonInstance) -> None:
    gamma.create_account("alice")
    target = gamma.create_account("bob")
    token = gamma.login("alice", scopes="read write follow")
    with gamma.api(token) as api:
        answer = api.post(f"/api/v1/accounts/{target['id']}/follow").json()
    assert (answer["following"], answer["requested"]) == (False, False)
    assert rel(gamma, token, target["id"])["following"] is False
    eventually(lambda: rel(gamma, token, target["id"])["following"], timeout=3)
    assert gamma.follows("alice")["summary"]["created"] == 1


# --- faults --------------------------------------------------------------------------------


def test_faults(alpha: MastodonInstance) -> None:
    alpha.set_clock(now=DAY0, speedup=0)
    alpha.inject_faults(
        {"status": 503, "count": 2, "path": "/api/v1/instance"},
        {"status": 429, "count": 1, "path": "/api/v2/*", "reset_in": 60},
        {"drop": True, "count": 1, "path": "/api/v1/apps", "skip": 1},
    )
    statuses = [alpha.http.get("/api/v1/instance").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    burst = alpha.http.get("/api/v2/instance")
    assert burst.status_code == 429
    assert burst.headers["X-RateLimit-Reset"] == "2030-01-01T00:01:00.000000Z"
    assert alpha.http.get("/api/v2/instance").status_code == 200
    alpha.register_app()  # skipped by the rule
    with pytest.raises(httpx.TransportError):
        alpha.register_app()
    alpha.register_app()

    alpha.inject_fault(latency=0.3, count=1, path="/api/v1/instance")
    started = time.monotonic()
    assert alpha.http.get("/api/v1/instance").status_code == 200
    assert time.monotonic() - started >= 0.3
    alpha.inject_fault(status=500, count=None, method="POST")
    assert alpha.http.get("/api/v1/instance").status_code == 200
    assert alpha.http.post("/api/v1/apps").status_code == 500
    assert alpha.http.post("/api/v1/apps").status_code == 500
    alpha.clear_faults()
    assert alpha.stats()["counters"]["faults_injected"] == 7


# --- the shared pytest fixtures ------------------------------------------------------------


def test_mastodon_fleet_fixture(mastodon_fleet: MastodonFleet) -> None:
    assert mastodon_fleet.domains == ["alpha.test", "beta.test"]
    alpha = mastodon_fleet["alpha.test"]
    assert alpha.accounts() == []
    peers = mastodon_fleet.peers_file.read_text()
    assert mastodon_fleet["beta"].url in peers

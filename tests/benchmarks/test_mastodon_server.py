"""The benchmark's lean Mastodon server holds Mastodon's limits and counts what the bench reads."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.benchmarks.bench_mastodon import LeanServer
from tests.benchmarks.mastodon_server import Bench, Instance
from tests.peers.mastodon.clock import parse_iso

DAY = 86_400
NOON = 1_893_585_600.0  # 2030-01-02T12:00:00Z


def linked(bench: Bench, domain: str, username: str) -> str:
    """A token for ``username@domain`` by the OAuth calls the sender makes."""
    instance = bench.instances[domain]
    status, body, _ = bench.handle(
        instance,
        "POST",
        "/api/v1/apps",
        None,
        b"client_name=p&redirect_uris=http%3A%2F%2Fx%2Fcb&scopes=read+write",
    )
    app = json.loads(body)
    status, _, headers = bench.handle(
        instance,
        "GET",
        f"/oauth/authorize?client_id={app['client_id']}&redirect_uri=http%3A%2F%2Fx%2Fcb"
        f"&scope=read&state=s&bench_user={username}",
        None,
        b"",
    )
    assert status == 302
    code = httpx.URL(dict(headers)["Location"]).params["code"]
    form = f"grant_type=authorization_code&code={code}&client_id={app['client_id']}"
    form += f"&client_secret={app['client_secret']}"
    status, body, _ = bench.handle(instance, "POST", "/oauth/token", None, form.encode())
    assert status == 200
    return "Bearer " + str(json.loads(body)["access_token"])


def call(
    bench: Bench, instance: Instance, token: str, method: str, target: str
) -> tuple[int, dict[str, str]]:
    status, _, headers = bench.handle(instance, method, target, token, b"")
    return status, dict(headers)


def make_bench() -> tuple[Bench, Instance, str, list[str]]:
    bench = Bench(["a.test", "b.test"])
    bench.add_accounts("a.test", ["p1"])
    bench.add_accounts("b.test", [f"t{k}" for k in range(1, 501)])
    bench.clock.set(origin=0.0, start=NOON - 3000, speedup=0.0)
    token = linked(bench, "a.test", "p1")
    instance = bench.instances["a.test"]
    ids = []
    for k in range(1, 501):
        # A new 5-minute window every 250 calls keeps the request limit out of the way.
        bench.clock.set(origin=0.0, start=NOON - 3000 + 300 * (k // 250), speedup=0.0)
        status, body, _ = bench.handle(
            instance,
            "GET",
            f"/api/v2/search?q=t{k}%40b.test&resolve=true&type=accounts",
            token,
            b"",
        )
        assert status == 200
        ids.append(json.loads(body)["accounts"][0]["id"])
    return bench, instance, token, ids


def test_request_limit_per_token_with_headers() -> None:
    bench, instance, token, _ = make_bench()
    bench.clock.set(origin=0.0, start=NOON + 600, speedup=0.0)
    for n in range(1, 301):
        status, headers = call(bench, instance, token, "GET", "/api/v1/accounts/verify_credentials")
        assert status == 200
        assert headers["X-RateLimit-Limit"] == "300"
        assert headers["X-RateLimit-Remaining"] == str(300 - n)
        assert parse_iso(headers["X-RateLimit-Reset"]) == NOON + 900
    status, headers = call(bench, instance, token, "GET", "/api/v1/accounts/verify_credentials")
    assert status == 429
    assert headers["X-RateLimit-Remaining"] == "0"
    assert bench.stats["throttled"] == 1
    bench.clock.set(origin=0.0, start=NOON + 900, speedup=0.0)  # the next window
    status, headers = call(bench, instance, token, "GET", "/api/v1/accounts/verify_credentials")
    assert (status, headers["X-RateLimit-Remaining"]) == (200, "299")


def test_follow_limit_per_day_and_duplicates() -> None:
    bench, instance, token, ids = make_bench()
    for k, target in enumerate(ids[:400]):
        # A new 5-minute window every 250 follows keeps the request limit out of the way.
        bench.clock.set(origin=0.0, start=NOON + 300 * (1 + k // 250), speedup=0.0)
        status, headers = call(bench, instance, token, "POST", f"/api/v1/accounts/{target}/follow")
        assert status == 200
    # The follow family has fewer left than the request window: its headers are shown.
    assert headers["X-RateLimit-Limit"] == "400"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert parse_iso(headers["X-RateLimit-Reset"]) == NOON + 12 * 3600
    status, _ = call(bench, instance, token, "POST", f"/api/v1/accounts/{ids[400]}/follow")
    assert status == 429
    status, _ = call(bench, instance, token, "POST", f"/api/v1/accounts/{ids[0]}/follow")
    assert status == 200  # Mastodon answers a follow of an account already followed
    assert bench.stats["follows.created"] == 400
    assert bench.stats["follows.refused_rate_limit"] == 1
    assert bench.stats["follows.duplicate"] == 1
    bench.clock.set(origin=0.0, start=NOON + 12 * 3600, speedup=0.0)  # midnight
    status, _ = call(bench, instance, token, "POST", f"/api/v1/accounts/{ids[400]}/follow")
    assert status == 200
    times = bench.accounts[bench.by_acct["p1@a.test"].id].follow_times
    assert len(times) == 401
    assert times[-1] == NOON + 12 * 3600


def test_unresolved_target_and_foreign_token() -> None:
    bench = Bench(["a.test", "b.test"])
    bench.add_accounts("a.test", ["p1"])
    bench.add_accounts("b.test", ["t1", "q1"])
    token = linked(bench, "a.test", "p1")
    a, b = bench.instances["a.test"], bench.instances["b.test"]
    t1 = bench.by_acct["t1@b.test"].id
    assert call(bench, a, token, "POST", f"/api/v1/accounts/{t1}/follow")[0] == 404
    assert call(bench, b, token, "GET", "/api/v1/accounts/verify_credentials")[0] == 401
    _, body, _ = bench.handle(a, "GET", "/api/v2/search?q=%40t1%40b.test", token, b"")
    assert json.loads(body)["accounts"] == []  # not resolved without resolve=true
    _, body, _ = bench.handle(a, "GET", f"/api/v1/accounts/relationships?id[]={t1}", token, b"")
    assert json.loads(body) == []


def test_over_http(tmp_path: Path) -> None:
    """The real process: keep-alive, a form body, query strings, the control calls."""
    server = LeanServer(["a.test", "b.test"], tmp_path).start()
    try:
        server.post("/accounts", {"domain": "a.test", "usernames": ["p1"]})
        server.post("/accounts", {"domain": "b.test", "usernames": ["t1"]})
        server.post("/clock", {"origin": 0.0, "start": NOON, "speedup": 0.0})
        a = server.urls["a.test"]
        with httpx.Client(timeout=10) as client:
            info = client.get(a + "/api/v2/instance").json()
            assert info["domain"] == "a.test"
            app = client.post(
                a + "/api/v1/apps",
                data={"client_name": "p", "redirect_uris": "http://x/cb", "scopes": "read"},
            ).json()
            back = client.get(
                a + "/oauth/authorize",
                params={
                    "client_id": app["client_id"],
                    "redirect_uri": "http://x/cb",
                    "state": "s1",
                    "bench_user": "p1",
                },
            )
            assert back.status_code == 302
            location = httpx.URL(back.headers["location"])
            assert location.params["state"] == "s1"
            token = client.post(
                a + "/oauth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": location.params["code"],
                    "client_id": app["client_id"],
                    "client_secret": app["client_secret"],
                    "redirect_uri": "http://x/cb",
                },
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            me = client.get(a + "/api/v1/accounts/verify_credentials", headers=auth).json()
            assert me["acct"] == "p1"
            found = client.get(
                a + "/api/v2/search",
                params={"q": "t1@b.test", "resolve": "true", "type": "accounts"},
                headers=auth,
            ).json()["accounts"]
            assert found[0]["acct"] == "t1@b.test"
            followed = client.post(a + f"/api/v1/accounts/{found[0]['id']}/follow", headers=auth)
            assert followed.json()["following"] is True
            assert followed.headers["x-ratelimit-remaining"] == "297"
            relations = client.get(
                a + "/api/v1/accounts/relationships", params={"id[]": found[0]["id"]}, headers=auth
            ).json()
            assert relations[0]["following"] is True
        assert server.get("/stats")["counters"]["follows.created"] == 1
        assert server.get("/follows") == {"p1@a.test": [NOON]}
    finally:
        server.stop()

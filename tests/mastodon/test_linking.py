"""Linking by OAuth against real test instances, through NATS request/reply."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.mastodon.support import REDIRECT_URI, Harness

GRANULAR = "read:accounts read:follows read:search write:follows"


class _NotMastodon(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>Just a blog</body></html>"
        self.send_response(404 if self.path.startswith("/api/") else 200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web_server() -> Iterator[str]:
    """A web server that is not Mastodon."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMastodon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def settings_overrides(web_server: str) -> dict[str, object]:
    return {"mastodon_instance_urls": {"web.test": web_server}}


def query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_full_redirect_flow_links_the_account(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice", followers_count=12)

    reply = await harness.authorize("https://Alpha.test/about", state="s" * 20)
    assert reply.error is None
    assert reply.authorize_url is not None
    params = query(reply.authorize_url)
    assert params["scope"] == GRANULAR
    assert params["state"] == "s" * 20
    assert params["redirect_uri"] == REDIRECT_URI
    assert urlsplit(reply.authorize_url).path == "/oauth/authorize"

    result = await harness.click(reply.authorize_url, "alpha.test", "alice")
    assert result.state == "s" * 20
    assert result.code
    linked = await harness.link("alpha.test", result.code, person_id="p-alice")
    assert linked.error is None
    assert linked.account == linked.handle == "alice@alpha.test"

    await harness.wait_for(lambda: len(harness.linked) == 1, what="identity.linked")
    event = harness.linked[0]
    assert (event.person_id, event.account, event.handle) == (
        "p-alice",
        "alice@alpha.test",
        "alice@alpha.test",
    )
    # One app per instance and redirect URI, reused by the next person.
    alpha.create_account("bob")
    again = await harness.authorize("alpha.test")
    assert query(again.authorize_url or "")["client_id"] == params["client_id"]
    assert len(alpha.apps()) == 1
    assert alpha.apps()[0]["scopes"] == [*GRANULAR.split(), "read", "write", "follow"]


async def test_tokens_are_encrypted_at_rest_and_never_logged(
    harness: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice")
    await harness.sign_in("alpha.test", "alice", "p-alice")
    token = alpha.tokens()[0]["token"]
    secret = alpha.apps()[0]["client_secret"]
    database = harness.local.settings.data_dir / "mastodon_sender.sqlite3"
    raw = database.read_bytes() + b"".join(
        p.read_bytes() for p in database.parent.glob("mastodon_sender.sqlite3-*")
    )
    assert token.encode() not in raw
    assert secret.encode() not in raw
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT token_enc FROM mastodon_link").fetchone()
    assert harness.local.vault.decrypt(stored) == token
    out, err = capfd.readouterr()
    assert token not in out + err
    assert secret not in out + err


async def test_sign_in_first_then_the_person_claims_the_same_code(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice")
    reply = await harness.authorize("alpha.test")
    result = await harness.click(reply.authorize_url or "", "alpha.test", "alice")
    assert result.code is not None

    first = await harness.link("alpha.test", result.code, person_id=None)
    assert first.account == "alice@alpha.test"
    assert harness.linked == []
    second = await harness.link("alpha.test", result.code, person_id="p-new")
    assert second.account == "alice@alpha.test"
    again = await harness.link("alpha.test", result.code, person_id="p-new")
    assert again.account == "alice@alpha.test"
    await harness.wait_for(lambda: len(harness.linked) >= 1, what="identity.linked")
    assert {e.person_id for e in harness.linked} == {"p-new"}
    assert len(alpha.tokens()) == 1  # the code was exchanged once
    other = await harness.link("alpha.test", result.code, person_id="p-other")
    assert other.error is not None
    assert other.error.code == "invalid_code"


async def test_refused_consent_links_nothing(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice")
    reply = await harness.authorize("alpha.test", state="refused-state-123")
    result = await harness.click(reply.authorize_url or "", "alpha.test", "alice", approve=False)
    assert result.error == "access_denied"
    assert result.state == "refused-state-123"
    assert result.code is None
    # Whatever the edge does next, no code means no link.
    bogus = await harness.link("alpha.test", "not-a-code", person_id="p-alice")
    assert bogus.error is not None
    assert bogus.error.code == "invalid_code"
    assert alpha.tokens() == []
    assert harness.linked == []


async def test_a_used_code_is_refused(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice")
    reply = await harness.authorize("alpha.test")
    result = await harness.click(reply.authorize_url or "", "alpha.test", "alice")
    assert result.code is not None
    app = alpha.apps()[0]
    exchanged = await asyncio.to_thread(
        alpha.http.post,
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": result.code,
            "client_id": app["client_id"],
            "client_secret": app["client_secret"],
            "redirect_uri": REDIRECT_URI,
        },
    )
    assert exchanged.status_code == 200  # someone else used it first
    linked = await harness.link("alpha.test", result.code, person_id="p-alice")
    assert linked.error is not None
    assert linked.error.code == "invalid_code"


@pytest.mark.parametrize(
    ("instance", "code"),
    [
        ("nowhere.test", "unknown_instance"),
        ("not a server", "unknown_instance"),
        ("web.test", "not_mastodon"),
    ],
)
async def test_wrong_instance(harness: Harness, instance: str, code: str) -> None:
    reply = await harness.authorize(instance)
    assert reply.authorize_url is None
    assert reply.error is not None
    assert reply.error.code == code
    assert reply.error.message


async def test_granular_scopes_refused_later_ask_again_with_broad_scopes(harness: Harness) -> None:
    gamma = harness.fleet["gamma.test"]
    gamma.configure(granular_scopes_unsupported=True)
    gamma.create_account("carol")
    reply = await harness.authorize("gamma.test")
    assert query(reply.authorize_url or "")["scope"] == GRANULAR
    result = await harness.click(reply.authorize_url or "", "gamma.test", "carol")
    linked = await harness.link("gamma.test", result.code or "", person_id="p-carol")
    assert linked.error is not None
    assert linked.error.code == "reauthorize"
    assert all(t["revoked_at"] for t in gamma.tokens())  # the useless token is revoked

    again = await harness.authorize("gamma.test")
    assert query(again.authorize_url or "")["scope"] == "read write follow"
    assert len(gamma.apps()) == 1  # registered once, with both sets of scopes
    result = await harness.click(again.authorize_url or "", "gamma.test", "carol")
    linked = await harness.link("gamma.test", result.code or "", person_id="p-carol")
    assert linked.error is None
    assert linked.account == "carol@gamma.test"


async def test_granular_scopes_refused_at_registration(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    beta.inject_fault(
        path="/api/v1/apps",
        method="POST",
        status=422,
        body='{"error": "Validation failed: Scopes must be a subset of the configured scopes"}',
    )
    reply = await harness.authorize("beta.test")
    assert reply.error is None
    assert query(reply.authorize_url or "")["scope"] == "read write follow"
    assert [a["scopes"] for a in beta.apps()] == [["read", "write", "follow"]]


async def test_no_oauth_metadata_uses_mastodon_paths(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    beta.configure(no_oauth_metadata=True)
    beta.create_account("bob")
    reply = await harness.authorize("beta.test")
    assert reply.authorize_url is not None
    assert reply.authorize_url.startswith(beta.url + "/oauth/authorize?")
    acct = await harness.sign_in("beta.test", "bob", "p-bob")
    assert acct == "bob@beta.test"


async def test_unreachable_instance_is_transient(harness: Harness) -> None:
    beta = harness.fleet["beta.test"]
    beta.inject_fault(path="/api/v2/instance", status=503)
    reply = await harness.authorize("beta.test")
    assert reply.error is not None
    assert reply.error.code == "instance_unreachable"


async def test_unlink_revokes_the_token(harness: Harness) -> None:
    alpha = harness.fleet["alpha.test"]
    alpha.create_account("alice")
    await harness.sign_in("alpha.test", "alice", "p-alice")
    assert (await harness.unlink("p-alice")).removed is True
    assert all(t["revoked_at"] for t in alpha.tokens())
    await harness.wait_for(lambda: len(harness.unlinked) == 1, what="identity.unlinked")
    assert harness.unlinked[0].reason == "unlinked"
    assert (await harness.unlink("p-alice")).removed is False


async def test_linking_another_account_replaces_the_first(harness: Harness) -> None:
    alpha, beta = harness.fleet["alpha.test"], harness.fleet["beta.test"]
    alpha.create_account("alice")
    beta.create_account("alice2")
    await harness.sign_in("alpha.test", "alice", "p-alice")
    await harness.sign_in("beta.test", "alice2", "p-alice")
    assert all(t["revoked_at"] for t in alpha.tokens())
    assert not any(t["revoked_at"] for t in beta.tokens())

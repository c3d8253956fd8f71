"""The whole journey in Chromium, against the real local stack and real peers.

Real NATS; ingest, matching, bluesky_sender and mastodon_sender as processes; a real
Bluesky PDS; Mastodon-API test servers. A newcomer signs in, consents, gives their
archive (opened by the browser), sees the people already here in both directions,
follows some, watches progress reach the end, and the follows are on the servers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
import pytest
from playwright.sync_api import Browser, Page, expect

from passerelle_contracts.rpc import MatchSummaryReply, MatchSummaryRequest
from tests.peers.mastodon.harness import MastodonFleet
from tests.peers.pds.fixtures import pds
from tests.peers.pds.harness import LocalPds
from tests.web.stack import Stack, newcomer_archive, wait_for

pytestmark = pytest.mark.e2e

__all__ = ["pds"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    with MastodonFleet(("alpha.test", "beta.test"), base_dir=tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture(scope="module")
def stack(
    pds: LocalPds, fleet: MastodonFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"), pds, fleet)
    try:
        yield running.start()
    finally:
        running.stop()


def open_page(browser: Browser, stack: Stack, lang: str, artifacts: Path) -> Page:
    context = browser.new_context(base_url=stack.base_url, locale=lang)
    context.set_default_timeout(30_000)
    return context.new_page()


def counts(page: Page, network: str, direction: str) -> dict[str, str]:
    row = page.locator(f'table[data-network="{network}"] tr[data-direction="{direction}"]')
    return {
        key: row.locator(f'td[data-count="{key}"]').inner_text()
        for key in ("found", "selected", "waiting", "followed", "failed")
    }


def wait_for_matches(page: Page, network: str, following: int, followers: int) -> None:
    def found() -> bool:
        page.reload()
        table = page.locator(f'table[data-network="{network}"]')
        if not table.count():
            return False
        return counts(page, network, "following")["found"] == str(following) and counts(
            page, network, "follower"
        )["found"] == str(followers)

    wait_for(found, 120, f"{network} matches in both directions", every=1.0)


def test_bluesky_journey(
    browser: Browser, stack: Stack, pds: LocalPds, tmp_path: Path, artifacts: Path
) -> None:
    accounts = pds.create_accounts(5, prefix="here")
    alice, bob, carol, dave = (stack.seed_bluesky(a, n) for n, a in enumerate(accounts[:4], 1))
    quiet = stack.seed_bluesky(accounts[4], 5, consent=False)  # did not agree to be found
    newbie = pds.create_account("newbie")
    archive = tmp_path / "twitter-archive.zip"
    archive.write_bytes(newcomer_archive([alice, bob, carol, quiet], [bob, dave]))

    page = open_page(browser, stack, "fr", artifacts)
    # A wrong app password: the real sender refuses, the page says so in French.
    page.goto("/signin?lang=fr")
    page.fill("#bsky-identifier", newbie.handle)
    page.fill("#bsky-password", "aaaa-bbbb-cccc-dddd")
    page.locator("form[action='/signin/bluesky'] button").click()
    expect(page.get_by_role("alert")).to_contain_text("Bluesky n’a pas accepté")

    page.fill("#bsky-password", newbie.app_password)
    page.locator("form[action='/signin/bluesky'] button").click()
    page.wait_for_url("**/consents")
    page.check("#consent-matching")
    page.locator("form[action='/consents'] button").click()
    page.wait_for_url("**/upload")

    page.set_input_files("#archive", str(archive))
    page.locator("#upload-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/results\?import="))
    notice = page.locator(".notice").first
    expect(notice).to_contain_text("comptes que vous suiviez : 9 ; vos abonnés : 4")

    # Both directions, counts first; the person who did not consent is not shown.
    wait_for_matches(page, "bluesky", following=3, followers=2)
    page.screenshot(path=artifacts / "journey-bluesky-results.png", full_page=True)
    handles = page.locator(".match-list .handle").all_inner_texts()
    assert sorted(handles) == sorted([alice.handle, bob.handle, carol.handle])
    # Archive claims are not verified on this node: they are marked.
    for item in page.locator(".match-list li").all():
        if item.get_attribute("data-trust") == "claimed":
            expect(item.locator(".badge.trust-claimed")).to_be_visible()

    page.locator(f'li[data-target="{alice.account}"] input[type=checkbox]').check()
    page.locator(f'li[data-target="{bob.account}"] input[type=checkbox]').check()
    page.locator("button[value=follow]").click()
    page.wait_for_url(re.compile(r"/progress"))
    expect(page.locator(".notice")).to_contain_text("2")

    # Live counts reach the end without a reload.
    live = page.locator("#live-progress")
    expect(live).to_have_attribute("data-live-done", "true", timeout=120_000)
    expect(live.locator('[data-network="bluesky"] [data-count="followed"]')).to_have_text("2")
    page.screenshot(path=artifacts / "journey-bluesky-progress.png", full_page=True)

    # The follow records are on the PDS.
    followed = set(pds.followed_dids(newbie.did))
    assert {alice.account, bob.account} <= followed
    assert carol.account not in followed

    # They followed you: bob and dave.
    page.goto("/results?network=bluesky&direction=follower")
    assert sorted(page.locator(".match-list .handle").all_inner_texts()) == sorted(
        [bob.handle, dave.handle]
    )
    page.context.close()


def test_mastodon_journey_then_delete_everything(
    browser: Browser,
    stack: Stack,
    fleet: MastodonFleet,
    pds: LocalPds,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    alpha, beta = fleet["alpha.test"], fleet["beta.test"]
    for instance, name in ((alpha, "ann"), (beta, "ben"), (beta, "bea"), (alpha, "nora")):
        instance.create_account(name)
    ann = stack.seed_mastodon("alpha.test", "ann", 21)
    ben = stack.seed_mastodon("beta.test", "ben", 22)
    bea = stack.seed_mastodon("beta.test", "bea", 23)
    archive = tmp_path / "archive.zip"
    archive.write_bytes(newcomer_archive([ann, ben], [ben, bea]))

    page = open_page(browser, stack, "es", artifacts)
    # Signed in on her Mastodon server already (as a person would be in their browser).
    page.goto(f"{alpha.url}/_test/login?username=nora")
    page.goto("/signin?lang=es")
    page.fill("#mastodon-instance", "alpha.test")
    page.locator("form[action='/auth/mastodon/start'] button").click()
    page.locator("#approve button, #approve [type=submit]").first.click()
    page.wait_for_url("**/consents")
    page.check("#consent-matching")
    page.locator("form[action='/consents'] button").click()
    page.wait_for_url("**/upload")
    page.set_input_files("#archive", str(archive))
    page.locator("#upload-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/results\?import="))

    wait_for_matches(page, "mastodon", following=2, followers=2)
    page.goto("/results?network=mastodon&direction=following")
    page.locator("button[value=select_all]").click()
    expect(page.locator(".notice")).to_contain_text("2")
    page.locator("button[value=follow]").click()
    page.wait_for_url(re.compile(r"/progress"))
    live = page.locator("#live-progress")
    expect(live).to_have_attribute("data-live-done", "true", timeout=120_000)
    expect(live.locator('[data-network="mastodon"] [data-count="followed"]')).to_have_text("2")

    # The follows are on the servers: ann locally, ben on beta.test (federated).
    follows = alpha.follows("nora@alpha.test")["follows"]
    assert {f["target"].split("@")[0] for f in follows if f["account"].startswith("nora")} == {
        "ann",
        "ben",
    }, follows

    # Mastodon's own import file.
    csv = page.request.get("/api/export/mastodon.csv")
    assert csv.ok
    assert "Account address" in csv.text()
    assert "ann@alpha.test" in csv.text()

    # Link the other network (checked by the real Bluesky sender), then unlink it.
    her_bluesky = pds.create_account("nora-sky")
    page.goto("/account?lang=es")
    page.fill("#bsky-identifier", her_bluesky.handle)
    page.fill("#bsky-password", her_bluesky.app_password)
    page.locator("form[action='/account/link/bluesky'] button").click()
    page.wait_for_url(re.compile(r"/account\?done=linked"))
    expect(page.locator('li[data-network="bluesky"]')).to_contain_text(her_bluesky.handle)
    page.locator("form[action='/account/unlink/bluesky'] button").click()
    page.wait_for_url(re.compile(r"/account\?done=unlinked"))
    expect(page.locator('li[data-network="bluesky"]')).to_have_count(0)

    # Delete everything, with confirmation.
    person_id = page.request.get("/api/me").json()["person_id"]
    assert matching_summary(stack, person_id)  # matching knows her matches
    page.goto("/account/delete?lang=es")
    page.locator("form[action='/account/delete'] button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/account/delete"))  # the box was not ticked
    page.check("#confirm")
    page.locator("form[action='/account/delete'] button[type=submit]").click()
    page.wait_for_url(re.compile(r"/\?erased=1"))
    expect(page.locator(".notice")).to_contain_text("Todo lo tuyo se ha borrado")
    assert page.request.get("/api/me").status == 401
    # Matching forgot her too (user.erased), and signing in again starts from nothing.
    wait_for(lambda: not matching_summary(stack, person_id), 60, "matching erased her matches")
    page.goto("/signin?lang=es")
    page.fill("#mastodon-instance", "alpha.test")
    page.locator("form[action='/auth/mastodon/start'] button").click()
    page.locator("#approve button, #approve [type=submit]").first.click()
    page.wait_for_url("**/consents")
    assert page.request.get("/api/me").json()["person_id"] != person_id
    page.goto("/results?lang=es")
    expect(page.locator("main")).to_contain_text("passerelle necesita tu archivo de X")
    page.context.close()


def matching_summary(stack: Stack, person_id: str) -> list[dict[str, object]]:
    """What the matching service answers about a person, asked over NATS like the edge does."""

    async def ask() -> list[dict[str, object]]:
        client = await nats.connect(stack.nats.url if stack.nats else "")
        try:
            request = MatchSummaryRequest(region="local", person_id=person_id)
            reply = await client.request(
                request.subject, request.model_dump_json().encode(), timeout=10
            )
        finally:
            await client.close()
        counts: list[dict[str, object]] = MatchSummaryReply.model_validate_json(
            reply.data
        ).model_dump()["counts"]
        return counts

    # Playwright's sync API owns this thread's event loop: ask from another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()

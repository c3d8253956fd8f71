"""The pages in headless Chromium: every page in every language (screenshots kept),
accessibility (axe), right-to-left Arabic, and the upload page opening archives itself."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from passerelle_ingest import i18n
from tests.support.archivegen import ArchiveSpec, ZipWriter, archive_bytes
from tests.web.conftest import WebEdge

PAGES = {
    "home": "/",
    "signin": "/signin",
    "consents": "/consents",
    "upload": "/upload",
    "results": "/results",
    "progress": "/progress",
    "account": "/account",
    "delete": "/account/delete",
}
SIGNED_OUT = {"signin"}
BLOCKING = {"serious", "critical"}


@pytest.fixture(scope="module")
def person_with_matches(web: WebEdge) -> str:
    """Someone with an archive, matches in both directions, and some follows under way."""
    person = web.person("mira.test")
    web.people.link(person, "mastodon", "mira@alpha.test", "mira@alpha.test")
    web.world.give_matches(person, "bluesky", 64, followers=9)
    web.world.give_matches(person, "mastodon", 12, followers=3)
    for index, match in enumerate(web.world.matches[person]["bluesky"][:12]):
        match.state = ("followed", "requested", "failed", "selected")[index % 4]
        if match.state == "failed":
            match.reason = ("follow_cap", "not_found", "teapot")[index % 3]
    with web.client(person) as client:
        response = client.post(
            "/upload",
            data={"csrf_token": web.csrf(person)},
            files={"archive": ("x.zip", archive_bytes(ArchiveSpec(followers=20, following=9)))},
            follow_redirects=False,
        )
        assert response.status_code == 303
    return person


def new_context(browser: Browser, web: WebEdge, person: str | None, lang: str) -> BrowserContext:
    context = browser.new_context(
        base_url=web.base_url, locale=lang, viewport={"width": 1100, "height": 800}
    )
    if person:
        context.add_cookies(web.browser_cookies(person))  # type: ignore[arg-type]
    return context


def blocking_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_page_in_every_language(
    browser: Browser, web: WebEdge, person_with_matches: str, artifacts: Path, lang: str
) -> None:
    signed_in = new_context(browser, web, person_with_matches, lang)
    signed_out = new_context(browser, web, None, lang)
    problems: dict[str, list[str]] = {}
    try:
        for name, path in PAGES.items():
            context = signed_out if name in SIGNED_OUT else signed_in
            page = context.new_page()
            response = page.goto(f"{path}?lang={lang}")
            assert response is not None
            assert response.status == 200, (name, lang, response.status)
            html = page.locator("html")
            expect(html).to_have_attribute("lang", lang)
            expect(html).to_have_attribute("dir", "rtl" if lang == "ar" else "ltr")
            # The switcher names each language in itself, and marks the current one.
            expect(page.locator(f'nav.languages a[hreflang="{lang}"]')).to_have_attribute(
                "aria-current", "true"
            )
            page.screenshot(path=artifacts / f"{name}-{lang}.png", full_page=True)
            found = blocking_violations(page)
            if found:
                problems[name] = found
            page.close()
    finally:
        signed_in.close()
        signed_out.close()
    assert not problems, problems


def test_arabic_reads_right_to_left(
    browser: Browser, web: WebEdge, person_with_matches: str
) -> None:
    context = new_context(browser, web, person_with_matches, "ar")
    page = context.new_page()
    page.goto("/results?lang=ar")
    width = page.viewport_size["width"] if page.viewport_size else 1100
    brand = page.locator("header .brand").bounding_box()
    languages = page.locator("header nav.languages").bounding_box()
    assert brand is not None
    assert languages is not None
    # The brand starts the header on the right; the language switcher ends it on the left.
    assert brand["x"] > width / 2 > languages["x"]
    assert page.evaluate("getComputedStyle(document.body).direction") == "rtl"
    # Handles stay left-to-right inside the Arabic text.
    handle = page.locator(".match-list .handle").first
    assert handle.evaluate("e => getComputedStyle(e).direction") == "ltr"
    # Numbers and the heading read in Arabic.
    expect(page.locator("h1")).to_have_text("معارفك")
    context.close()


def test_keyboard_reaches_the_forms_with_a_visible_focus(browser: Browser, web: WebEdge) -> None:
    context = new_context(browser, web, None, "en")
    page = context.new_page()
    page.goto("/signin")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    page.keyboard.press("Enter")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "bsky-identifier":
            break
    else:
        pytest.fail("the handle field cannot be reached with the keyboard")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    context.close()


# --- the upload page opens the archive itself ----------------------------------------------


RECORD_SENT = """
(() => {
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (body) {
    if (body instanceof FormData) {
      const files = [...body.entries()]
        .filter(([, value]) => value instanceof Blob)
        .map(([field, value]) => [field, value.name, value.size]);
      sessionStorage.setItem('sent', JSON.stringify(files));
    }
    return send.call(this, body);
  };
})();
"""


def sent_files(page: Page) -> list[tuple[str, str, int]]:
    """(field, file name, size) of each file the page handed to the network."""
    sent = page.evaluate("JSON.parse(sessionStorage.getItem('sent') || '[]')")
    return [(field, name, size) for field, name, size in sent]


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#archive", str(path))
    page.get_by_role("button", name=re.compile("Send|Envoyer")).click()


@pytest.mark.parametrize(
    "spec",
    [
        ArchiveSpec(followers=300, following=120, seed=11),
        ArchiveSpec(
            followers=40, following=30, seed=12, zip64=True, prefix="twitter-2024-05-01-ab12/"
        ),
        ArchiveSpec(
            followers=50, following=5, seed=13, compression="stored", follower_parts=3, crlf=True
        ),
        ArchiveSpec(followers=25, following=25, seed=14, data_descriptor=True, bom=True),
    ],
    ids=["deflate", "zip64-prefix", "stored-parts", "descriptor-bom"],
)
def test_the_browser_sends_only_the_lists(
    browser: Browser, web: WebEdge, tmp_path: Path, spec: ArchiveSpec
) -> None:
    person = web.person(f"uploader{spec.seed}.test")
    archive = tmp_path / "twitter-archive.zip"
    archive.write_bytes(archive_bytes(spec))
    context = new_context(browser, web, person, "en")
    context.add_init_script(RECORD_SENT)
    page = context.new_page()
    page.goto("/upload")
    upload(page, archive)
    page.wait_for_url(re.compile(r"/results\?import="))
    # Exactly the lists, each whole, and nothing else of the archive (tweets, DMs, media...).
    with zipfile.ZipFile(archive) as zipped:
        wanted = {
            ("files", info.filename.rsplit("/", 1)[-1], info.file_size)
            for info in zipped.infolist()
            if re.search(r"data/(account|follower|following)(-part\d+)?\.js$", info.filename)
        }
        assert len(zipped.infolist()) > len(wanted)
    assert set(sent_files(page)) == wanted
    following, followers = spec.expected()
    expect(page.locator(".notice").first).to_contain_text(
        f"accounts you followed: {len(following)}; your followers: {len(followers)}"
    )
    context.close()


def test_without_decompression_the_whole_file_is_sent(
    browser: Browser, web: WebEdge, tmp_path: Path
) -> None:
    person = web.person("oldbrowser.test")
    archive = tmp_path / "archive.zip"
    archive.write_bytes(archive_bytes(ArchiveSpec(followers=10, following=10, seed=21)))
    context = new_context(browser, web, person, "en")
    context.add_init_script("delete window.DecompressionStream;")
    context.add_init_script(RECORD_SENT)
    page = context.new_page()
    page.goto("/upload")

    def slow(route: Route) -> None:
        page.wait_for_timeout(600)  # long enough to see the bar move
        route.continue_()

    page.route("**/upload", slow)
    upload(page, archive)
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.locator("#upload-status")).to_contain_text("sending the whole file")
    assert sent_files(page) == [("archive", "archive.zip", archive.stat().st_size)]
    page.wait_for_url(re.compile(r"/results\?import="))
    context.close()


def encrypted_zip() -> bytes:
    out = io.BytesIO()
    writer = ZipWriter(out)
    writer.add("data/account.js", b"window.YTD.account.part0 = []", flags=1)
    writer.add("data/follower.js", b"window.YTD.follower.part0 = []", flags=1)
    writer.add("data/following.js", b"window.YTD.following.part0 = []", flags=1)
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize(
    ("lang", "content", "expected"),
    [
        ("fr", b"%PDF-1.4 not an archive" * 50, "Ce fichier n’est pas une archive zip."),
        ("ja", "encrypted", "アーカイブがパスワードで保護されているため、読み取れません。"),
        ("de", "no-follows", "(data/follower.js, data/following.js nicht gefunden)"),
    ],
    ids=["not-a-zip", "encrypted", "no-follow-files"],
)
def test_archive_problems_found_in_the_browser_are_explained_in_the_language(
    browser: Browser, web: WebEdge, tmp_path: Path, lang: str, content: Any, expected: str
) -> None:
    person = web.person(f"troubled-{lang}.test")
    if content == "encrypted":
        content = encrypted_zip()
    elif content == "no-follows":
        out = io.BytesIO()
        writer = ZipWriter(out)
        writer.add("data/tweets.js", b"window.YTD.tweets.part0 = []")
        writer.close()
        content = out.getvalue()
    path = tmp_path / "archive.zip"
    path.write_bytes(content)
    context = new_context(browser, web, person, lang)
    page = context.new_page()
    page.goto(f"/upload?lang={lang}")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if r.method == "POST" else None)
    page.set_input_files("#archive", str(path))
    page.locator("#upload-form button[type=submit]").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(expected)
    assert requests == []  # nothing left the browser
    assert page.evaluate("document.activeElement.id") == "error"
    context.close()


def test_a_refusal_from_the_server_is_shown_translated(
    browser: Browser, web: WebEdge, tmp_path: Path
) -> None:
    """The lists were taken out, but one is not JSON: the server's reason, in Spanish."""
    person = web.person("broken-json.test")
    out = io.BytesIO()
    writer = ZipWriter(out)
    writer.add("data/account.js", b'window.YTD.account.part0 = [{"account": {"accountId": "12"')
    writer.add("data/follower.js", b"window.YTD.follower.part0 = []")
    writer.add("data/following.js", b"window.YTD.following.part0 = []")
    writer.close()
    path = tmp_path / "archive.zip"
    path.write_bytes(out.getvalue())
    context = new_context(browser, web, person, "es")
    page = context.new_page()
    page.goto("/upload?lang=es")
    page.set_input_files("#archive", str(path))
    with page.expect_response("**/upload") as answer:
        page.locator("#upload-form button[type=submit]").click()
    assert answer.value.status in (400, 422)
    expect(page.get_by_role("alert")).to_contain_text("Vuelve a descargar tu archivo de X")
    context.close()


def test_an_error_from_the_server_takes_the_focus(browser: Browser, web: WebEdge) -> None:
    context = new_context(browser, web, None, "de")
    page = context.new_page()
    page.goto("/signin?lang=de")
    page.fill("#bsky-identifier", "nobody.test")
    page.fill("#bsky-password", "wrong-wrong-wrong")
    page.locator("form[action='/signin/bluesky'] button").click()
    expect(page.get_by_role("alert")).to_contain_text("Bluesky hat dieses Handle")
    assert page.evaluate("document.activeElement.id") == "error"
    context.close()

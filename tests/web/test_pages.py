"""The pages over plain HTTP (no browser): languages, forms, CSRF, errors, the flow."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest

from passerelle_ingest import i18n
from tests.support.archivegen import ArchiveSpec, archive_bytes, extracted_files
from tests.web.conftest import WebEdge, serve_edge
from tests.web.stubs import GOOD_APP_PASSWORD

PAGES = ["/consents", "/upload", "/results", "/progress", "/account", "/account/delete"]


def text(html: str) -> str:
    """The visible text of a page, roughly (tags dropped, entities decoded)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_language_from_url_then_cookie_then_accept_language(web: WebEdge) -> None:
    with web.client(**{"Accept-Language": "de-CH, de;q=0.9, en;q=0.5"}) as client:
        page = client.get("/signin").text
        assert '<html lang="de" dir="ltr">' in page
        assert "Melde dich mit dem Konto an, zu dem du umziehst" in text(page)

        page = client.get("/signin", params={"lang": "ar"}).text
        assert '<html lang="ar" dir="rtl">' in page
        # The choice is remembered in a cookie, over Accept-Language.
        assert client.cookies.get("passerelle_lang") == "ar"
        assert '<html lang="ar" dir="rtl">' in client.get("/").text

    with web.client(**{"Accept-Language": "ja-JP,ja;q=0.9"}) as client:
        assert '<html lang="ja" dir="ltr">' in client.get("/").text
    with web.client(**{"Accept-Language": "pt-BR, sw"}) as client:
        assert '<html lang="en" dir="ltr">' in client.get("/").text


def test_home_says_what_is_kept_and_who_runs_the_node(web: WebEdge) -> None:
    with web.client() as client:
        page = client.get("/", params={"lang": "fr"}).text
    words = text(page)
    assert "Ce que passerelle garde, et combien de temps" in words
    assert "Collectif Passerelle Test" in words
    assert 'href="mailto:contact@passerelle.example"' in page
    assert 'href="https://passerelle.example/privacy"' in page
    # Numbers and durations per locale: the archive lists wait "2 semaines".
    assert "2 semaines" in words
    # The status table keeps a stable markup for tools, with words for people.
    assert '<tr data-service="ingest" data-status="up">' in page


def test_every_page_links_every_language(web: WebEdge) -> None:
    person = web.person("linguist.test")
    with web.client(person) as client:
        for path in ["/", *PAGES]:
            page = client.get(path, params={"lang": "es"}).text
            for lang in i18n.LANGUAGES:
                assert f'hreflang="{lang}"' in page, (path, lang)
            assert '<html lang="es" dir="ltr">' in page


def test_pages_need_a_session(web: WebEdge) -> None:
    with web.client() as client:
        for path in PAGES:
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 303
            assert response.headers["location"] == "/signin"


def test_sign_in_with_a_wrong_password_says_so_in_the_language(web: WebEdge) -> None:
    web.world.bluesky_accounts["bob.test"] = "did:plc:bob"
    with web.client() as client:
        form = client.get("/signin", params={"lang": "ja"}).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        response = client.post(
            "/signin/bluesky",
            data={"identifier": "bob.test", "app_password": "wrong", "csrf_token": token[1]},
            follow_redirects=False,
        )
        assert response.status_code == 400
        assert "Bluesky はこのハンドルとアプリパスワードを受け付けませんでした" in text(
            response.text
        )
        assert 'value="bob.test"' in response.text  # what was typed stays

        # Without the form's token: refused, nothing asked of the sender.
        asked = len(web.world.requests)
        response = client.post(
            "/signin/bluesky",
            data={"identifier": "bob.test", "app_password": GOOD_APP_PASSWORD},
            follow_redirects=False,
        )
        assert response.status_code == 403
        assert len(web.world.requests) == asked

        response = client.post(
            "/signin/bluesky",
            data={
                "identifier": "bob.test",
                "app_password": GOOD_APP_PASSWORD,
                "csrf_token": token[1],
            },
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/next"
        assert client.get("/next", follow_redirects=False).headers["location"] == "/consents"


def test_consents_are_off_by_default_and_need_the_csrf_token(web: WebEdge) -> None:
    person = web.person("carol.test")
    with web.client(person) as client:
        page = client.get("/consents").text
        assert page.count('type="checkbox"') == 3
        assert " checked" not in page
        refused = client.post("/consents", data={"matching": "on"}, follow_redirects=False)
        assert refused.status_code == 403
        saved = client.post(
            "/consents",
            data={"matching": "on", "csrf_token": web.csrf(person)},
            follow_redirects=False,
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == "/upload"  # no archive yet: next step
    stored = web.people.get(person)
    assert stored is not None
    assert (stored.consent_matching, stored.consent_auto_follow) == (True, False)


def test_upload_without_script_whole_zip_then_results(web: WebEdge) -> None:
    person = web.person("dora.test")
    spec = ArchiveSpec(followers=30, following=12, seed=5)
    with web.client(person) as client:
        response = client.post(
            "/upload",
            data={"csrf_token": web.csrf(person)},
            files={"archive": ("archive.zip", archive_bytes(spec), "application/zip")},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/results?import=")
        page = client.get(response.headers["location"] + "&lang=de").text
        assert (
            "Dein Archiv ist angekommen (Konten, denen du gefolgt bist: 12; deine Follower: 30)"
            in text(page)
        )


def test_upload_of_extracted_files_answers_json_for_the_script(web: WebEdge) -> None:
    person = web.person("eve.test")
    spec = ArchiveSpec(followers=8, following=4, seed=6)
    files = [
        ("files", (name.rsplit("/", 1)[-1], data, "text/javascript"))
        for name, data in extracted_files(spec)
    ]
    with web.client(person, Accept="application/json") as client:
        response = client.post("/upload", data={"csrf_token": web.csrf(person)}, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["next"].startswith("/results?import=")


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("en", "This file is not a zip archive."),
        ("fr", "Ce fichier n’est pas une archive zip."),
        ("ar", "هذا الملف ليس أرشيف zip."),
    ],
)
def test_a_bad_archive_is_explained_in_the_language(web: WebEdge, lang: str, expected: str) -> None:
    person = web.person("frank.test")
    with web.client(person) as client:
        response = client.post(
            "/upload",
            params={"lang": lang},
            data={"csrf_token": web.csrf(person)},
            files={"archive": ("notes.zip", b"these are not zip bytes" * 10, "application/zip")},
        )
        assert response.status_code == 400
        assert expected in text(response.text)
        assert 'role="alert"' in response.text

        response = client.post(
            "/upload",
            params={"lang": lang},
            headers={"Accept": "application/json"},
            data={"csrf_token": web.csrf(person)},
            files={"archive": ("notes.zip", b"these are not zip bytes" * 10, "application/zip")},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "not_a_zip"
        assert expected in response.json()["error"]["message"]


def test_results_select_and_follow(web: WebEdge) -> None:
    person = web.person("gina.test")
    spec = ArchiveSpec(followers=5, following=5, seed=7)
    web.world.give_matches(person, "bluesky", 60, followers=4)
    with web.client(person) as client:
        client.post(
            "/upload",
            data={"csrf_token": web.csrf(person)},
            files={"archive": ("a.zip", archive_bytes(spec), "application/zip")},
        )
        page = client.get("/results", params={"lang": "en"}).text
        words = text(page)
        assert "Found so far" in words
        # Counts first, then the first page of 50 of the 60 people followed.
        assert "1–50 of 60" in words
        assert page.count('name="targets"') == 50
        assert "Unverified claim" in words
        assert "this person says the X account is theirs, but X has not confirmed it" in words
        assert 'rel="next"' in page

        csrf = web.csrf(person)
        chosen = ["did:plc:stub000", "did:plc:stub001"]
        response = client.post(
            "/results/select",
            data={
                "csrf_token": csrf,
                "network": "bluesky",
                "direction": "following",
                "targets": chosen,
                "shown": [*chosen, "did:plc:stub002"],
                "action": "follow",
            },
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/progress?requested=2"
        progress = text(client.get("/progress?requested=2").text)
        assert "People to be followed for you: 2." in progress
        assert "Waiting for the network's limit" in progress

        search = text(client.get("/results", params={"q": "person05"}).text)
        assert "1–10 of 10" in search


def test_delete_everything_needs_confirmation(web: WebEdge) -> None:
    person = web.person("hugo.test")
    with web.client(person) as client:
        refused = client.post("/account/delete", data={"csrf_token": web.csrf(person)})
        assert refused.status_code == 400
        assert web.people.get(person) is not None
        done = client.post(
            "/account/delete",
            data={"csrf_token": web.csrf(person), "confirm": "yes"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/?erased=1"
    assert web.people.get(person) is None
    assert web.people.accounts(person) == []


def test_a_mastodon_server_that_does_not_exist_is_explained_on_the_page(web: WebEdge) -> None:
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    with web.client(Accept=browser) as client:
        response = client.get(
            "/auth/mastodon/start", params={"instance": "nowhere.invalid"}, follow_redirects=False
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/signin?error=unknown_instance"
        page = client.get(response.headers["location"] + "&lang=es").text
        assert "Ningún servidor de Mastodon responde en esta dirección" in text(page)
    # An API client still gets the JSON error.
    with web.client() as client:
        response = client.get("/auth/mastodon/start", params={"instance": "nowhere.invalid"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "unknown_instance"


def test_only_a_demonstration_node_offers_an_example_archive(web: WebEdge) -> None:
    person = web.person("visitor.test")
    with web.client(person) as client:
        assert client.get("/demo/x-archive.zip").status_code == 404
        assert "/demo/x-archive.zip" not in client.get("/upload").text


def test_link_the_other_network_then_unlink_it(web: WebEdge) -> None:
    web.world.bluesky_accounts["ida.bsky.test"] = "did:plc:ida"
    person = web.person("ida@alpha.test", network="mastodon")
    with web.client(person) as client:
        page = client.get("/account", params={"lang": "fr"}).text
        assert "Lier votre compte Bluesky" in text(page)
        assert 'action="/account/unlink/mastodon"' not in page  # the only way to sign in
        wrong = client.post(
            "/account/link/bluesky",
            data={
                "identifier": "ida.bsky.test",
                "app_password": "nope",
                "csrf_token": web.csrf(person),
            },
        )
        assert wrong.status_code == 400
        linked = client.post(
            "/account/link/bluesky",
            data={
                "identifier": "ida.bsky.test",
                "app_password": GOOD_APP_PASSWORD,
                "csrf_token": web.csrf(person),
            },
            follow_redirects=False,
        )
        assert linked.headers["location"] == "/account?done=linked"
        assert {a.network for a in web.people.accounts(person)} == {"mastodon", "bluesky"}
        page = client.get("/account").text
        assert 'action="/account/unlink/bluesky"' in page
        unlinked = client.post(
            "/account/unlink/bluesky", data={"csrf_token": web.csrf(person)}, follow_redirects=False
        )
        assert unlinked.headers["location"] == "/account?done=unlinked"
        assert {a.network for a in web.people.accounts(person)} == {"mastodon"}


def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No Content-Length to check first: the page counts the body and stops at the limit."""
    with serve_edge(tmp_path_factory.mktemp("small-web"), max_upload_bytes=200_000) as small:
        person = small.person("grace.test")
        boundary = "passerelle-test-boundary"
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
                f"{small.csrf(person)}\r\n--{boundary}\r\nContent-Disposition: form-data; "
                f'name="archive"; filename="archive.zip"\r\n'
                "Content-Type: application/zip\r\n\r\n"
            )
            yield head.encode()
            for _ in range(640):  # 10 MB, far over the limit
                sent += 16_384
                yield b"x" * 16_384
            yield f"\r\n--{boundary}--\r\n".encode()

        with small.client(person) as client:
            response = client.post(
                "/upload",
                params={"lang": "fr"},
                content=body(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        assert response.status_code == 413
        assert 'role="alert"' in response.text
        assert "Ce fichier dépasse 195.3 KiB, le maximum accepté" in text(response.text)
        assert not list((small.settings.upload_tmp_dir or Path("/nonexistent")).glob("*"))

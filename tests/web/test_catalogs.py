"""Every text of the pages is in the catalog, and every language translates all of it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from jinja2 import Environment

from passerelle_ingest import i18n, web
from passerelle_xarchive.messages import MESSAGES as ARCHIVE_MESSAGES

TEMPLATES = Path(web.__file__).parent / "templates"
STATIC = Path(web.__file__).parent / "static"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
#: Names that are the same in every language, allowed as literal text in templates.
PROPER_NOUNS = {"passerelle", "Bluesky", "Mastodon", "X", "·"}
#: Attributes people read or hear.
READ_ATTRIBUTES = {"alt", "title", "placeholder", "aria-label", "aria-description", "label"}
#: Messages that are rightly spelt the same as in English in a language.
SAME_AS_ENGLISH = {
    "fr": {"Service", "Version", "Pages"},
    "de": {"Status", "Version"},
    "es": set(),
    "ar": set(),
    "ja": set(),
}


def pot_ids() -> set[str]:
    with (i18n.LOCALE_DIR / "messages.pot").open("rb") as handle:
        return {m.id for m in read_po(handle) if m.id}


def test_the_template_catalog_is_up_to_date() -> None:
    """``just i18n`` was run after the last text change (templates, web.py, archive errors)."""
    extracted = {m.id for m in i18n.extract() if m.id}
    assert extracted == pot_ids(), (
        f"run `just i18n`: new {sorted(extracted - pot_ids())[:5]}, "
        f"gone {sorted(pot_ids() - extracted)[:5]}"
    )
    assert set(ARCHIVE_MESSAGES.values()) <= extracted


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_message_is_translated(lang: str) -> None:
    catalog = i18n.read_catalog(lang)
    ids = {m.id for m in catalog if m.id}
    assert ids == pot_ids(), f"{lang}: run `just i18n`"
    problems = []
    for message in catalog:
        if not message.id:
            continue
        assert isinstance(message.id, str), "plural messages are not used"
        text = message.string
        if not text or message.fuzzy:
            problems.append(f"untranslated: {message.id!r}")
            continue
        assert isinstance(text, str)
        if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(message.id)):
            problems.append(f"placeholders differ: {message.id!r} → {text!r}")
        if lang != "en" and text == message.id and message.id not in SAME_AS_ENGLISH[lang]:
            problems.append(f"English copy: {message.id!r}")
        if lang == "en" and text != message.id:
            problems.append(f"English must read as written: {message.id!r}")
    assert not problems, f"{lang}: " + "\n".join(problems)


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_translations_compile_and_format(lang: str) -> None:
    translations = i18n.load_translations(lang)
    for message in pot_ids():
        text = translations.gettext(message)
        params = dict.fromkeys(PLACEHOLDER.findall(message), "1")
        assert isinstance(text % params, str)


class _Reader(HTMLParser):
    """Collects text and read attributes that are not produced by Jinja (marked \\x00)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value:
                self._check(value, f"{tag}[{name}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._check(data, "text")

    def _check(self, value: str, where: str) -> None:
        words = [w for w in re.split(r"[\s\x00]+", value) if w]
        literal = [w for w in words if re.search(r"\w", w) and w not in PROPER_NOUNS]
        if literal:
            self.found.append(f"{where}: {' '.join(literal)!r}")


def literal_text(source: str) -> list[str]:
    """Text of a template that does not come from a gettext call or a trans block."""
    env = Environment(extensions=["jinja2.ext.i18n"])
    kept: list[str] = []
    in_trans = 0
    block: list[str] = []
    for _line, kind, value in env.lex(source):
        if kind == "block_begin":
            block = []
        elif kind == "name" and block == []:
            block.append(value)
            if value == "trans":
                in_trans += 1
            elif value == "endtrans":
                in_trans -= 1
        if kind == "data" and not in_trans:
            kept.append(value)
        elif kind in ("variable_end", "block_end"):
            kept.append("\x00")
    reader = _Reader()
    reader.feed("".join(kept))
    reader.close()
    return reader.found


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_have_no_text_outside_the_catalog(template: str) -> None:
    assert literal_text((TEMPLATES / template).read_text()) == []


def test_the_template_check_finds_literal_text() -> None:
    assert literal_text('<p title="Hello">{{ _("Fine") }} Oops</p>') == [
        "p[title]: 'Hello'",
        "text: 'Oops'",
    ]
    assert literal_text("{% trans %}Inside {{ x }} a block{% endtrans %}<b>Bluesky</b>") == []


@pytest.mark.parametrize("script", sorted(p.name for p in STATIC.glob("*.js")))
def test_scripts_hold_no_text_for_people(script: str) -> None:
    """Scripts show only what the page hands them, translated: no sentences in code."""
    source = (STATIC / script).read_text()
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.S)
    strings = re.findall(r"'([^'\\\n]*)'|\"([^\"\\\n]*)\"|`([^`\\]*)`", code)
    sentence = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")
    literals = [s for group in strings for s in group if s and s != "use strict"]
    sentences = [s for s in literals if sentence.search(s)]
    assert sentences == []

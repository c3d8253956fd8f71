"""Languages of the web pages: gettext catalogs (Babel), locale choice, formatting.

The catalogs are ``locale/<lang>/LC_MESSAGES/messages.po``, read and compiled in
memory at start (no ``.mo`` files to keep in step). ``python -m passerelle_ingest.i18n``
(``just i18n``) extracts every message (templates, ``web.py``, and the archive
errors of ``passerelle_xarchive``) into ``locale/messages.pot`` and merges it into
each language's catalog; translators then fill the new entries.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from babel import Locale, negotiate_locale
from babel.dates import format_date, format_datetime, format_timedelta
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po
from babel.numbers import format_decimal
from babel.support import Translations

from passerelle_xarchive.messages import MESSAGES as ARCHIVE_MESSAGES

#: The languages every page is shipped in (a test checks each catalog is complete).
LANGUAGES: Final[tuple[str, ...]] = ("fr", "en", "es", "de", "ar", "ja")
DEFAULT_LANGUAGE: Final = "en"
LOCALE_DIR: Final = Path(__file__).parent / "locale"
PACKAGE_DIR: Final = Path(__file__).parent
BABEL_CFG: Final = PACKAGE_DIR.parent.parent / "babel.cfg"
DOMAIN: Final = "messages"


def catalog_path(lang: str) -> Path:
    """Where a language's catalog lives."""
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def read_catalog(lang: str) -> Catalog:
    """A language's catalog as Babel reads it."""
    with catalog_path(lang).open("rb") as handle:
        return read_po(handle, locale=lang, domain=DOMAIN)


def load_translations(lang: str) -> Translations:
    """The compiled translations of one language (fuzzy entries are left out)."""
    compiled = io.BytesIO()
    write_mo(compiled, read_catalog(lang), use_fuzzy=False)
    compiled.seek(0)
    return Translations(fp=compiled, domain=DOMAIN)


def choose_language(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The URL's ``?lang=`` first, then the cookie, else the browser's preferences."""
    for explicit in (query, cookie):
        if explicit in LANGUAGES:
            return explicit
    preferred = _accepted(accept_language or "")
    chosen = negotiate_locale(preferred, LANGUAGES, sep="-")
    return chosen or DEFAULT_LANGUAGE


def _accepted(header: str) -> list[str]:
    """``Accept-Language`` tags, best first (``fr-CH, fr;q=0.9, en;q=0.8``)."""
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _sep, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, position, tag.replace("_", "-")))
    return [tag for _quality, _position, tag in sorted(weighted)]


@dataclass(frozen=True)
class Formats:
    """Numbers, dates and durations written the way a language writes them."""

    lang: str

    @property
    def direction(self) -> str:
        """``rtl`` for Arabic, ``ltr`` otherwise."""
        order = Locale.parse(self.lang).character_order
        return "rtl" if order == "right-to-left" else "ltr"

    def number(self, value: int) -> str:
        return format_decimal(value, locale=self.lang)

    def date(self, value: datetime) -> str:
        """A date, in full words where the language does ("25 novembre 2026")."""
        return format_date(value, "long", locale=self.lang)

    def datetime(self, value: datetime) -> str:
        """A date and time in UTC (pages add the person's own time zone with script)."""
        return format_datetime(value, "medium", tzinfo=UTC, locale=self.lang)

    def duration(self, value: timedelta) -> str:
        """A rough duration from now: "in 3 hours", "dans 3 heures", "3 時間後"."""
        return format_timedelta(value, add_direction=True, locale=self.lang)

    def span(self, value: timedelta) -> str:
        """A rough length of time: "2 weeks", "2 semaines", "2 週間"."""
        return format_timedelta(value, locale=self.lang)


def autonym(lang: str) -> str:
    """A language's name in itself (how a reader finds their language in a list)."""
    name: str = Locale.parse(lang).get_display_name(lang) or lang
    return name[:1].upper() + name[1:]


# --- Catalog maintenance (``just i18n``) -------------------------------------------------


def extract() -> Catalog:
    """Every message of the pages: templates and Python (per ``babel.cfg``), archive errors."""
    template = Catalog(project="passerelle", domain=DOMAIN, fuzzy=False)
    with BABEL_CFG.open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)  # type: ignore[no-untyped-call]
    for filename, lineno, message, comments, context in extract_from_dir(
        PACKAGE_DIR, method_map, options_map, strip_comment_tags=True
    ):
        template.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    for code, text in ARCHIVE_MESSAGES.items():
        template.add(
            text,
            None,
            [("passerelle_xarchive/messages.py", 0)],
            auto_comments=[f"Archive error '{code}': what is wrong, and what to do."],
            flags=("python-format",) if "%(" in text else (),
        )
    return template


def update_catalogs() -> list[str]:
    """Write ``messages.pot`` and merge it into every catalog; returns a line per language."""
    template = extract()
    LOCALE_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("wb") as handle:
        write_po(handle, template, omit_header=False, width=100, sort_output=False)
    report = []
    for lang in LANGUAGES:
        path = catalog_path(lang)
        if path.exists():
            catalog = read_catalog(lang)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=lang, domain=DOMAIN, project="passerelle")
        catalog.update(template, update_header_comment=False)
        with path.open("wb") as handle:
            write_po(
                handle,
                catalog,
                width=100,
                no_location=True,
                ignore_obsolete=True,
                include_previous=True,
            )
        missing = sum(1 for m in catalog if m.id and (not m.string or m.fuzzy))
        report.append(f"{lang}: {len(catalog)} messages, {missing} to translate")
    return report


def main() -> None:
    """``python -m passerelle_ingest.i18n``: update the catalogs, print what is left to do."""
    for line in update_catalogs():
        sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()

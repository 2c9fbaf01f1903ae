"""The UI's message catalogues, kept by `make i18n` (python -m fieldkit.web.i18n_catalogues):
find every text the pages and scripts translate (`_()`/`gettext`/`ngettext`/`N_` in the
templates and Python, `t()` in static/js), add new ones to each language's
`translations/<lang>/LC_MESSAGES/messages.po` (a translator fills in the empty ones), then
compile each `.po` into the `.mo` Flask-Babel reads and the JSON the scripts load
(`static/i18n/<lang>.json`, only the texts scripts use). Committed `.mo` and `.json` must be
what their `.po` compiles to; tests/test_i18n_catalogues.py checks it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from .. import __version__

WEB = Path(__file__).parent
TRANSLATIONS = WEB / "translations"
SCRIPT_CATALOGUES = WEB / "static" / "i18n"
TRANSLATED = ("fr", "es", "ar")  # English is the source language

# What is searched, and how: every page and script (the service worker shows no text)
METHODS = [
    ("templates/**.html", "jinja2.ext:babel_extract"),
    ("static/js/sw.js", "ignore"), ("static/js/**.js", "javascript"),
    ("i18n.py", "python"), ("auth.py", "python"), ("messages.py", "python"),
]
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n"}, "static/js/**.js": {"jsx": "false"}}
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "t": None}


def extract() -> Catalog:
    """Every translatable text of the translated pages, with where it is used."""
    cat = Catalog(project="fieldkit", charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
            WEB, METHODS, OPTIONS, KEYWORDS, comment_tags=("i18n:",), strip_comment_tags=True):
        cat.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return cat


def po_path(lang: str) -> Path:
    return TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po"


def read(lang: str) -> Catalog:
    with po_path(lang).open("rb") as f:
        return read_po(f, locale=lang)


def used_by_scripts(message) -> bool:
    return any(str(loc[0]).endswith(".js") for loc in message.locations)


def script_texts(cat: Catalog) -> dict:
    """The translations scripts need: {English: translation}, only the non-empty ones."""
    return {m.id: m.string for m in cat if m.id and isinstance(m.id, str) and m.string and used_by_scripts(m)}


def mo_bytes(cat: Catalog) -> bytes:
    buf = io.BytesIO()
    write_mo(buf, cat, use_fuzzy=False)
    return buf.getvalue()


def json_bytes(cat: Catalog) -> bytes:
    return (json.dumps(script_texts(cat), ensure_ascii=False, sort_keys=True, indent=0) + "\n").encode()


def update(lang: str, template: Catalog) -> Catalog:
    """`lang`'s catalogue with the texts of `template` (translations kept, gone ones dropped)."""
    path = po_path(lang)
    if path.exists():
        cat = read(lang)
        template.creation_date = cat.creation_date  # a run that adds nothing changes nothing
    else:
        cat = Catalog(locale=lang, project="fieldkit", charset="utf-8")
    cat.update(template, no_fuzzy_matching=True)
    cat.obsolete.clear()
    cat.fuzzy = False  # the header is the project's, not a guess
    cat.version, cat.copyright_holder = __version__, "the fieldkit authors"
    cat.msgid_bugs_address = cat.last_translator = cat.language_team = "the fieldkit authors"
    cat.revision_date = cat.creation_date
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        write_po(f, cat, width=100, omit_header=False, sort_output=True)
    return read(lang)


def build() -> list[str]:
    """Update every catalogue, compile it; returns the texts still untranslated, per language."""
    template = extract()
    missing = []
    SCRIPT_CATALOGUES.mkdir(parents=True, exist_ok=True)
    for lang in TRANSLATED:
        cat = update(lang, template)
        (po_path(lang).with_suffix(".mo")).write_bytes(mo_bytes(cat))
        (SCRIPT_CATALOGUES / f"{lang}.json").write_bytes(json_bytes(cat))
        missing += [f"{lang}: {m.id!r}" for m in cat if m.id and not (m.string if isinstance(m.id, str)
                                                                       else all(m.string))]
    return missing


if __name__ == "__main__":
    untranslated = build()
    for line in untranslated:
        print("untranslated", line)
    print(f"{len(untranslated)} texts to translate")

"""The languages of the tablet UI: which one a request is answered in, the language picker,
and the words of the pages (Flask-Babel over the catalogues in `translations/`).

The language is the signed-in person's choice (kept with their account), else this
tablet's (a cookie set by the picker), else the browser's Accept-Language, else English;
anything the UI does not speak falls back to English. Scripts translate with the same
catalogues: `make i18n` writes, next to each compiled `.mo`, the script words as
`static/i18n/<lang>.json`, which `static/js/i18n.js` loads (`t("…")`).
"""

from __future__ import annotations

from datetime import datetime

from babel.dates import format_datetime
from flask import Blueprint, g, make_response, redirect, request
from flask_babel import Babel, get_locale
from flask_babel import gettext as _

from ..errors import BadInput
from ..security import roles as R
from ..store import accounts

bp = Blueprint("i18n", __name__)

ROUTE_PERMISSIONS = {"i18n.choose": R.PUBLIC}  # the sign-in page has the picker too
ROUTE_MAX_BYTES = {"i18n.choose": 4096}

# code -> the language's own name (what the picker shows)
LANGUAGES = {"en": "English", "fr": "Français", "es": "Español", "ar": "العربية"}
RTL = frozenset({"ar"})
DEFAULT = "en"
COOKIE = "fieldkit_lang"
COOKIE_MAX_AGE = 400 * 24 * 3600  # the longest a browser keeps a cookie


def N_(text: str) -> str:
    """Marks a word the server computes (a category, a column) for the catalogues; the
    template translates it where it is shown."""
    return text


# Words computed in Python and shown by the page templates (handover, incident, sheet)
SERVER_WORDS = (
    N_("Immediate"), N_("Delayed"), N_("Minor"), N_("Deceased"), N_("Expectant"), N_("Not triaged"),
    N_("tag"), N_("category"), N_("triaged"), N_("last re-triage"), N_("triaged by"), N_("re-triage due"),
    N_("name"), N_("zone"), N_("disposition"), N_("interventions"), N_("notes"), N_("findings"), N_("sync"),
    N_("no captures"), N_("to send"), N_("sending"), N_("at hospital"), N_("refused"),
    N_("Handover sheet"), N_("Tag"), N_("Kit ID"), N_("Category"), N_("Triaged"), N_("Last re-triage"),
    N_("Triaged by"), N_("Re-triage due"), N_("Name"), N_("Age"), N_("Sex"), N_("Zone"), N_("Disposition"),
    N_("Captures"), N_("Sync"), N_("Unidentified"),
)


def known(code) -> str | None:
    """`code` if the UI speaks it (case-insensitive, region ignored: "fr-CA" is "fr"), else None."""
    if not isinstance(code, str):
        return None
    base = code.strip().replace("_", "-").split("-")[0].lower()
    return base if base in LANGUAGES else None


def _person_language() -> str | None:
    from .sessions import current_principal  # the guard has run: who is asking is known
    from . import kit_of
    kit = kit_of()
    p = current_principal()
    if kit.locked or p is None or p.kind != "user":
        return None
    return known(accounts.language_of(kit.store, p.name))


def pick_locale() -> str:
    """The language of this request's pages (see the module docstring for the order)."""
    if "fk_lang" not in g:
        g.fk_lang = (_person_language() or known(request.cookies.get(COOKIE))
                     or request.accept_languages.best_match(tuple(LANGUAGES)) or DEFAULT)
    return g.fk_lang


def page_language() -> dict:
    """What base.html needs: `lang`, `dir`, the picker's choices, dates in the page's language."""
    lang = str(get_locale() or DEFAULT)
    return {"lang": lang, "dir": "rtl" if lang in RTL else "ltr", "languages": LANGUAGES,
            "fmt_datetime": fmt_datetime}


def fmt_datetime(at) -> str:
    """A kit timestamp in the page's language, as local time with its offset (what a reader on
    the kit's site expects); Latin digits in every language (Babel's default)."""
    if not at:
        return ""
    local = datetime.fromtimestamp(float(at)).astimezone()
    return f"{format_datetime(local, 'medium', tzinfo=local.tzinfo, locale=get_locale() or DEFAULT)} {local:%z}"


@bp.record_once
def _setup(state) -> None:
    Babel(state.app, locale_selector=pick_locale)
    state.app.context_processor(page_language)


@bp.post("/language")
def choose():
    """The picker: this tablet's language (a cookie) and, for a signed-in person, their own."""
    from . import kit_of
    from .auth import safe_next
    from .sessions import current_principal
    code = request.form.get("lang", "")
    lang = known(code)
    if lang is None or lang != code:
        raise BadInput(_("unknown language %(code)s (choose from %(codes)s)", code=code[:16],
                         codes=", ".join(LANGUAGES)))
    p = current_principal()
    if p is not None and p.kind == "user":
        accounts.set_language(kit_of().store, p.name, lang, actor=p.actor, actor_role=p.role)
    nxt = request.form.get("next") or "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in nxt):
        nxt = "/"  # a control character is no page of the kit's (and no header may carry it)
    resp = make_response(redirect(safe_next(nxt), 303))
    resp.set_cookie(COOKIE, lang, max_age=COOKIE_MAX_AGE, secure=True, httponly=True, samesite="Strict", path="/")
    return resp

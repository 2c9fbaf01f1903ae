"""The UI's languages without a browser: the catalogues are complete and compiled from their
`.po`, the language a request gets (person, tablet, Accept-Language, English), and the
picker's bad input (an unknown language is refused clearly; the pages fall back to English)."""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest

from fieldkit.web import i18n, i18n_catalogues as C

HTTPS = "https://localhost"
WEB = Path(C.__file__).parent
PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)s")
# every page and script with words on it
TEMPLATES = ["base", "login", "patient", "device", "sync", "handover", "handover_sheet", "incident", "error", "_assign",
             "onboarding", "board", "new_patient"]
SCRIPTS = ["common", "actions", "patient", "care", "offline", "device", "sync", "handover_sheet", "theme", "board",
           "new_patient", "scan", "finding_words"]


def _scanned_texts() -> set[str]:
    """Every literal passed to _()/gettext in the templates and to t() in the scripts, found
    by a plain scan (a second opinion on Babel's extractor, which skips calls it cannot parse)."""
    found = set()
    for name in TEMPLATES:
        text = (WEB / "templates" / f"{name}.html").read_text()
        found |= {m.replace('\\"', '"') for m in re.findall(r'\b_\("((?:[^"\\]|\\.)*)"', text)}
    for name in SCRIPTS:
        for line in (WEB / "static" / "js" / f"{name}.js").read_text().splitlines():
            if line.lstrip().startswith("//"):
                continue
            found |= {m.replace('\\"', '"') for m in re.findall(r'\bt\("((?:[^"\\]|\\.)*)"', line)}
    return found


@pytest.mark.parametrize("lang", C.TRANSLATED)
def test_every_text_of_the_translated_pages_has_a_translation(lang):
    cat = C.read(lang)
    extracted = [m.id for m in C.extract() if m.id]
    assert len(extracted) > 250  # the extractor found the pages' texts (not an empty run)
    wanted = set(extracted) | _scanned_texts()
    missing = []
    for msgid in sorted(wanted, key=str):
        m = cat.get(msgid)
        strings = (m.string if isinstance(m.string, tuple) else (m.string,)) if m else ("",)
        if m is None or not all(strings) or m.fuzzy:
            missing.append(msgid)
    assert not missing, f"{len(missing)} texts without a {lang} translation (run `make i18n`, then translate):\n" + \
        "\n".join(map(repr, missing[:40]))


@pytest.mark.parametrize("lang", C.TRANSLATED)
def test_translations_keep_their_placeholders(lang):
    bad = []
    for m in C.read(lang):
        if not m.id:
            continue
        pairs = zip(m.id, m.string) if isinstance(m.id, tuple) else [(m.id, m.string)]
        for src, out in pairs:
            if set(PLACEHOLDER.findall(src)) != set(PLACEHOLDER.findall(out)):
                bad.append((src, out))
    assert not bad, bad


@pytest.mark.parametrize("lang", C.TRANSLATED)
def test_committed_mo_and_script_catalogue_are_what_the_po_compiles_to(lang):
    cat = C.read(lang)
    assert C.po_path(lang).with_suffix(".mo").read_bytes() == C.mo_bytes(cat), \
        f"{lang} messages.mo is stale: run `make i18n`"
    assert (C.SCRIPT_CATALOGUES / f"{lang}.json").read_bytes() == C.json_bytes(cat), \
        f"static/i18n/{lang}.json is stale: run `make i18n`"
    scripts = C.script_texts(cat)
    assert scripts["Immediate"] and "Sign in" not in scripts  # script words only, templates' stay server-side


def test_language_codes_are_understood_or_refused():
    assert i18n.known("fr") == "fr" and i18n.known("fr-CA") == "fr" and i18n.known("AR") == "ar"
    assert i18n.known("es_MX") == "es"
    for bad in ("", "xx", "klingon", "e", None, 7, "../fr", "fr\x00"):
        assert i18n.known(bad) is None, bad


# ----------------------------------------------------------------------------- requests

def _lang_of(html: str) -> tuple[str, str]:
    m = re.search(r'<html lang="([^"]*)" dir="([^"]*)"', html)
    assert m, html[:300]
    return m.group(1), m.group(2)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_accept_language_then_the_tablets_cookie_pick_the_page_language(sec_app):
    c = sec_app.test_client()
    for header, lang, word in [("fr-FR,fr;q=0.9", "fr", "Se connecter"), ("es", "es", "Iniciar sesión"),
                               ("ar", "ar", "تسجيل الدخول"), ("xx, tlh;q=0.8", "en", "Sign in"),
                               ("de-DE,de;q=0.9,ar;q=0.1", "ar", "تسجيل الدخول"), ("", "en", "Sign in")]:
        page = c.get("/login", base_url=HTTPS, headers={"Accept-Language": header}).get_data(as_text=True)
        assert _lang_of(page) == (lang, "rtl" if lang == "ar" else "ltr"), header
        assert f"<h1>{word}</h1>" in page, header

    # the onboarding page (a tablet's first page) too, its steps whole sentences with their markup
    page = c.get("/onboarding", base_url=HTTPS, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert _lang_of(page) == ("fr", "ltr") and "Connecter une tablette au kit" in page
    assert "<b>Installer quand même</b>" in page  # the translation's markup is markup, not text

    # the tablet's picker: a cookie that beats Accept-Language
    c = sec_app.test_client()
    page = c.get("/login", base_url=HTTPS).get_data(as_text=True)
    r = c.post("/language", base_url=HTTPS, data={"lang": "es", "next": "/login?next=/sync", "csrf_token": _csrf(page)})
    assert r.status_code == 303 and r.headers["Location"].endswith("/login?next=/sync")
    cookie = r.headers["Set-Cookie"]
    assert "fieldkit_lang=es" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    page = c.get("/login", base_url=HTTPS, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert _lang_of(page) == ("es", "ltr") and "Iniciar sesión" in page


def test_a_persons_language_follows_them_and_an_unknown_one_is_refused(sec_app, kit, role_clients):
    from fieldkit.store import accounts
    clin = role_clients["clinician"]
    r = clin.open("POST", "/language", data={"lang": "ar", "next": "/device"})
    assert r.status_code == 303
    assert accounts.language_of(kit.store, "u-clinician") == "ar"
    assert accounts.get_user(kit.store, "u-clinician")["language"] == "ar"
    # another tablet: no cookie, a browser asking for French; the person's choice wins
    other = type(clin)(sec_app, kit, "clinician")
    page = other.client.get("/device", base_url=HTTPS, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert _lang_of(page) == ("ar", "rtl") and "الجهاز" in page
    # and the audit trail says who changed it
    events = accounts.audit_events(kit.store)
    assert any(e["action"] == "user.language" and e["object"] == "u-clinician" for e in events)

    # an unknown language is refused clearly and changes nothing (same kit: one set-up)
    clin = role_clients["triage"]
    before = accounts.language_of(kit.store, "u-triage")
    r = clin.open("POST", "/language", data={"lang": "klingon", "next": "/"})
    assert r.status_code == 400
    assert "unknown language" in r.get_json()["error"] and "en, fr, es, ar" in r.get_json()["error"]
    assert "Set-Cookie" not in r.headers or "fieldkit_lang" not in r.headers["Set-Cookie"]
    assert accounts.language_of(kit.store, "u-triage") == before
    # without the CSRF token the picker is refused (it changes an account)
    r = clin.open("POST", "/language", data={"lang": "fr"}, csrf=False)
    assert r.status_code == 403


def test_picker_fuzz_gives_a_redirect_home_or_a_clear_400(sec_app):
    c = sec_app.test_client()
    token = _csrf(c.get("/login", base_url=HTTPS).get_data(as_text=True))
    rng = random.Random(16)
    alphabet = string.printable + "éع\u202e\x00"
    for _ in range(150):
        lang = rng.choice(["fr", "es", "ar", "en", ""]) if rng.random() < 0.3 else \
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        nxt = rng.choice(["/", "//evil.example", "https://evil.example/", "/sync", "\\\\x", ""]) + \
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        r = c.post("/language", base_url=HTTPS, data={"lang": lang, "next": nxt, "csrf_token": token})
        assert r.status_code in (303, 400), (lang, nxt, r.status_code)
        if r.status_code == 303:
            assert lang in i18n.LANGUAGES
            loc = r.headers["Location"]
            assert loc.startswith("/") and not loc.startswith("//") or loc.startswith(HTTPS + "/"), loc


def test_server_side_dates_follow_the_page_language_with_latin_digits_and_the_offset(sec_app):
    at = 1_000_000_000  # 2001-09-09 01:46:40 UTC
    for lang, month in [("fr", "sept."), ("es", "sept"), ("en", "Sep")]:
        with sec_app.test_request_context("/", base_url=HTTPS, headers={"Accept-Language": lang}):
            text = i18n.fmt_datetime(at)
            assert month in text and "2001" in text and re.search(r" [+-]\d{4}$", text), text
    with sec_app.test_request_context("/", base_url=HTTPS, headers={"Accept-Language": "ar"}):
        text = i18n.fmt_datetime(at)
        assert "2001" in text and not re.search("[\u0660-\u0669]", text), text  # no Arabic-Indic digits
    assert i18n.fmt_datetime(None) == "" and i18n.fmt_datetime(0) == ""


def test_plurals_follow_each_languages_rules(sec_app):
    from flask_babel import ngettext
    one, many = "%(num)s patient registered.", "%(num)s patients registered."
    expected = {"fr": {1: "1 patient enregistré.", 0: "0 patient enregistré.", 2: "2 patients enregistrés."},
                "es": {1: "1 paciente registrado.", 3: "3 pacientes registrados."},
                "ar": {1: "مريض واحد مسجَّل (1).", 5: "5 مرضى مسجَّلون.", 12: "12 مرضى مسجَّلون."}}
    for lang, cases in expected.items():
        with sec_app.test_request_context("/", base_url=HTTPS, headers={"Accept-Language": lang}):
            for n, text in cases.items():
                assert ngettext(one, many, n) == text, (lang, n)

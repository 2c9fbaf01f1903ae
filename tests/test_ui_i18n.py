"""The triage UI in French, Spanish and Arabic, in a real Chromium against a real
`fieldkit serve`: every translated page shows its words (server-side and from the scripts'
catalogue), a language picked on a tablet or by a person sticks across pages, an unknown
Accept-Language gives English, Arabic is right-to-left with a mirrored header, and axe-core
finds no serious or critical problem in any of the languages."""

from __future__ import annotations

import pytest

import time

from fixtures.ui import ADMIN_PASSWORD, ADMIN_USER, LANDSCAPE, axe_violations, new_context, shot, sign_in, start_ui_kit
from kitproc import run_cli, set_config

pytestmark = pytest.mark.timeout(400)

TAG = "I-18"
PERSON, PERSON_PASSWORD = "tri-lang", "triage password 18"
WAIT = 20000

# per language: the words a reader checks on each page (server-rendered, then script-made)
WORDS = {
    "fr": {"captures": "Acquisitions", "red": "Immédiat", "live": "ouverts sur", "sync": "confirmés",
           "handover": "Liste de transmission", "incident": "Bilan de l'incident", "sheet": "Fiche de transmission",
           "state": "en direct", "device": "Appareil"},
    "es": {"captures": "Capturas", "red": "Inmediato", "live": "abiertos de", "sync": "confirmados",
           "handover": "Lista de traspaso", "incident": "Resumen del incidente", "sheet": "Hoja de traspaso",
           "state": "en directo", "device": "Equipo"},
    "ar": {"captures": "اللقطات", "red": "فوري", "live": "مفتوحة من", "sync": "مؤكَّد",
           "handover": "قائمة التسليم", "incident": "ملخص الحادث", "sheet": "ورقة التسليم",
           "state": "مباشر", "device": "الجهاز"},
}


# the board and New patient: words a reader checks, and English that must not be left in them
BOARD = {
    "fr": {"search": "Étiquette, identifiant ou nom", "more": "Afficher plus", "caps": "1 acquisition",
           "fnd": "1 résultat", "since": "trié il y a", "fluid": "épanchement",
           "argues": "Le résultat suggère Immédiat : épanchement", "place": "Zone rouge", "iv": "Garrot: left thigh",
           "delayed": "Différé", "new": "Nouveau patient", "walk": "Le patient peut-il marcher ?", "yes": "Oui",
           "proposes": "START propose : Mineur", "registered": "Enregistré :", "next": "Patient suivant"},
    "es": {"search": "Etiqueta, ID o nombre", "more": "Mostrar más", "caps": "1 captura", "fnd": "1 hallazgo",
           "since": "triado hace", "fluid": "líquido libre", "argues": "El hallazgo sugiere Inmediato: líquido libre",
           "place": "Área roja", "iv": "Torniquete: left thigh", "delayed": "Diferido", "new": "Nuevo paciente",
           "walk": "¿Puede caminar el paciente?", "yes": "Sí", "proposes": "START propone: Leve",
           "registered": "Registrado:", "next": "Siguiente paciente"},
    "ar": {"search": "البطاقة أو المعرّف أو الاسم", "more": "عرض المزيد", "caps": "لقطة واحدة", "fnd": "نتيجة واحدة",
           "since": "فُرِز منذ", "fluid": "سائل حر", "argues": "النتيجة ترجّح فوري: سائل حر", "place": "المنطقة الحمراء",
           "iv": "عاصبة: left thigh", "delayed": "مؤجَّل", "new": "مريض جديد", "walk": "هل يستطيع المريض المشي؟",
           "yes": "نعم", "proposes": "يقترح START: طفيف", "registered": "سُجِّل:", "next": "المريض التالي"},
}
BOARD_ENGLISH = ("Show more", "triaged", "capture", "free fluid", "Finding suggests", "Red area", "Tourniquet",
                 "New patient", "Handover list", "Unassigned", "Find tag")
NEW_ENGLISH = ("New patient", "Can the patient walk", "START proposes", "Triage tag number", "Add and register",
               "Registered", "Next patient", "Category (confirm")


@pytest.fixture(scope="module")
def ui_kit(tmp_path_factory):
    """A kit whose board has more patients than a page (10): eleven Minor ones, a Delayed one
    with free fluid found on its capture, an Immediate one in the red area with a tourniquet."""
    def board_of_a_few(data_dir):
        from fieldkit.inference import findings as inference_findings
        from fieldkit.kit import open_kit
        from fieldkit.store import care
        from fieldkit.store import instances as catalogue
        from fieldkit.store import patients as pstore
        from fixtures.board import grow
        set_config(data_dir, ui__board_page_size=10)
        k = open_kit(data_dir)
        try:
            for i in range(11):
                pstore.create_patient(k.store, tag=f"M-{i:02d}")
                pstore.set_triage(k.store, f"M-{i:02d}", "green", by="medic-a")
            grow(k.store, ["FF-1"], 1)
            pstore.set_triage(k.store, "FF-1", "yellow", by="medic-a")
            uid = catalogue.instance_rows(k.store, patient_id="FF-1")[0]["sop_instance_uid"]
            inference_findings.replace(k.store, uid, [{
                "id": "f-ff1", "sop_instance_uid": uid, "patient_id": "FF-1", "model": "m", "model_sha256": "0" * 64,
                "model_version": "1", "task": "fast", "assessable": True, "reason": "",
                "result": {"fluid_present": True}, "overlay": None, "created": time.time()}])
            pstore.create_patient(k.store, tag="RZ-1")
            pstore.set_triage(k.store, "RZ-1", "red", by="medic-a")
            care.set_zone(k.store, "RZ-1", "Red area", ["Red area"], by="medic-a")
            care.add_intervention(k.store, "RZ-1", "tourniquet", "left thigh", by="medic-a")
        finally:
            k.close()

    kit = start_ui_kit(tmp_path_factory.mktemp("ui-i18n"), before_serve=board_of_a_few)
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def patient_id(ui_kit):
    r = ui_kit.post("/api/v1/ui/patients", json={"tag": TAG, "triage": "red"},
                    headers=ui_kit.auth("clinician"))
    assert r.status_code == 201, r.text
    return r.json()["patient"]["id"]


@pytest.fixture(scope="module")
def person(ui_kit):
    secret = ui_kit.data_dir.parent / ".tri-lang"
    secret.write_text(PERSON_PASSWORD + "\n")
    run_cli("users", "add", PERSON, "--data-dir", ui_kit.data_dir, "--role", "triage", "--password-file", secret)
    return PERSON


def _text_has(page, selector: str, word: str) -> None:
    page.wait_for_function(
        "([s, w]) => { const e = document.querySelector(s); return !!e && e.textContent.includes(w); }",
        arg=[selector, word], timeout=WAIT)


def _lang(page) -> tuple[str, str]:
    return tuple(page.evaluate("() => [document.documentElement.lang, document.documentElement.dir]"))


def _no_bad_axe(page, where: str) -> None:
    bad = axe_violations(page)
    assert not bad, f"{where}: {bad}"


@pytest.mark.parametrize("lang", ["fr", "es", "ar"])
def test_each_translated_page_speaks_the_browsers_language(ui_browser, ui_kit, patient_id, lang):
    w = WORDS[lang]
    ctx = new_context(ui_browser, ui_kit)
    ctx.set_extra_http_headers({"Accept-Language": f"{lang};q=1, en;q=0.5"})
    page = ctx.new_page()
    try:
        page.goto("/login")
        assert _lang(page) == (lang, "rtl" if lang == "ar" else "ltr")
        _no_bad_axe(page, f"{lang} sign-in")
        sign_in(page, next_path="/device")
        page.goto(f"/patients/{patient_id}")
        _text_has(page, "#h-captures", w["captures"])
        _text_has(page, "#p-cat", w["red"])  # the scripts' catalogue: the category pill
        _text_has(page, "#live-state", w["state"])
        _no_bad_axe(page, f"{lang} patient")
        if lang == "ar":
            shot(page, "rtl-patient")
        page.goto("/device")
        _text_has(page, "h1", w["device"])
        _text_has(page, "#dv-live", w["live"])
        _no_bad_axe(page, f"{lang} device")
        page.goto("/sync")
        _text_has(page, "#s-counts", w["sync"])
        _no_bad_axe(page, f"{lang} sync")
        if lang == "ar":
            shot(page, "rtl-sync")
        page.goto("/handover")
        _text_has(page, "h1", w["handover"])
        _text_has(page, "tr.h-red", w["red"])  # a computed category, translated where shown
        _no_bad_axe(page, f"{lang} handover list")
        page.goto("/incident")
        _text_has(page, "h1", w["incident"])
        _no_bad_axe(page, f"{lang} incident")
        page.goto(f"/patients/{patient_id}/handover")
        _text_has(page, "h1", w["sheet"])
        _no_bad_axe(page, f"{lang} handover sheet")
        assert _lang(page)[0] == lang
    finally:
        ctx.close()


def test_an_unknown_accept_language_gives_english(ui_browser, ui_kit):
    ctx = new_context(ui_browser, ui_kit)
    ctx.set_extra_http_headers({"Accept-Language": "tlh, x-klingon;q=0.9, zz-ZZ;q=0.8"})
    page = ctx.new_page()
    try:
        page.goto("/login")
        assert _lang(page) == ("en", "ltr")
        assert page.inner_text("h1") == "Sign in"
        sign_in(page, next_path="/device")
        _text_has(page, "#dv-live", "open of")
        _text_has(page, "#live-state", "live")
    finally:
        ctx.close()


def test_a_language_picked_on_a_tablet_sticks_across_pages(ui_browser, ui_kit):
    ctx = new_context(ui_browser, ui_kit)
    ctx.set_extra_http_headers({"Accept-Language": "en"})
    page = ctx.new_page()
    try:
        page.goto("/login")
        page.select_option("#lang-select", "es")
        page.click("#lang-form button[type=submit]")
        page.wait_for_function("() => document.documentElement.lang === 'es'", timeout=WAIT)
        assert page.inner_text("h1") == "Iniciar sesión"
        sign_in(page, ADMIN_USER, ADMIN_PASSWORD, next_path="/sync")  # the admin chose no language
        for path, selector, word in [("/sync", "h1", "Sincronización con el hospital"),
                                     ("/device", "#dv-live", "abiertos de"),
                                     ("/patients/new", "h1", "No permitido para su rol")]:
            page.goto(path)
            assert _lang(page) == ("es", "ltr"), path
            _text_has(page, selector, word)
        _no_bad_axe(page, "es refusal page")
        _text_has(page, "header nav", "Tablero")
    finally:
        ctx.close()


def test_a_persons_language_follows_them_to_another_tablet(ui_browser, ui_kit, person):
    first = new_context(ui_browser, ui_kit)
    page = first.new_page()
    try:
        sign_in(page, PERSON, PERSON_PASSWORD, next_path="/device")
        page.select_option("#lang-select", "fr")
        page.click("#lang-form button[type=submit]")
        page.wait_for_function("() => document.documentElement.lang === 'fr'", timeout=WAIT)
        assert "/device" in page.url  # back where the choice was made
        _text_has(page, "#dv-live", "ouverts sur")
    finally:
        first.close()
    second = new_context(ui_browser, ui_kit)  # another tablet, its browser in Spanish
    second.set_extra_http_headers({"Accept-Language": "es"})
    page = second.new_page()
    try:
        page.goto("/login")
        assert _lang(page)[0] == "es"  # nobody signed in yet: the browser's language
        sign_in(page, PERSON, PERSON_PASSWORD, next_path="/sync")
        for path in ("/sync", "/device"):
            page.goto(path)
            assert _lang(page)[0] == "fr", path
        _text_has(page, "#dv-live", "ouverts sur")
    finally:
        second.close()


def _boxes(page) -> dict:
    return page.evaluate("""() => {
        const box = (s) => { const r = document.querySelector(s).getBoundingClientRect(); return [r.left, r.right]; };
        return { nav: box('header.top nav'), tools: box('header.top .tools'), board: box("header.top a.nav[href='/']"),
                 sync: box("header.top a.nav[href='/sync']"), width: document.documentElement.clientWidth };
    }""")


def test_arabic_is_right_to_left_and_the_header_mirrors(ui_browser, ui_kit):
    boxes = {}
    for lang in ("en", "ar"):
        ctx = new_context(ui_browser, ui_kit, viewport=LANDSCAPE)  # the header on one line
        ctx.set_extra_http_headers({"Accept-Language": lang})
        page = ctx.new_page()
        try:
            sign_in(page, next_path="/device")
            page.goto("/device")
            _text_has(page, "#dv-live", WORDS["ar"]["live"] if lang == "ar" else "open of")
            assert _lang(page) == (lang, "rtl" if lang == "ar" else "ltr")
            boxes[lang] = _boxes(page)
            if lang == "ar":
                shot(page, "rtl-device")
                # numbers stay readable: Latin digits in the kit's figures
                assert any(c.isdigit() and c.isascii() for c in page.inner_text("#dv-live"))
        finally:
            ctx.close()
    en, ar = boxes["en"], boxes["ar"]
    # left to right: the navigation starts at the left, the tools end at the right ...
    assert en["nav"][0] < en["tools"][0] and en["board"][0] < en["sync"][0]
    # ... right to left: the navigation starts at the right, the tools sit at the left
    assert ar["nav"][1] > ar["tools"][1] and ar["board"][0] > ar["sync"][0]
    assert abs(ar["nav"][1] - ar["width"]) < 40 and ar["tools"][0] < 40


def _no_english(page, selectors: str, english: tuple[str, ...], where: str) -> None:
    text = "\n".join(page.eval_on_selector_all(selectors, "els => els.map((e) => e.innerText)"))
    left = [w for w in english if w.lower() in text.lower()]
    assert not left, f"{where}: English left {left} in {text!r}"


def _card(lang_page, pid: str, part: str, word: str) -> None:
    _text_has(lang_page, f"li.card[data-patient-id='{pid}'] {part}", word)


@pytest.mark.parametrize("lang", ["fr", "es", "ar"])
def test_the_board_and_new_patient_speak_the_browsers_language(ui_browser, ui_kit, lang):
    w, cat = BOARD[lang], WORDS[lang]
    ctx = new_context(ui_browser, ui_kit)
    ctx.set_extra_http_headers({"Accept-Language": lang})
    page = ctx.new_page()
    try:
        sign_in(page, next_path="/")
        assert _lang(page) == (lang, "rtl" if lang == "ar" else "ltr")
        _text_has(page, "#counts", cat["red"])
        page.wait_for_function("() => document.querySelector('[data-count=yellow]').textContent === '1'", timeout=WAIT)
        assert page.get_attribute("#board-search", "placeholder") == w["search"]
        # the card lines, made by the script from the kit's data and codes
        _card(page, "FF-1", ".caps", w["caps"])
        _card(page, "FF-1", ".fnd", w["fnd"])
        _card(page, "FF-1", ".since", w["since"])
        _card(page, "FF-1", ".fwords", w["fluid"])
        _card(page, "FF-1", ".argues", w["argues"])
        _card(page, "RZ-1", ".place", w["place"])
        _card(page, "RZ-1", ".place", w["iv"])  # the kind translated, what was typed kept
        _text_has(page, "#board-more", w["more"])
        # the page's own words (the disk banner says what the kit's API says, still English)
        _no_english(page, "#counts, .board-tools, #board, .board-more", BOARD_ENGLISH, f"{lang} board")
        _no_bad_axe(page, f"{lang} board")
        if lang == "ar":
            shot(page, "rtl-board")
            boxes = page.evaluate("""() => Object.fromEntries(['red', 'yellow'].map((c) => [c,
                document.querySelector(`[data-filter=${c}]`).getBoundingClientRect().left]))""")
            assert boxes["red"] > boxes["yellow"], boxes  # the counts run right to left
            assert page.evaluate("() => getComputedStyle(document.getElementById('board')).direction") == "rtl"
        page.click("#board-more")  # the next page
        page.wait_for_function("() => document.querySelectorAll('#board li.card').length > 10", timeout=WAIT)
        page.click("[data-filter=yellow]")  # the filter: the Delayed patient alone
        page.wait_for_function("() => [...document.querySelectorAll('#board li.card')].map(e => e.dataset.patientId)"
                               ".join() === 'FF-1'", timeout=WAIT)
        _text_has(page, "[data-filter=yellow]", w["delayed"])

        page.goto("/patients/new")
        _text_has(page, "h1", w["new"])
        _text_has(page, "#q-walking", w["walk"])
        page.click(".q[data-q=walking] .yn-b[data-v=yes]")
        _text_has(page, "#proposal", w["proposes"])
        assert page.inner_text(".q[data-q=walking] .yn-b[data-v=yes]") == w["yes"]
        _no_bad_axe(page, f"{lang} new patient")
        page.fill("#tag", f"NP-{lang}")
        page.click("#create-next")
        _text_has(page, "#last-registered", w["registered"])
        _text_has(page, "#last-registered", w["next"])
        _no_english(page, "main h1, #new-patient, #last-registered", NEW_ENGLISH, f"{lang} new patient")
        if lang == "ar":
            shot(page, "rtl-new-patient")
    finally:
        ctx.close()

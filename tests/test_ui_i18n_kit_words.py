"""The kit's own sentences on the tablet in French and Arabic, in a real Chromium against a
real `fieldkit serve`: a refusal of the New-patient form, the 403 page, the disk banner, a
model's reason for no assessment behind its tap, and the handover list's zone,
intervention, disposition and finding words. (The same pages in English keep the kit's
English words: tests/test_ui*.py.)"""

from __future__ import annotations

import time

import pytest

from fixtures.ui import ADMIN_PASSWORD, ADMIN_USER, new_context, sign_in, start_ui_kit

pytestmark = pytest.mark.timeout(300)

WAIT = 20000
# per language: what a reader sees where the kit said it in English
SAID = {
    "fr": {"exists": "un patient avec l'étiquette AB-1 existe déjà", "role": "votre rôle (admin) ne permet pas ceci",
           "disk": "espace disque faible", "reason": "pas une vue pulmonaire de qualité exploitable",
           "counts": "incertaine 28/30, autre vue 2/30",
           "zone": "Zone rouge", "iv": "Garrot : left thigh", "disp": "parti en Amb 3 vers St X",
           "fluid": "FAST : épanchement"},
    "ar": {"exists": "يوجد بالفعل مريض بالبطاقة AB-1", "role": "لا يسمح دورك (admin) بهذا",
           "disk": "مساحة القرص منخفضة", "reason": "ليس منظرًا رئويًا بجودة صالحة",
           "counts": "غير مؤكد 28/30, منظر آخر 2/30",
           "zone": "المنطقة الحمراء", "iv": "عاصبة: left thigh", "disp": "غادر في Amb 3 إلى St X",
           "fluid": "FAST: سائل حر"},
}
ENGLISH = ("already exists", "may not do this", "disk space is low", "not a lung view", "Red area", "Tourniquet",
           "left by", "free fluid")


@pytest.fixture(scope="module")
def ui_kit(tmp_path_factory):
    """A kit whose disk is 'low' (the warning mark above any real disk), a patient whose
    capture the lung model could not assess, and one in the red area with free fluid,
    treated and leaving."""
    def patients(data_dir):
        from fieldkit.cli.sync import _load_values, _save_values
        from fieldkit.inference import findings as inference_findings
        from fieldkit.inference.runner import _why_not
        from fieldkit.kit import open_kit
        from fieldkit.store import care
        from fieldkit.store import instances as catalogue
        from fieldkit.store import patients as pstore
        from fixtures.board import grow
        values = _load_values(data_dir)
        values.update({"store.warn_free_mb": 10 ** 9, "store.refuse_free_mb": 0,
                       "inference.enabled": False})  # the findings are the ones made here
        _save_values(data_dir, values)
        k = open_kit(data_dir)
        try:
            grow(k.store, ["AB-1", "FF-1"], 1)
            pstore.set_triage(k.store, "AB-1", "yellow", by="medic-a")
            for pid, ok in (("AB-1", False), ("FF-1", True)):
                uid = catalogue.instance_rows(k.store, patient_id=pid)[0]["sop_instance_uid"]
                task = "fast" if ok else "lung"
                inference_findings.replace(k.store, uid, [{
                    "id": f"f-{pid}", "sop_instance_uid": uid, "patient_id": pid, "model": "m", "model_sha256": "0" * 64,
                    "model_version": "1", "task": task, "assessable": ok,
                    "reason": "" if ok else _why_not("lung", {"uncertain": 28, "other": 2}, 30, 0.6),
                    "result": {"fluid_present": True} if ok else {}, "overlay": None, "created": time.time()}])
            pstore.set_triage(k.store, "FF-1", "red", by="medic-a")
            care.set_zone(k.store, "FF-1", "Red area", ["Red area"], by="medic-a")
            care.add_intervention(k.store, "FF-1", "tourniquet", "left thigh", by="medic-a")
            care.set_disposition(k.store, "FF-1", "left", destination="St X", vehicle="Amb 3", by="medic-a")
        finally:
            k.close()

    kit = start_ui_kit(tmp_path_factory.mktemp("ui-kit-words"), before_serve=patients)
    yield kit
    kit.stop()


def _text_has(page, selector: str, word: str) -> None:
    from playwright.sync_api import TimeoutError as Timeout
    try:
        page.wait_for_function(
            "([s, w]) => { const e = document.querySelector(s); return !!e && e.textContent.includes(w); }",
            arg=[selector, word], timeout=WAIT)
    except Timeout:
        shown = page.eval_on_selector(selector, "e => e.textContent") if page.query_selector(selector) else None
        raise AssertionError(f"{word!r} not in {selector} of {page.url}: {shown!r}") from None


def _no_english(text: str, where: str) -> None:
    left = [w for w in ENGLISH if w in text]
    assert not left, f"{where}: English left {left} in {text!r}"


@pytest.mark.parametrize("lang", ["fr", "ar"])
def test_the_kits_own_sentences_speak_the_tablets_language(ui_browser, ui_kit, lang):
    said = SAID[lang]
    ctx = new_context(ui_browser, ui_kit)
    ctx.set_extra_http_headers({"Accept-Language": lang})
    page = ctx.new_page()
    try:
        sign_in(page, next_path="/")
        _text_has(page, "#disk-banner", said["disk"])  # the board's banner: the kit's disk message
        assert page.is_visible("#disk-banner")
        _no_english(page.inner_text("#disk-banner"), f"{lang} disk banner")

        page.goto("/patients/new")  # a refusal of the form, as the kit gave it
        page.fill("#tag", "AB-1")
        page.check("input[name=triage][value=green]")
        page.click("#create")
        _text_has(page, "#form-error", said["exists"])
        _no_english(page.inner_text("#form-error"), f"{lang} refusal")

        page.goto("/patients/AB-1")  # the model's reason, behind "Why no assessment"
        _text_has(page, "li[data-task=lung] .f-reason", said["reason"])
        page.click("li[data-task=lung] .f-why summary")
        page.wait_for_selector("li[data-task=lung] .f-reason", state="visible", timeout=WAIT)
        reason = page.text_content("li[data-task=lung] .f-reason")
        assert said["counts"] in reason and "p>=0.6" in reason  # the figures as the model gave them
        _no_english(reason, f"{lang} reason")

        page.goto("/handover")  # the kit's words in the handover list
        row = "tr.h-red"
        for key in ("zone", "iv", "disp", "fluid"):
            _text_has(page, row, said[key])
        _no_english(page.inner_text(row), f"{lang} handover row")

        page.goto("/patients/FF-1/handover")  # and on the patient's handover sheet
        for key in ("zone", "iv", "disp", "fluid"):
            _text_has(page, "#sheet", said[key])
        _no_english(page.inner_text("#sheet"), f"{lang} handover sheet")

        page.goto("/incident")  # the zone a patient is in, by its built-in name
        _text_has(page, "#incident-zone", said["zone"])
    finally:
        ctx.close()

    admin = new_context(ui_browser, ui_kit)  # a refusal page: the admin may not register patients
    admin.set_extra_http_headers({"Accept-Language": lang})
    page = admin.new_page()
    try:
        sign_in(page, ADMIN_USER, ADMIN_PASSWORD, next_path="/sync")
        resp = page.goto("/patients/new")
        assert resp.status == 403
        _text_has(page, "#error-message", said["role"])
    finally:
        admin.close()


def test_english_stays_english_for_the_api(ui_kit):
    """A machine client (no language asked) reads the kit's English, word for word."""
    r = ui_kit.post("/api/v1/ui/patients", json={"tag": "AB-1", "triage": "green"}, headers=ui_kit.auth("clinician"))
    assert r.status_code == 400 and r.json()["error"] == "a patient with tag AB-1 already exists"
    r = ui_kit.post("/api/v1/ui/patients", json={"tag": "AB-1", "triage": "green"},
                    headers=ui_kit.auth("clinician") | {"Accept-Language": "es"})
    assert r.status_code == 400 and r.json()["error"] == "ya existe un paciente con la etiqueta AB-1"
    status = ui_kit.get("/api/v1/status", headers=ui_kit.auth("clinician") | {"Accept-Language": "es"}).json()
    assert status["disk"]["level"] == "low" and status["disk"]["message"].startswith("poco espacio en disco")

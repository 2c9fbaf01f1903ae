"""axe-core on every page of the tablet UI in every language, at every viewport, by day and
by night, in a real Chromium against one real `fieldkit serve`: no serious or critical
violation anywhere, and a right-to-left screenshot of each page in Arabic under
test-artifacts/. The tablet-joining page has no night mode (it is shown once, to join a
tablet): it is checked once per language, the others (the sign-in page in the tablet's
remembered mode) by day and by night: 4 languages x (10 x 2 + 1) pages x 3 viewports =
252 checks.

Fast on purpose: one kit, one browser and one sign-in for the module, one context per
language and mode, and each page loaded once and checked at the three sizes by resizing
the viewport (the page's own layout follows the resize, as on a tablet turned around)."""

from __future__ import annotations

import time

import pytest

from fixtures.ui import axe_violations, new_context, shot, sign_in, start_ui_kit
from kitproc import set_config

pytestmark = pytest.mark.timeout(400)

WAIT = 20000
VIEWPORTS = ({"width": 1024, "height": 768}, {"width": 800, "height": 1280}, {"width": 390, "height": 844})
LANGS = ("en", "fr", "es", "ar")
MODES = ("day", "night")
# page name -> (path, what shows that its content is there)
PAGES = {
    "sign-in": ("/login", "!!document.getElementById('username')"),
    "board": ("/", "document.querySelectorAll('#board li.card').length >= 2"),
    "new-patient": ("/patients/new", "!!document.querySelector('#q-walking') && !!document.querySelector('#tag')"),
    "patient": ("/patients/FF-1", "document.getElementById('p-title').textContent.includes('FF-1')"
                " && !!document.querySelector('#thumbs button.move')"),
    # the scan page: assigning a capture, its patient found by tag (typed or scanned)
    "scan": ("/patients/FF-1", "document.getElementById('assign-dialog').open"),
    "sync": ("/sync", "document.getElementById('s-counts').textContent.trim() !== ''"),
    "device": ("/device", "document.getElementById('dv-live').textContent.trim() !== '–'"),
    "handover": ("/handover", "!!document.querySelector('tr.h-red')"),
    "handover-sheet": ("/patients/RZ-1/handover", "!!document.querySelector('#sheet dl dt')"),
    "incident": ("/incident", "!!document.querySelector('#incident-zone')"),
    "admin": ("/onboarding", "!!document.querySelector('h1') && !!document.querySelector('img')"),  # joining tablets
}
NO_NIGHT = ("admin",)


@pytest.fixture(scope="module")
def ui_kit(tmp_path_factory):
    """A board with a Delayed patient whose capture got a finding and an abstention, and an
    Immediate one in the red area with a tourniquet, leaving by ambulance."""
    def patients(data_dir):
        from fieldkit.inference import findings as inference_findings
        from fieldkit.kit import open_kit
        from fieldkit.store import care
        from fieldkit.store import instances as catalogue
        from fieldkit.store import patients as pstore
        from fixtures.board import grow
        set_config(data_dir, inference__enabled=False)  # the findings are the ones made here
        k = open_kit(data_dir)
        try:
            grow(k.store, ["FF-1"], 2)
            pstore.set_triage(k.store, "FF-1", "yellow", by="medic-a")
            uids = [r["sop_instance_uid"] for r in catalogue.instance_rows(k.store, patient_id="FF-1")]
            for n, (uid, ok) in enumerate(zip(uids, (True, False))):
                inference_findings.replace(k.store, uid, [{
                    "id": f"f-{n}", "sop_instance_uid": uid, "patient_id": "FF-1", "model": "m",
                    "model_sha256": "0" * 64, "model_version": "1", "task": "fast", "assessable": ok,
                    "reason": "" if ok else "no verified view/quality gate model is loaded",
                    "result": {"fluid_present": True, "frames_with_fluid": 1} if ok else {}, "overlay": None, "created": time.time()}])
            pstore.create_patient(k.store, tag="RZ-1")
            pstore.set_triage(k.store, "RZ-1", "red", by="medic-a")
            care.set_zone(k.store, "RZ-1", "Red area", ["Red area"], by="medic-a")
            care.add_intervention(k.store, "RZ-1", "tourniquet", "left thigh", by="medic-a")
            care.set_disposition(k.store, "RZ-1", "left", destination="St X", vehicle="Amb 3", by="medic-a")
        finally:
            k.close()

    kit = start_ui_kit(tmp_path_factory.mktemp("ui-axe"), before_serve=patients)
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def signed_in(ui_browser, ui_kit):
    """The clinician's signed-in session (cookies), one sign-in shared by every context."""
    ctx = new_context(ui_browser, ui_kit)
    try:
        page = ctx.new_page()
        sign_in(page, next_path="/device")
        return ctx.storage_state()
    finally:
        ctx.close()


def _open(page, name: str) -> None:
    from playwright.sync_api import TimeoutError as Timeout
    try:
        _load(page, name)
    except Timeout:
        raise AssertionError(f"{name} ({page.url}) did not show its content: {page.inner_text('body')[:500]!r}") from None


def _load(page, name: str) -> None:
    path, ready = PAGES[name]
    if name != "scan" or "/patients/FF-1" not in page.url:
        page.goto(path)
    if name == "scan":
        page.wait_for_function(f"() => {PAGES['patient'][1]}", timeout=WAIT)
        page.click("#thumbs button.move >> nth=0")
    page.wait_for_function(f"() => {ready}", timeout=WAIT)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lang", LANGS)
def test_no_serious_axe_violation_on_any_page_size_or_mode(ui_browser, ui_kit, signed_in, lang, mode):
    ctx = ui_browser.new_context(base_url=ui_kit.url, viewport=VIEWPORTS[0], service_workers="allow", has_touch=True,
                                 storage_state=signed_in)
    ctx.set_extra_http_headers({"Accept-Language": lang})
    # the tablet's remembered mode, there before the page's first paint (static/js/theme.js)
    ctx.add_init_script(f"try {{ localStorage.setItem('fieldkit.theme', '{mode}'); }} catch (e) {{}}")
    page = ctx.new_page()
    bad, checked = {}, 0
    try:
        pages = [name for name in PAGES if mode == "day" or name not in NO_NIGHT]
        for name in pages:
            page.set_viewport_size(VIEWPORTS[0])
            _open(page, name)
            assert page.evaluate("() => [document.documentElement.lang, document.documentElement.dataset.theme]") \
                == [lang, None if name in NO_NIGHT else mode], name
            for vp in VIEWPORTS:
                page.set_viewport_size(vp)
                found = axe_violations(page)
                checked += 1
                if found:
                    bad[f"{name} {vp['width']}x{vp['height']}"] = found
                if lang == "ar" and mode == "day":
                    shot(page, f"rtl-{name}-{vp['width']}x{vp['height']}")
    finally:
        ctx.close()
    assert checked == len(pages) * len(VIEWPORTS)
    assert not bad, f"{lang} {mode}: {bad}"

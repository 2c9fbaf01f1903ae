"""Time, place and movement in a real Chromium against a real `fieldkit serve`, signed in
as the triage role:

- on the patient page, a zone, a tourniquet with the time it went on and a departure by
  ambulance are recorded; the page lists them with who did it, and the board card shows
  them compactly ("Red area · left by Ambulance 3 to St X · Tourniquet: left thigh 14:32");
- a patient triaged Immediate 20 minutes ago (interval 15 min) is flagged overdue on the
  board, one triaged just now is not;
- a Delayed patient with free fluid found shows it in words and "Finding suggests Immediate".
"""

from __future__ import annotations

import time

import pytest

from fixtures.ui import chromium, TABLET, shot, sign_in, start_ui_kit

pytestmark = pytest.mark.timeout(300)
TRIAGE_USER, TRIAGE_SECRET = "test-triage", "test secret for triage"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    def patients_waiting(data_dir):
        from fieldkit.kit import open_kit
        from fieldkit.store import patients as pstore
        k = open_kit(data_dir)
        try:
            for tag in ("OD-1", "OK-1"):
                pstore.create_patient(k.store, tag=tag)
                pstore.set_triage(k.store, tag, "red", by="medic-a")
            # OD-1 was triaged 20 minutes ago (the history as the kit keeps it)
            row = pstore.get_patient(k.store, "OD-1")
            history = [dict(h, at=h["at"] - 20 * 60) for h in row["triage_history"]]
            k.store.write(lambda db: pstore.update_fields(db, "OD-1", {"triage_history": history}))
            # FF-1: Delayed, with free fluid found on a capture of the right upper quadrant
            from fieldkit.inference import findings as inference_findings
            from fieldkit.store import instances as catalogue
            from fixtures.board import grow
            grow(k.store, ["FF-1"], 1)
            pstore.set_triage(k.store, "FF-1", "yellow", by="medic-a")
            uid = catalogue.instance_rows(k.store, patient_id="FF-1")[0]["sop_instance_uid"]
            inference_findings.replace(k.store, uid, [{
                "id": "f-ff1", "sop_instance_uid": uid, "patient_id": "FF-1", "model": "m", "model_sha256": "0" * 64,
                "model_version": "1", "task": "fast", "assessable": True, "reason": "",
                "result": {"fluid_present": True}, "overlay": None, "created": time.time()}])
        finally:
            k.close()

    kit = start_ui_kit(tmp_path_factory.mktemp("care"), before_serve=patients_waiting)
    kit.auth("triage")  # makes the triage account
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def browser(kit):
    with chromium(kit) as b:
        yield b


def _page(browser, kit, path="/"):
    ctx = browser.new_context(base_url=kit.url, viewport=TABLET, service_workers="block", has_touch=True)
    page = ctx.new_page()
    sign_in(page, TRIAGE_USER, TRIAGE_SECRET, next_path=path)
    return ctx, page


def test_triage_records_place_and_movement_and_the_card_shows_it(kit, browser):
    ctx, page = _page(browser, kit, "/patients/OK-1")
    try:
        page.wait_for_function("() => document.querySelectorAll('#c-zone option').length > 2", timeout=20000)
        page.select_option("#c-zone", "Red area")
        page.wait_for_function("() => document.getElementById('movement').textContent.includes('zone: Red area')",
                               timeout=20000)
        page.select_option("#c-kind", "tourniquet")
        page.fill("#c-text", "left thigh")
        page.fill("#c-at", time.strftime("%H:%M", time.localtime(time.time() - 300)))
        page.click("#c-intervention button[type=submit]")
        page.wait_for_function("() => document.getElementById('interventions').textContent.includes('Tourniquet: left thigh')",
                               timeout=20000)
        page.select_option("#c-state", "left")
        page.fill("#c-dest", "St X")
        page.fill("#c-vehicle", "Ambulance 3")
        page.click("#c-disposition button[type=submit]")
        page.wait_for_function("() => document.getElementById('c-disp-now').textContent === 'Now: left by Ambulance 3 to St X'",
                               timeout=20000)
        assert f"by {TRIAGE_USER}" in page.locator("#movement").text_content()
        shot(page, "patient-place-and-care")

        page.goto("/")
        place = page.locator("li.card[data-patient-id='OK-1'] .place")
        page.wait_for_function("el => el.textContent.includes('Tourniquet')", arg=place.element_handle(timeout=20000),
                               timeout=20000)
        text = place.text_content()
        assert text.startswith("Red area · left by Ambulance 3 to St X · Tourniquet: left thigh "), text
    finally:
        ctx.close()


def test_overdue_and_a_finding_that_argues_for_immediate_are_flagged(kit, browser):
    ctx, page = _page(browser, kit)
    try:
        overdue = page.locator("li.card[data-patient-id='OD-1'] .overdue")
        page.wait_for_function("el => el.textContent.startsWith('Re-triage overdue')",
                               arg=overdue.element_handle(timeout=20000), timeout=20000)
        assert page.locator("li.card[data-patient-id='OD-1']").get_attribute("class").count("is-overdue") == 1
        assert page.locator("li.card[data-patient-id='OK-1'] .overdue").is_hidden()
        argues = page.locator("li.card[data-patient-id='FF-1'] .argues")
        page.wait_for_function("el => el.textContent.length > 0", arg=argues.element_handle(timeout=20000), timeout=20000)
        assert argues.text_content() == "▲ Finding suggests Immediate: free fluid"
        assert page.locator("li.card[data-patient-id='FF-1'] .fwords").text_content() == "free fluid"
        shot(page, "board-retriage-overdue")
    finally:
        ctx.close()

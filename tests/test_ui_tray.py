"""Patient context on the tablet, in a real Chromium against a real `fieldkit serve`, with
dcmtk's findscu and storescu as the probes.

- The probe journey: a RED tag-only patient registered through the UI API, picked from the
  kit's worklist by `findscu -W`, a capture stamped from that answer pushed by storescu:
  it lands on the patient's page and card live, "linked by worklist".
- A capture nobody could link appears in the board's tray live (never as a patient), is
  assigned through the UI after a confirmation showing both sides, and undone; unknown
  tags, deceased patients and a capture moved meanwhile are refused with a clear message.
- Merging is only in a patient's menu; merged and undone in Chromium, the red patient never
  leaves the Immediate count and a search by either tag finds the survivor.
- Scan with probe (a probe session) from the patient page; the device page's "Allow" for a
  refused probe; a probe-supplied name shown as such until a clinician confirms it.
Every control used is found by its role and accessible name, as a screen reader would.
"""

from __future__ import annotations

import re

import pydicom
import pytest
from playwright.sync_api import expect
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import need_peer
from fixtures.dcmtk import store_responses, storescu
from fixtures.ui import (chromium, ADMIN_PASSWORD, ADMIN_USER, axe_violations, new_context, shot, sign_in,
                         start_ui_kit)
from fixtures.orthanc import _require_orthanc, dicomweb_plugin, orthanc_binary, start_orthanc
from kitproc import run_cli, set_config, wait_until
from test_sync_serve import _configure as configure_hospital
from test_ui_board_live import api_session
from test_worklist import PROBE_KEYS, findscu

pytestmark = pytest.mark.timeout(300)

KNOWN_PROBES = ["STORESCU", "FINDSCU", "PROBE"]  # let in by the setting; others must be registered


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """A real Orthanc as the hospital, when installed (the probe journey needs it)."""
    if not (orthanc_binary() and dicomweb_plugin()):
        yield None
        return
    handle = start_orthanc(tmp_path_factory.mktemp("hospital"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def kit(tmp_path_factory, hospital):
    def closed_receiver(data_dir):
        set_config(data_dir, dicom__allow_any_ae=False, dicom__allowed_ae_titles=KNOWN_PROBES,
                   patients__merge_undo_seconds=40)
        if hospital is not None:
            configure_hospital(data_dir, hospital.base_url)

    kit = start_ui_kit(tmp_path_factory.mktemp("tray"), before_serve=closed_receiver)
    yield kit
    kit.stop()


@pytest.fixture(scope="module")
def browser(kit):
    need_peer("storescu")
    with chromium(kit) as b:
        yield b


@pytest.fixture(scope="module")
def api(kit):
    return api_session(kit)


@pytest.fixture
def page(browser, kit):
    ctx = new_context(browser, kit)
    pg = ctx.new_page()
    sign_in(pg)
    yield pg
    ctx.close()


def register(api, kit, tag: str, triage: str, **details) -> dict:
    r = api.post(kit.url + "/api/v1/ui/patients", json={"tag": tag, "triage": triage}, timeout=30)
    assert r.status_code == 201, r.text
    if details:
        assert api.post(kit.url + f"/api/v1/ui/patients/{tag}/details", json=details, timeout=30).status_code == 200
    return r.json()["patient"]


def capture(tmp_path, *, patient_id: str, name: str = "PLA", **stamp) -> tuple:
    """examples_ybr_color.dcm (a 30-frame SonoSite cine) as a probe wrote it."""
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = patient_id, name
    for key, value in stamp.items():
        setattr(ds, key, value)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def send(kit, path, aet: str = "STORESCU") -> list[str]:
    return store_responses(storescu(kit.dicom_port, [path], "-xy", aet=aet))


def open_board(page):
    page.goto("/")
    page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'", timeout=15000)
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads


def still_same_document(page) -> bool:
    return page.evaluate("() => window.__sameDocument === true")


def watch_lowest(page, selector: str):
    """Record the lowest number an element shows from now on (a count that must never drop)."""
    page.evaluate("""sel => {
        const el = document.querySelector(sel);
        window.__lowest = Number(el.textContent);
        new MutationObserver(() => { window.__lowest = Math.min(window.__lowest, Number(el.textContent)); })
          .observe(el, { childList: true, characterData: true, subtree: true });
    }""", selector)


def small_controls(page, within: str) -> list[str]:
    """Visible buttons and fields under `within` smaller than 44 px either way (gloves)."""
    return page.evaluate("""sel => [...document.querySelectorAll(sel)].flatMap(root =>
        [...root.querySelectorAll('button, input, select, a')])
        .filter(e => e.offsetParent !== null)
        .map(e => [e.id || e.className || e.tagName, e.getBoundingClientRect()])
        .filter(([n, r]) => r.width < 44 || r.height < 44).map(([n, r]) => `${n} ${Math.round(r.width)}x${Math.round(r.height)}`)""",
                         within)


def test_probe_journey_worklist_capture_lands_live_on_the_red_patient(kit, hospital, api, page, browser, tmp_path):
    need_peer("findscu")
    if hospital is None:
        _require_orthanc()
    red = register(api, kit, "T-501", "red")
    page.goto(f"/patients/{red['id']}")
    page.get_by_text("No captures yet").wait_for()
    page.evaluate("() => { window.__sameDocument = true; }")
    board_ctx = new_context(browser, kit)
    board = board_ctx.new_page()
    sign_in(board)
    open_board(board)
    card = board.locator("li.card[data-patient-id='T-501']")
    assert card.locator(".caps").inner_text() == "0 captures"

    proc, answers = findscu(kit.dicom_port, *PROBE_KEYS, out=tmp_path / "wl", aet="FINDSCU")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    picked = next(a for a in answers if a.PatientID == "T-501")
    assert str(picked.PatientName) == "TAG^T-501"
    assert "RED" in picked.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription
    path, sop = capture(tmp_path, patient_id=picked.PatientID, name=str(picked.PatientName),
                        AccessionNumber=picked.AccessionNumber, IssuerOfPatientID=picked.IssuerOfPatientID)
    assert send(kit, path) == ["Success"]

    thumb = page.locator(f"li.thumb[data-uid='{sop}']")
    thumb.wait_for(timeout=20000)  # live: the page was not reloaded
    assert thumb.locator(".t-linked").inner_text().startswith("linked by worklist")
    assert still_same_document(page)
    board.wait_for_function("() => document.querySelector(\"li.card[data-patient-id='T-501'] .caps\")"
                            ".textContent === '1 capture'", timeout=20000)
    assert still_same_document(board)
    assert board.locator("#tray").is_hidden()  # nothing unassigned: it filed itself
    board_ctx.close()

    # the hospital receives it under the patient's kit ID
    def at_hospital():
        found = hospital.rest("/tools/find", "POST", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop}})
        return found and hospital.rest(f"/instances/{found[0]}/simplified-tags")
    assert wait_until(at_hospital, timeout=90, step=0.5), "the capture never reached the hospital"
    tags = at_hospital()
    assert (tags["PatientID"], tags["AccessionNumber"]) == ("T-501", picked.AccessionNumber)


def test_an_unlinked_capture_waits_in_the_tray_and_is_assigned_then_undone(kit, api, page, tmp_path):
    register(api, kit, "T-502", "red")
    register(api, kit, "T-503", "black")
    open_board(page)
    watch_lowest(page, "[data-count=red]")
    immediate = int(page.locator("[data-count=red]").inner_text())
    assert page.locator("#tray").is_hidden()

    path, sop = capture(tmp_path, patient_id="ANONYMOUS", name="OB^^^^")
    assert send(kit, path) == ["Success"]
    item = page.locator(f"li.tray-item[data-uid='{sop}']")
    item.wait_for(timeout=20000)  # live, no reload
    assert still_same_document(page)
    assert "probe STORESCU" in item.inner_text() and "OB" not in item.inner_text()
    assert page.get_by_role("status").filter(has_text="unassigned capture").inner_text().startswith("1 unassigned capture")
    assert page.locator("[data-count=none]").inner_text() == "0"  # not a "Not triaged" patient
    assert page.locator("li.card").filter(has_text="OB").count() == 0

    # the tray sits above every card, Deceased included
    tray_top = page.locator("#tray").bounding_box()["y"]
    assert all(tray_top < c.bounding_box()["y"] for c in page.locator("li.card").all())

    assign = item.get_by_role("button", name=re.compile(r"^Assign to patient: capture of .* from probe STORESCU$"))
    # reachable from the keyboard, and big enough for a gloved finger
    page.locator("#main").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if assign.evaluate("b => b === document.activeElement"):
            break
    else:
        raise AssertionError("the Assign button cannot be reached with Tab")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Assign capture to a patient")
    dialog.wait_for()
    assert dialog.get_by_role("textbox").evaluate("e => e === document.activeElement")  # ready for the scanner
    assert small_controls(page, "#tray, #assign-dialog") == []
    query = dialog.get_by_role("textbox", name=re.compile("tag number"))
    for typed, words in (("T-999", "No patient has tag T-999"), ("T-503", "recorded as deceased")):
        query.fill(typed)
        query.press("Enter")  # a tag scanner types the tag and Enter
        assert words in dialog.get_by_role("alert").inner_text()
        assert dialog.get_by_role("button", name=re.compile("^Assign to")).is_hidden()
    query.fill("T-502")
    dialog.get_by_role("button", name="Find patient").click()
    confirm = dialog.get_by_role("button", name="Assign to Tag T-502")
    confirm.wait_for()
    # both sides before the move: the capture's image, the patient's tag and colour
    assert dialog.locator("#assign-thumb").evaluate("img => img.complete && img.naturalWidth > 0")
    assert dialog.locator("#assign-cat").inner_text() == "Immediate"
    assert "tri-red" in dialog.locator("#assign-cat").get_attribute("class")
    shot(page, "assign-confirm")
    assert not axe_violations(page)
    confirm.click()
    card = page.locator("li.card[data-patient-id='T-502']")
    page.wait_for_function("() => document.querySelector(\"li.card[data-patient-id='T-502'] .caps\")"
                           ".textContent === '1 capture'", timeout=20000)
    item.wait_for(state="detached", timeout=20000)
    assert page.locator("#tray").is_hidden() and page.locator("#unassigned-banner").is_hidden()
    undo = page.get_by_role("button", name="Undo")
    undo.wait_for()  # (the live stream may tell the board before the tablet hears its own answer)
    assert "assigned to Tag T-502" in page.locator("#undo-bar").inner_text()

    undo.click()  # the capture goes back to the tray, the patient stays
    item.wait_for(timeout=20000)
    assert card.locator(".caps").inner_text() == "0 captures"
    assert int(page.locator("[data-count=red]").inner_text()) == immediate
    assert page.evaluate("() => window.__lowest") == immediate, "the Immediate count dropped"

    # two tablets at once: the one that looks at a stale tray is told, and nothing changes twice
    item.get_by_role("button", name=re.compile("^Assign to patient")).click()
    query.fill("T-502")
    query.press("Enter")
    dialog.get_by_role("button", name="Assign to Tag T-502").wait_for()
    holder = page.evaluate("uid => document.querySelector(`li.tray-item[data-uid='${uid}']`).dataset.from", sop)
    r = api.post(kit.url + f"/api/v1/ui/instances/{sop}/assign", json={"patient": "T-502", "from": holder}, timeout=30)
    assert r.status_code == 200, r.text
    dialog.get_by_role("button", name="Assign to Tag T-502").click()
    assert "already on" in dialog.get_by_role("alert").inner_text() or \
        "moved meanwhile" in dialog.get_by_role("alert").inner_text()
    dialog.get_by_role("button", name="Cancel").click()

    # on the patient's page the capture says how it got there, and can be moved again
    page.goto("/patients/T-502")
    thumb = page.locator(f"li.thumb[data-uid='{sop}']")
    thumb.wait_for()
    assert "assigned by hand" in thumb.inner_text()
    assert thumb.get_by_role("button", name="Move to another patient: capture 1").is_visible()


def test_merge_only_from_the_menu_and_undo_keeps_red_on_the_board(kit, api, page, browser):
    register(api, kit, "T-601", "red")
    register(api, kit, "T-602", "yellow", name="Doe^Jane")
    board_ctx = new_context(browser, kit)
    board = board_ctx.new_page()
    sign_in(board)
    open_board(board)
    watch_lowest(board, "[data-count=red]")
    immediate = int(board.locator("[data-count=red]").inner_text())

    page.goto("/patients/T-601")
    page.get_by_role("heading", name=re.compile("Tag T-601")).wait_for()
    # no merge control on the page itself: only behind the menu, nothing pre-selected
    assert page.get_by_role("button", name=re.compile("Merge")).count() == 0 or \
        not page.get_by_role("button", name=re.compile("Merge")).first.is_visible()
    assert page.locator("select#merge-into").count() == 0
    menu = page.get_by_role("button", name=re.compile("More actions"))
    assert menu.get_attribute("aria-expanded") == "false"
    menu.click()
    assert menu.get_attribute("aria-expanded") == "true"
    page.get_by_role("button", name="Merge another record into this patient…").click()
    dialog = page.get_by_role("dialog", name="Merge another record into this patient")
    query = dialog.get_by_role("textbox", name="Tag number or ID of the other record")
    query.fill("T-601")
    query.press("Enter")
    assert "is this patient" in dialog.get_by_role("alert").inner_text()
    query.fill("T-602")
    query.press("Enter")
    confirm = dialog.get_by_role("button", name="Merge Tag T-602 into Tag T-601")
    confirm.wait_for()
    assert dialog.locator("#merge-src-cat").inner_text() == "Delayed"
    assert dialog.locator("#merge-dst-cat").inner_text() == "Immediate"
    assert dialog.locator("#merge-src-name").inner_text() == "Doe, Jane"  # a person's name, no "^"
    assert "stays Immediate" in dialog.inner_text()
    shot(page, "merge-confirm")
    assert not axe_violations(page)
    confirm.click()
    # the survivor carries both tags
    page.wait_for_function("() => document.getElementById('p-sub').textContent.includes('tag T-602')", timeout=15000)
    page.get_by_role("button", name="Undo merge").wait_for()
    assert "Tag T-602 merged into Tag T-601" in page.locator("#undo-bar").inner_text()

    board.locator("li.card[data-patient-id='T-602']").wait_for(state="detached", timeout=20000)
    search = board.get_by_role("searchbox", name="Find a patient")
    for typed in ("T-601", "T-602", "602", "Jane"):
        search.fill(typed)
        assert [c.get_attribute("data-patient-id") for c in board.locator("li.card").all()] == ["T-601"], typed
    search.fill("")
    assert int(board.locator("[data-count=red]").inner_text()) == immediate

    page.get_by_role("button", name="Undo merge").click()
    board.locator("li.card[data-patient-id='T-602']").wait_for(timeout=20000)
    page.locator("#undo-bar").wait_for(state="hidden")
    page.wait_for_function("() => !document.getElementById('p-sub').textContent.includes('tag T-602')", timeout=15000)
    assert board.locator("li.card[data-patient-id='T-602']").get_attribute("data-triage") == "yellow"
    assert int(board.locator("[data-count=red]").inner_text()) == immediate
    assert board.evaluate("() => window.__lowest") == immediate, "the Immediate count dropped"
    board_ctx.close()


def test_scan_this_patient_with_a_registered_probe(kit, api, page, tmp_path):
    run_cli("probes", "add", "LUMIFY1", "--name", "Lumify tent B", "--data-dir", kit.data_dir)
    register(api, kit, "T-701", "yellow")
    page.goto("/patients/T-701")
    probe = page.get_by_role("combobox", name="Probe")
    probe.locator("option").first.wait_for(state="attached", timeout=15000)  # filled once the probe list loads
    assert probe.locator("option").all_inner_texts() == ["Lumify tent B (LUMIFY1)"]
    page.get_by_role("button", name="Scan this patient with this probe").click()
    session = page.get_by_role("list", name="Probe sessions").get_by_role("listitem")
    session.wait_for()
    assert re.search(r"Lumify tent B \(LUMIFY1\) is scanning this patient until \d\d:\d\d", session.inner_text())

    path, sop = capture(tmp_path, patient_id="ANONYMOUS")  # the probe knows nothing of the patient
    assert send(kit, path, aet="LUMIFY1") == ["Success"]
    thumb = page.locator(f"li.thumb[data-uid='{sop}']")
    thumb.wait_for(timeout=20000)
    assert "linked by probe session" in thumb.inner_text() and "probe LUMIFY1" in thumb.inner_text()

    page.get_by_role("button", name="End probe session of LUMIFY1").click()
    session.wait_for(state="detached")
    path, sop = capture(tmp_path, patient_id="ANONYMOUS")
    assert send(kit, path, aet="LUMIFY1") == ["Success"]
    page.goto("/")
    item = page.locator(f"li.tray-item[data-uid='{sop}']")
    item.wait_for(timeout=20000)  # after the session: the tray
    # the probe's name once the board has loaded the probe list (its AE title alone until then)
    expect(item).to_contain_text("Lumify tent B (LUMIFY1)", timeout=15000)
    shot(page, "board-tray")
    assert not axe_violations(page)
    page.evaluate("localStorage.setItem('fieldkit.theme', 'night')")  # and in a dark tent
    page.reload()
    page.locator(f"li.tray-item[data-uid='{sop}']").wait_for(timeout=20000)
    assert page.get_attribute("html", "data-theme") == "night"
    assert not axe_violations(page)
    page.evaluate("localStorage.removeItem('fieldkit.theme')")


def test_the_device_page_allows_a_refused_probe(kit, browser, tmp_path):
    path, sop = capture(tmp_path, patient_id="ANONYMOUS")
    assert send(kit, path, aet="CLARIUS9") == []  # not registered: refused
    ctx = new_context(browser, kit)
    page = ctx.new_page()
    sign_in(page, ADMIN_USER, ADMIN_PASSWORD, next_path="/device")
    refused = page.get_by_role("list", name="Refused callers").get_by_role("listitem").filter(has_text="CLARIUS9")
    refused.wait_for(timeout=15000)
    assert re.search(r"CLARIUS9 from 127\.0\.0\.1: refused 1 time, last at \d\d:\d\d", refused.inner_text())
    assert not axe_violations(page)
    refused.get_by_role("button", name="Allow CLARIUS9").click()
    row = page.locator("#probe-rows tr[data-ae=CLARIUS9]")
    row.wait_for(timeout=15000)
    assert "127.0.0.1" in row.inner_text()
    assert refused.count() == 0
    assert send(kit, path, aet="CLARIUS9") == ["Success"]  # no restart, no settings file edited
    # add and remove by hand
    page.get_by_role("textbox", name="AE title").fill("SONO2")
    page.get_by_role("textbox", name="Label").fill("SonoSite bay 2")
    page.get_by_role("button", name="Add probe").click()
    page.locator("#probe-rows tr[data-ae=SONO2]").wait_for()
    page.get_by_role("textbox", name="AE title").fill("BAD\\AE")
    page.get_by_role("button", name="Add probe").click()
    assert "not usable" in page.get_by_role("alert").filter(has_text="AE title").inner_text()
    page.get_by_role("button", name="Remove probe SONO2").click()
    page.locator("#probe-rows tr[data-ae=SONO2]").wait_for(state="detached")
    assert "CLARIUS9" in run_cli("probes", "list", "--data-dir", kit.data_dir).stdout
    ctx.close()


def test_a_probe_name_is_shown_as_such_until_a_clinician_confirms_it(kit, api, page, tmp_path):
    path, sop = capture(tmp_path, patient_id="PROBE-OWN-77", name="CompressedSamples^US1")
    assert send(kit, path) == ["Success"]
    holder = next(p for p in api.get(kit.url + "/api/v1/ui/board", timeout=30).json()["patients"]
                  if any(c["uid"] == sop for c in p["tray"]))
    # triaged on its own page, the record becomes a patient: the probe's name is not trusted yet
    assert api.post(kit.url + f"/api/v1/ui/patients/{holder['id']}/triage", json={"triage": "green"},
                    timeout=30).status_code == 200
    page.goto(f"/patients/{holder['id']}")
    note = page.locator("#p-probe-name")
    note.wait_for()
    assert note.inner_text().startswith("CompressedSamples, US1 (name from probe): not confirmed")
    assert "^" not in page.locator("main").inner_text()
    assert page.get_by_role("heading", level=1).inner_text().endswith(holder["id"])  # not the probe's name
    page.goto("/")
    card = page.locator(f"li.card[data-patient-id='{holder['id']}']")
    assert card.locator(".pname").inner_text() == "CompressedSamples, US1 (name from probe)"
    page.goto(f"/patients/{holder['id']}")
    page.get_by_role("button", name="Confirm name").click()
    note.wait_for(state="hidden")
    assert page.get_by_role("heading", level=1).inner_text().endswith("CompressedSamples, US1")


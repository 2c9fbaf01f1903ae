"""Stored XSS: a PatientName pushed by storescu and a note typed through the UI's API,
both carrying <script> and event-handler payloads, are inert in the HTML and in a real
headless Chromium (no dialog fires, the text shows as text)."""

from __future__ import annotations

import json

import pydicom

from fixtures.dcmtk import pydicom_file, store_responses, storescu
from kitproc import run_cli

NAME_PAYLOAD = "<script>alert(1)</script>^<img src=x onerror=alert(2)>"
NOTE_PAYLOAD = '"><svg onload=alert(3)><script>alert(4)</script><a href="javascript:alert(5)">x</a>'
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _ui_present() -> bool:
    from fieldkit.web import BLUEPRINTS
    return any(spec.startswith("fieldkit.web.ui:") for spec in BLUEPRINTS)


def test_stored_xss_is_inert_in_chromium(kit_server, tmp_path, need):
    assert _ui_present(), "the tablet UI blueprint is not registered"
    need("storescu")
    chromium = need("chromium")
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.PatientName = NAME_PAYLOAD
    ds.PatientID = "XSS-1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    f = tmp_path / "probe" / "xss.dcm"
    f.parent.mkdir()
    ds.save_as(f, enforce_file_format=True)
    sent = storescu(kit_server.dicom_port, [f])
    assert store_responses(sent) and all("Success" in s for s in store_responses(sent)), sent.stdout + sent.stderr
    pw_file = tmp_path / "pw"
    pw_file.write_text("604817\n")
    run_cli("users", "add", "amina", "--role", "clinician", "--data-dir", kit_server.data_dir,
            "--password-file", pw_file)

    from playwright.sync_api import sync_playwright

    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(kit_server.url + "/login")
            page.fill("#username", "amina")
            page.fill("#password", "604817")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            board = page.request.get(kit_server.url + "/api/v1/ui/board").json()
            patient = [c for c in board["patients"] if "XSS-1" in json.dumps(c) or "script" in json.dumps(c)]
            assert patient, board
            pid = patient[0]["id"]
            csrf = page.request.get(kit_server.url + "/api/v1/session").json()["csrf_token"]
            r = page.request.post(kit_server.url + f"/api/v1/ui/patients/{pid}/details",
                                  data=json.dumps({"note": NOTE_PAYLOAD}),
                                  headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
            assert r.status == 200, r.text()
            for path in ("/", f"/patients/{pid}"):
                page.goto(kit_server.url + path)
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(500)
                html = page.content()
                # the payloads never become elements
                assert page.locator("img[src=x]").count() == 0 and page.locator("svg[onload]").count() == 0
                assert "<script>alert" not in html
                raw = page.request.get(kit_server.url + path).text()
                assert "<script>alert" not in raw and "onerror=alert" not in raw.replace("&lt;", "")
            text = page.inner_text("body")
            assert "alert(3)" in text or "alert(4)" in text, "the note is not shown as text"
        finally:
            browser.close()
    assert dialogs == [], f"a payload ran: {dialogs}"

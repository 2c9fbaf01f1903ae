"""Fast registration in a real Chromium against a real `fieldkit serve`, with a fake camera
that films a printed Code-128 triage tag (made here with zxing-cpp, a kit dependency).

The tests count every tap (pointerdown) from the board to a registered patient: a walking
wounded (green) patient takes at most 3 taps and a scan, a red one at most 5 and a scan;
they fail if more are needed. Chromium on Linux has no native BarcodeDetector, so the scan
goes through the vendored ZXing WebAssembly reader under the kit's CSP.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fixtures.ui import CHROMIUM, CHROMIUM_ARGS, new_context, shot, sign_in, spki_pin

pytestmark = pytest.mark.timeout(240)

WAIT = 20000
PORTRAIT = {"width": 800, "height": 1280}

# Every tap on the page, kept across page loads of the tab (sessionStorage), with what was tapped.
COUNT_TAPS = """
document.addEventListener("pointerdown", (e) => {
  if (!e.isPrimary) return;
  const log = JSON.parse(sessionStorage.getItem("__taps") || "[]");
  const t = e.target.closest("button, a, label, input") || e.target;
  log.push(t.id || (t.textContent || "").trim().slice(0, 40) || t.tagName);
  sessionStorage.setItem("__taps", JSON.stringify(log));
}, true);
"""


def tag_video(path: Path, text: str) -> Path:
    """A Y4M clip (what Chromium's fake camera plays) of a Code-128 tag on white paper."""
    import zxingcpp
    code = np.asarray(zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.Code128).to_image(scale=4))
    assert zxingcpp.read_barcode(code).text == text  # the picture itself reads
    width, height = 640, 480
    luma = np.full((height, width), 235, np.uint8)
    h, w = code.shape
    top, left = (height - h) // 2, (width - w) // 2
    luma[top:top + h, left:left + w] = np.where(code > 127, 235, 16)
    chroma = np.full((height // 2) * (width // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(3):
            f.write(b"FRAME\n" + luma.tobytes() + chroma + chroma)
    return path


@pytest.fixture
def camera_tablet(ui_kit, tmp_path):
    """A tablet whose camera films the tag `text`, signed in, on the board, taps counted."""
    from conftest import need_peer
    need_peer("chromium")
    from playwright.sync_api import sync_playwright
    made = []

    def open_tablet(text: str):
        video = tag_video(tmp_path / f"tag-{text}.y4m", text)
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + [
            f"--ignore-certificate-errors-spki-list={spki_pin(ui_kit.data_dir)}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"])
        made.append((pw, browser))
        ctx = new_context(browser, ui_kit, viewport=PORTRAIT)
        ctx.grant_permissions(["camera"])
        ctx.add_init_script(COUNT_TAPS)
        page = ctx.new_page()
        sign_in(page)
        page.wait_for_selector("#counts")
        page.evaluate("sessionStorage.removeItem('__taps')")  # signing in is not registering
        return page

    yield open_tablet
    for pw, browser in made:
        browser.close()
        pw.stop()


def taps(page) -> list[str]:
    return page.evaluate("JSON.parse(sessionStorage.getItem('__taps') || '[]')")


def scan_tag(page, text: str) -> None:
    page.tap("#scan")
    page.wait_for_function(f"() => document.getElementById('tag').value === {text!r}", timeout=WAIT)
    assert page.get_attribute("#scan", "data-reader") in ("native", "zxing")
    assert page.locator("#scan-video").is_hidden()  # the camera is off again


def patient(page, pid: str) -> dict:
    return page.evaluate(f"fetch('/api/v1/ui/patients/' + encodeURIComponent({pid!r})).then(r => r.json())")


def test_green_patient_in_three_taps_and_a_scan_then_the_next_without_going_back(camera_tablet):
    page = camera_tablet("47110")
    page.tap("a[href='/patients/new']")                     # 1
    page.wait_for_selector("#scan:not([hidden])", timeout=WAIT)
    assert page.get_attribute("#tag", "inputmode") == "numeric"
    scan_tag(page, "47110")                                 # the scan
    page.tap("[data-q=walking] [data-v=yes]")               # 2: START proposes Minor
    assert page.is_checked("input[name=triage][value=green]")
    page.tap("#create-next")                                # 3
    page.wait_for_function("() => /Tag 47110/.test(document.getElementById('last-registered').textContent)",
                           timeout=WAIT)
    done = taps(page)
    assert len(done) - done.count("scan") <= 3 and done.count("scan") == 1, done
    assert patient(page, "47110")["triage"] == "green"
    # ready for the next one: same page, form empty, the tag focused, a link to the last one
    assert page.url.endswith("/patients/new")
    assert page.input_value("#tag") == "" and page.evaluate("document.activeElement.id") == "tag"
    assert not page.is_checked("input[name=triage][value=green]")
    assert page.get_attribute("#last-registered a", "href") == "/patients/47110"
    assert "Minor" in page.inner_text("#last-registered")
    shot(page, "registration-next")
    # the next walking wounded has no tag: two more taps, and an N- ID unlike a capture's U-
    page.tap("[data-q=walking] [data-v=yes]")
    page.tap("#create-next")
    page.wait_for_function("() => /^N-/.test(document.getElementById('last-registered').dataset.patientId || '')",
                           timeout=WAIT)
    pid = page.get_attribute("#last-registered", "data-patient-id")
    assert re.fullmatch(r"N-[0-9A-F]{6}", pid) and page.inner_text("#last-registered a") == pid
    assert patient(page, pid)["triage"] == "green"
    assert len(taps(page)) == len(done) + 2
    # a tag scanner that types and presses Enter: on to the first question, nothing saved yet
    page.fill("#tag", "47119")
    page.press("#tag", "Enter")
    assert page.evaluate("document.activeElement.closest('[data-q]')?.dataset.q") == "walking"
    assert page.locator("#form-error").is_hidden()
    status = page.evaluate("fetch('/api/v1/ui/patients/47119').then(r => r.status)")
    assert status == 404


def test_red_patient_in_five_taps_and_a_scan(camera_tablet):
    page = camera_tablet("47111")
    page.tap("a[href='/patients/new']")                     # 1
    page.wait_for_selector("#scan:not([hidden])", timeout=WAIT)
    scan_tag(page, "47111")                                 # the scan
    page.tap("[data-q=walking] [data-v=no]")                # 2
    page.tap("[data-q=breathing] [data-v=yes]")             # 3
    page.tap("[data-q=rr_over_30] [data-v=yes]")            # 4: START proposes Immediate
    assert page.is_checked("input[name=triage][value=red]")
    page.tap("#create-next")                                # 5
    page.wait_for_function("() => /Tag 47111/.test(document.getElementById('last-registered').textContent)",
                           timeout=WAIT)
    done = taps(page)
    assert len(done) - done.count("scan") <= 5 and done.count("scan") == 1, done
    p = patient(page, "47111")
    assert p["triage"] == "red" and p["triage_history"][-1]["proposed"] == "red"
    page.goto("/")
    card = page.locator("li.card[data-patient-id='47111']")
    card.wait_for(timeout=WAIT)
    assert card.get_attribute("data-triage") == "red"


def test_register_next_while_the_kit_is_out_of_reach(ui_browser, ui_kit):
    """Offline, "Add and register next" keeps each patient on the tablet, says so, and is
    ready for the next; back online both reach the kit once (offline.js does the sending)."""
    from kitproc import wait_until
    from test_ui_offline_writes import ready_tablet, to_send
    ctx, page = ready_tablet(ui_browser, ui_kit)
    try:
        ctx.set_offline(True)
        page.goto("/patients/new")
        page.wait_for_selector("#create-next")
        for n, tag in enumerate(("OFF-N1", "OFF-N2"), start=1):
            page.fill("#tag", tag)
            page.tap("[data-q=walking] [data-v=yes]")
            page.tap("#create-next")
            page.wait_for_function(f"() => document.getElementById('last-registered').textContent.includes('Tag {tag}')",
                                   timeout=WAIT)
            assert page.inner_text("#last-registered").startswith("Kept on this tablet, sent when the kit is back")
            assert page.input_value("#tag") == ""
            to_send(page, n)
        ctx.set_offline(False)
        page.goto("/")
        to_send(page, 0)

        def arrived():
            got = [ui_kit.get(f"/api/v1/ui/patients/{t}", headers=ui_kit.auth("clinician")) for t in ("OFF-N1", "OFF-N2")]
            return all(r.status_code == 200 and r.json()["triage"] == "green" for r in got)
        assert wait_until(arrived, 20)  # bounded
    finally:
        ctx.close()

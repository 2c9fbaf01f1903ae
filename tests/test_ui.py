"""The tablet UI in a real Chromium against a real `fieldkit serve` over HTTPS.

Journeys, in order on one kit: sign in; a new patient through the START assistant lands on
the board in its colour; a capture pushed by storescu appears live (thumbnail, then the
finding) on an already-open patient page; the cine plays and the AI overlay toggles; a
second tablet sees a re-triage live (and the patient's sync rows move up the queue); a
hostile PatientName and note stay text; a lost session keeps what was typed; axe-core
finds no serious problem; the layout fits tablets in both orientations.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import need_peer
from fixtures.ui import (ADMIN_PASSWORD, ADMIN_USER, LANDSCAPE, TABLET, axe_violations, capture_file, lung_file, new_context,
                         push, shot, sign_in)

pytestmark = pytest.mark.timeout(300)

TAG = "T-100"
XSS = '<img src=x onerror="window.__pwned=1">"><script>window.__pwned=2</script>'
RED = "rgb(176, 0, 32)"
YELLOW = "rgb(255, 212, 0)"


@pytest.fixture(scope="module")
def tablet(ui_browser, ui_kit):
    """The clinician's tablet: one signed-in context for the module."""
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    sign_in(page)
    yield page
    ctx.close()


def test_admin_signs_in_and_sees_the_board_without_new_patient(ui_browser, ui_kit):
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    page.goto("/")
    assert "/login" in page.url  # not signed in: sign-in first
    sign_in(page, ADMIN_USER, ADMIN_PASSWORD)
    page.wait_for_selector("#counts")
    assert page.locator("a[href='/patients/new']").count() == 0  # admin may not triage
    page.goto("/device")
    page.wait_for_function("() => document.getElementById('dv-kit').textContent === 'TEST1'")
    assert page.locator("#dv-version").inner_text() != "–"
    # no hospital yet: the audit trail is not anchored anywhere, and the page says so
    page.wait_for_function("() => document.getElementById('dv-audit').textContent.startsWith('not anchored')")
    shot(page, "device")
    ctx.close()


def test_new_patient_with_start_assistant_appears_in_its_colour(tablet):
    page = tablet
    page.goto("/patients/new")
    page.fill("#tag", TAG)
    page.click("[data-q=walking] [data-v=no]")
    page.click("[data-q=breathing] [data-v=yes]")
    page.click("[data-q=rr_over_30] [data-v=yes]")
    assert "Immediate" in page.inner_text("#proposal")
    assert page.is_checked("input[name=triage][value=red]")  # proposed, to be confirmed
    shot(page, "new-patient-start")
    page.click("#create")
    page.wait_for_url("**/#*", timeout=10000)
    card = page.locator(f"li.card[data-patient-id='{TAG}']")
    card.wait_for(timeout=10000)
    assert card.get_attribute("data-triage") == "red"
    assert card.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    assert page.inner_text("[data-count=red]") == "1"
    shot(page, "board-after-new-patient")


def test_start_override_and_history(tablet):
    """The clinician overrides the proposal; the server records both."""
    page = tablet
    page.goto("/patients/new")
    page.fill("#tag", "T-101")
    page.click("[data-q=walking] [data-v=yes]")
    assert page.is_checked("input[name=triage][value=green]")
    page.check("input[name=triage][value=yellow]")
    page.click("#create")
    card = page.locator("li.card[data-patient-id='T-101']")
    card.wait_for(timeout=10000)
    assert card.get_attribute("data-triage") == "yellow"
    data = page.evaluate("fetch('/api/v1/ui/patients/T-101').then(r => r.json())")
    assert data["triage_history"][-1]["triage"] == "yellow"
    assert data["triage_history"][-1]["proposed"] == "green"


def _opaque_pixels(page) -> int:
    return page.evaluate("""() => { const c = document.getElementById('overlay-layer');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")


def test_capture_and_finding_appear_live_then_cine_and_overlay(tablet, ui_kit, tmp_path):
    need_peer("storescu")
    page = tablet
    page.goto(f"/patients/{TAG}")
    page.wait_for_selector("#no-captures:not([hidden])")
    page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'", timeout=15000)
    push(ui_kit, capture_file(tmp_path, patient_id=TAG))
    # no reload: the live stream brings the thumbnail, then the finding
    page.locator("#thumbs li.thumb img").wait_for(timeout=30000)
    page.wait_for_function("() => [...document.querySelectorAll('#thumbs img')].every(i => i.complete && i.naturalWidth > 0)")
    page.locator("#findings li.finding").first.wait_for(timeout=120000)
    finding = page.locator("#findings li.finding").first
    # a cardiac clip is no lung view: the models abstain, and say why and which model
    assert "No assessment: image not usable for" in finding.locator(".f-result").inner_text()
    assert "model lung-" in finding.locator(".f-meta").inner_text() or "model fast-" in finding.locator(".f-meta").inner_text()
    shot(page, "patient-live-capture")

    page.click("#thumbs li:nth-child(1) .thumb-btn")
    page.wait_for_selector("#cine[data-ready=true]", timeout=30000)
    assert page.get_attribute("#cine", "data-frames") == "30"
    assert page.is_disabled("#overlay-toggle")  # nothing to overlay where the models abstained
    page.click("#play")
    start = int(page.get_attribute("#cine", "data-frame"))
    t0 = time.monotonic()
    page.wait_for_function(f"() => Number(document.getElementById('cine').dataset.frame) >= {start} + 15", timeout=5000)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"15 frames at 33 ms each took {elapsed:.2f}s"  # plays at the clip's own rate
    page.click("#play")  # pause
    assert page.get_attribute("#cine", "data-playing") == "false"
    paused = int(page.get_attribute("#cine", "data-frame"))
    page.click("#step-fwd")
    assert int(page.get_attribute("#cine", "data-frame")) == (paused + 1) % 30
    page.eval_on_selector("#scrub", "e => { e.value = '3'; e.dispatchEvent(new Event('input')); }")
    assert page.get_attribute("#cine", "data-frame") == "3"

    # a lung cine with B-lines: an assessable finding with evidence to overlay
    push(ui_kit, lung_file(tmp_path, patient_id=TAG), flag="-xs")
    page.locator("#thumbs li").nth(1).wait_for(timeout=30000)
    lung = page.locator("#findings li.finding[data-task=lung]", has_text="B-line")
    lung.first.wait_for(timeout=120000)
    # two figures, each named for what it is: the gate's of the view, the calibrated one of the finding
    meta = lung.first.locator(".f-meta").inner_text()
    assert re.search(r"view: lung \d+%", meta) and re.search(r"finding: B-line pattern \d+%", meta), meta
    # the clip's count names the frame it comes from
    result = lung.first.locator(".f-result").inner_text()
    assert re.search(r"\d+ B-lines? \(frame \d+\), up to \d+ in a frame", result), result
    assert "confidence 9" not in meta
    page.click("#thumbs li:nth-child(2) .thumb-btn")
    page.wait_for_selector("#cine[data-ready=true][data-frames='10']", timeout=30000)
    page.wait_for_selector("#overlay-layer[data-ready=true]", timeout=30000)
    assert _opaque_pixels(page) == 0  # off until asked for
    page.click("#overlay-toggle")
    assert page.get_attribute("#overlay-toggle", "aria-pressed") == "true"
    assert _opaque_pixels(page) > 200, "the overlay layer drew no evidence"
    page.select_option("#zone-select", "R2")
    page.wait_for_function("() => document.querySelector('#zones [data-zone=R2] .zc').textContent !== '–'")
    assert int(page.inner_text("#zones [data-zone=R2] .zc")) >= 1
    shot(page, "patient-cine-overlay-on")
    page.click("#overlay-toggle")
    assert _opaque_pixels(page) == 0


def test_a_clip_shown_inverted_is_read_set_upright_and_says_so(tablet, ui_kit, tmp_path):
    """A probe whose display is inverted top to bottom (its orientation marker at the bottom):
    the finding is read set upright and the patient page says so beside the figures."""
    need_peer("storescu")
    page = tablet
    page.goto("/patients/new")
    page.fill("#tag", "T-103")
    page.check("input[name=triage][value=green]")
    page.click("#create")
    page.locator("li.card[data-patient-id='T-103']").wait_for(timeout=10000)
    push(ui_kit, lung_file(tmp_path, patient_id="T-103", marker="bottom left"), flag="-xs")
    page.goto("/patients/T-103")
    lung = page.locator("#findings li.finding[data-task=lung][data-assessable=true]")
    lung.first.wait_for(timeout=120000)
    meta = lung.first.locator(".f-meta").inner_text()
    assert "read set upright: its orientation marker shows it inverted" in meta, meta
    assert re.search(r"view: lung \d+%", meta), meta
    page.click("#thumbs li:nth-child(1) .thumb-btn")
    page.wait_for_selector("#overlay-layer[data-ready=true]", timeout=30000)
    page.click("#overlay-toggle")
    assert _opaque_pixels(page) > 200, "the overlay layer drew no evidence over the inverted clip"
    shot(page, "patient-inverted-clip-read-upright")


def test_capture_that_does_not_decode_shows_a_placeholder_with_the_reason(tablet, ui_kit, tmp_path):
    need_peer("storescu")
    from pydicom.encaps import encapsulate
    from fixtures.dcmtk import video_dataset
    ds = video_dataset("h264", frames=4)
    ds.PixelData = encapsulate([b"\x00\x00\x01\x09not a video stream" * 40])
    ds.PatientID = TAG
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    page = tablet
    page.goto(f"/patients/{TAG}")
    page.wait_for_selector("#thumbs li")
    push(ui_kit, path, flag="-xn")  # kept as sent (and synced); flagged for people
    failed = page.locator("#thumbs li[data-failed='1']")
    failed.wait_for(timeout=30000)
    text = failed.inner_text()
    assert "Cannot show this capture:" in text and "video" in text.lower()
    failed.locator("button.thumb-btn").click()
    page.wait_for_selector("#player-error:not([hidden])", timeout=15000)
    assert "cannot be played" in page.inner_text("#player-error")
    shot(page, "capture-decode-failed")


def test_finding_review_with_hostile_note_stays_text(tablet):
    page = tablet
    page.goto(f"/patients/{TAG}")
    first = page.locator("#findings li.finding[data-assessable=true]").first  # one to accept
    first.wait_for(timeout=15000)
    # held by its id: a capture analysed meanwhile redraws the list and may come first
    fid = first.get_attribute("data-finding-id")
    finding = page.locator(f"#findings li.finding[data-finding-id='{fid}']")
    finding.locator(".f-note").fill(XSS)
    finding.locator(".f-accept").click()
    page.wait_for_function("id => document.querySelector(`#findings li[data-finding-id='${id}'] .f-state`)"
                           ".textContent.includes('accepted')", arg=fid)
    assert XSS in finding.locator(".f-state").inner_text()
    assert page.locator("#findings img[src='x']").count() == 0
    assert page.evaluate("window.__pwned === undefined")
    data = page.evaluate(f"fetch('/api/v1/ui/patients/{TAG}').then(r => r.json())")
    review = [f for c in data["captures"] for f in c["findings"] if f["id"] == fid][0]["review"]
    assert review["decision"] == "accepted" and review["note"] == XSS


def test_second_tablet_sees_retriage_live_and_sync_rows_move_up(tablet, ui_browser, ui_kit):
    other = new_context(ui_browser, ui_kit, viewport=LANDSCAPE)
    board = other.new_page()
    sign_in(board)
    card = board.locator(f"li.card[data-patient-id='{TAG}']")
    card.wait_for(timeout=10000)
    board.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'", timeout=15000)
    before = tablet.evaluate("fetch('/api/v1/ui/sync').then(r => r.json())")
    page = tablet
    page.goto(f"/patients/{TAG}")
    page.click("button.tri-btn[data-triage=yellow]")
    page.click("#triage-confirm-yes")  # out of Immediate: the second tap names the patient
    page.wait_for_selector("button.tri-btn[data-triage=yellow][aria-pressed=true]")
    # the other tablet, without reloading
    board.wait_for_selector(f"li.card[data-patient-id='{TAG}'][data-triage=yellow]", timeout=10000)
    assert card.evaluate("e => getComputedStyle(e).backgroundColor") == YELLOW
    shot(board, "second-tablet-retriage")
    other.close()
    history = page.evaluate(f"fetch('/api/v1/ui/patients/{TAG}').then(r => r.json())")["triage_history"]
    assert [h["triage"] for h in history] == ["red", "yellow"]
    after = page.evaluate("fetch('/api/v1/ui/sync').then(r => r.json())")
    mine = [i for i in after["items"] if i.get("patient_id") == TAG and i.get("sop_instance_uid")
            and i["state"] in ("queued", "sending")]
    was = {i["row_id"]: i["priority"] for i in before["items"]}
    assert mine, "the capture's sync rows should still be pending (no hospital configured)"
    for item in mine:  # red -> yellow: images 10 -> 30, findings 5 -> 25 (records.sync_priority)
        assert (was.get(item["row_id"]), item["priority"]) in ((10, 30), (5, 25)), item
    assert any(i.get("what") == "triage" and i.get("patient_id") == TAG for i in after["items"])


def test_hostile_patient_name_from_dicom_is_inert(tablet, ui_kit, tmp_path):
    need_peer("storescu")
    page = tablet
    push(ui_kit, capture_file(tmp_path, patient_id="PROBE-XSS-1", patient_name=XSS, name="xss.dcm"))
    page.goto("/")
    # nobody could link it: it waits in the tray (which shows no probe-typed name at all) ...
    page.locator("li.tray-item").first.wait_for(timeout=15000)
    board = page.evaluate("fetch('/api/v1/ui/board').then(r => r.json())")
    holder = [p for p in board["patients"] if p["name"] == XSS][0]
    assert holder["unassigned"] and "onerror" not in page.inner_text("#tray")
    # ... until someone triages the record: then its card shows the probe's name, as text
    page.evaluate(f"""() => fetch('/api/v1/ui/patients/{holder["id"]}/triage', {{method: 'POST',
        headers: {{'Content-Type': 'application/json', 'X-CSRF-Token':
        document.querySelector('meta[name=csrf-token]').content}}, body: JSON.stringify({{triage: 'green'}})}})""")
    card = page.locator("li.card", has_text="onerror")
    card.wait_for(timeout=15000)
    assert card.locator(".pname").inner_text().endswith("(name from probe)")
    assert page.locator("li.card img").count() == 0 and page.locator("li.card script").count() == 0
    card.locator("a").click()
    page.wait_for_url("**/patients/**")
    page.wait_for_function("() => (document.getElementById('p-probe-name-text') || {}).textContent?.includes('onerror')")
    assert "<script>" in page.inner_text("#p-probe-name-text")  # shown as text, never run
    assert page.locator("#patient img[src='x']").count() == 0
    assert page.evaluate("window.__pwned === undefined") and not page.dialogs
    shot(page, "xss-name-inert")


def test_admin_sees_a_patient_read_only(ui_browser, ui_kit):
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    sign_in(page, ADMIN_USER, ADMIN_PASSWORD, next_path=f"/patients/{TAG}")
    page.wait_for_selector("#findings li.finding")
    assert page.locator("button.tri-btn").count() == 0 and page.locator("#details").count() == 0
    assert page.locator("#findings .f-review:visible").count() == 0
    r = page.evaluate(f"""() => fetch('/api/v1/ui/patients/{TAG}/triage', {{method: 'POST',
        headers: {{'Content-Type': 'application/json', 'X-CSRF-Token':
        document.querySelector('meta[name=csrf-token]').content}}, body: JSON.stringify({{triage: 'black'}})}})
        .then(r => r.status)""")
    assert r == 403  # the server refuses it too, not just the page
    ctx.close()


def test_expired_session_keeps_what_was_typed(tablet, ui_browser, ui_kit):
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    sign_in(page, next_path=f"/patients/{TAG}")
    page.wait_for_selector("#p-title:not(:empty)")
    page.fill("#d-name", "Jane Doe")
    page.fill("#d-note", "arrived by boat")
    # the session is gone (expired, or the kit restarted); the browser keeps the kit's
    # sign-in cookie, as it does then (clearing that too made two sign-in pages race to set it)
    ctx.clear_cookies(name="__Host-fk_session")
    try:  # a live refresh may hit the 401 first and go to sign-in by itself: same outcome
        page.click("#details button[type=submit]", timeout=3000, no_wait_after=True)
    except Exception:
        pass
    page.wait_for_selector("#username", timeout=10000)
    # both the live refresh and the submit may send the page to sign-in: let the second
    # load land before typing, or the form carries the first load's CSRF token
    page.wait_for_load_state("networkidle", timeout=10000)
    page.wait_for_selector("#username", timeout=10000)
    assert "/login" in page.url
    page.fill("#username", "clin1")
    page.fill("#password", "clinician password 1")
    page.click("button[type=submit]")
    # back where the session ran out; "commit", not "load": the page's previews need not
    # all have arrived for the drafts to come back (a busy kit serves them a little later)
    try:
        page.wait_for_url(f"**/patients/{TAG}", timeout=20000, wait_until="commit")
    except Exception:
        raise AssertionError(f"signing in again led to {page.url}: {page.inner_text('body')[:300]!r}") from None
    page.wait_for_function("() => document.getElementById('d-name')?.value === 'Jane Doe'", timeout=15000)
    assert page.input_value("#d-note") == "arrived by boat"
    page.click("#details button[type=submit]")
    page.wait_for_function("() => document.getElementById('notes').textContent.includes('arrived by boat')")
    assert page.inner_text("#p-title") == "Jane Doe"
    ctx.close()


def test_merge_from_the_patient_menu(tablet, ui_kit):
    page = tablet
    board = page.evaluate("fetch('/api/v1/ui/board').then(r => r.json())")
    xss = [p for p in board["patients"] if p["name"] == XSS][0]
    page.goto("/patients/new")
    page.fill("#tag", "T-102")
    page.check("input[name=triage][value=green]")
    page.click("#create")
    page.locator("li.card[data-patient-id='T-102']").wait_for(timeout=10000)
    page.goto(f"/patients/{xss['id']}")
    page.wait_for_selector("#p-title:not(:empty)")
    page.click("#menu-btn")
    page.click("#merge-open")
    page.fill("#merge-query", "T-102")
    page.press("#merge-query", "Enter")
    page.click("#merge-confirm")
    page.wait_for_function("() => document.getElementById('p-sub').textContent.includes('tag T-102')", timeout=10000)
    board = page.evaluate("fetch('/api/v1/ui/board').then(r => r.json())")
    assert "T-102" not in [p["id"] for p in board["patients"]]
    assert xss["id"] in [p["id"] for p in board["patients"] if "T-102" in p["tags"]]


@pytest.mark.parametrize("viewport", [TABLET, {"width": 1024, "height": 768}, LANDSCAPE, {"width": 800, "height": 1280}],
                         ids=["768x1024", "1024x768", "1280x800", "800x1280"])
def test_fits_tablets_with_touch_sized_controls(tablet, viewport):
    page = tablet
    page.set_viewport_size(viewport)
    for path in ("/", f"/patients/{TAG}", "/patients/new", "/sync"):
        page.goto(path)
        page.wait_for_load_state("networkidle") if path != f"/patients/{TAG}" else page.wait_for_selector("#thumbs li")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {viewport}"
        small = page.evaluate("""() => [...document.querySelectorAll('button, a.btn, a.nav, .card-link, input, select, textarea, .tri-choice')]
            .filter(e => e.offsetParent !== null && e.type !== 'hidden' && e.type !== 'radio')
            .map(e => [e.id || e.className || e.tagName, e.getBoundingClientRect()])
            .filter(([n, r]) => r.width < 44 || r.height < 44).map(([n, r]) => `${n} ${Math.round(r.width)}x${Math.round(r.height)}`)""")
        assert not small, f"touch targets under 44 px on {path}: {small}"
    w, h = viewport["width"], viewport["height"]
    page.goto("/")
    page.wait_for_selector("li.card")
    shot(page, f"board-{w}x{h}")
    page.set_viewport_size(TABLET)


@pytest.mark.parametrize("theme", ["day", "night"])
def test_accessibility_axe_main_pages(tablet, theme):
    page = tablet
    page.goto("/")
    page.evaluate(f"localStorage.setItem('fieldkit.theme', '{theme}')")
    problems = {}
    for path, ready in (("/", "li.card"), ("/patients/new", "#proposal"), (f"/patients/{TAG}", "#thumbs li"),
                        ("/sync", "#s-counts:not(:empty)"), ("/device", "#dv-models li")):
        page.goto(path)
        page.wait_for_selector(ready, timeout=15000)
        time.sleep(0.3)
        assert page.get_attribute("html", "data-theme") == theme
        bad = axe_violations(page)
        if bad:
            problems[path] = bad
    if theme == "night":
        shot(page, "device-night")
    page.evaluate("localStorage.removeItem('fieldkit.theme')")
    assert not problems, json.dumps(problems, indent=1)

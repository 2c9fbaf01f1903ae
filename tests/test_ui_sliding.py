"""Lung sliding on the patient page, in a real Chromium against a real `fieldkit serve`
whose models run on simulated cines pushed by storescu: a clip without sliding reads
"Lung sliding: absent (pneumothorax not excluded)" as a red flag, one with sliding reads
"Lung sliding: present", one sliding on one side of a line only (a lung point) is flagged
and not called present, and a single lung frame says in words why sliding cannot be judged;
under the words of each cine its M-mode strip with a caption that says how to read it (two
strips for the lung point, none for the single frame); the board's card says "no lung
sliding" as a finding that argues for Immediate. The M-mode endpoint itself on the same
kit: a PNG as wide as the clip is long, 404 with the reason for a single frame, a finding
that is not lung and one that does not exist."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import need_peer
from fixtures.inference import load_train_module, lung_cine_dataset
from fixtures.ui import add_patient, new_context, push, shot, sign_in

pytestmark = pytest.mark.timeout(300)

PID = "PTX-1"


def _clip(tmp_path, name: str, slides: bool, seed: int, lung_point: bool = False, n_frames: int = 8,
          patient: str = PID):
    load_train_module("simulator")
    load_train_module("evaluate")
    sliding = load_train_module("sliding")
    frames, _ = sliding.S.simulate_sliding_cine(np.random.default_rng(seed), sliding=slides, n_frames=n_frames,
                                                noise_sd=2.0, n_blines=0, lung_point=lung_point)
    ds = sliding.cine_dataset(frames)
    ds.PatientID = patient
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_patient_page_shows_lung_sliding_and_flags_its_absence(ui_browser, ui_kit, tmp_path):
    need_peer("storescu")
    single, _ = lung_cine_dataset(n_frames=1, n_blines=2, seed=19)
    single.PatientID = PID
    single.save_as(tmp_path / "single.dcm", enforce_file_format=True)
    ctx = new_context(ui_browser, ui_kit)
    page = ctx.new_page()
    try:
        sign_in(page)
        assert add_patient(page, PID, 'yellow') == 201
        push(ui_kit, _clip(tmp_path, "absent.dcm", False, 71), _clip(tmp_path, "present.dcm", True, 72),
             _clip(tmp_path, "point.dcm", True, 73, lung_point=True), tmp_path / "single.dcm", flag="-xs")
        page.goto(f"/patients/{PID}")
        # wait for the content (the page redraws as findings arrive): four lung findings,
        # each with its sliding line
        page.wait_for_function("() => document.querySelectorAll('#findings li.finding[data-task=lung] "
                               ".f-sliding:not([hidden])').length === 4", timeout=120000)
        shown = sorted(tuple(row) for row in page.evaluate("""() => [...document.querySelectorAll(
            '#findings li.finding[data-task=lung] .f-sliding')].map((el) => [el.dataset.flag, el.dataset.status, el.innerText])"""))
        assert shown == [
            ("false", "not assessable", "Lung sliding: not assessable (a single image: sliding needs a clip)"),
            ("false", "present", "Lung sliding: present"),
            ("true", "absent", "▲ Lung sliding: absent (pneumothorax not excluded)"),
            # sliding on one side of a line only (a lung point): flagged, never "present"
            ("true", "not assessable", "▲ Lung sliding: in part of the view only (pneumothorax not excluded)"),
        ], shown
        # the flagged lines stand out (bold, a red edge), the others do not; read in one
        # go in the page, since a live update may redraw the list between two reads
        styles = page.evaluate("""() => [...document.querySelectorAll('#findings .f-sliding:not([hidden])')].map(
            (el) => [el.dataset.flag, getComputedStyle(el).fontWeight, getComputedStyle(el).borderInlineStartWidth])""")
        assert sorted(styles) == [["false", "400", "0px"], ["false", "400", "0px"],
                                  ["true", "800", "6px"], ["true", "800", "6px"]], styles
        # under the words of each cine, its M-mode strip (loaded and shown at its own size)
        # and how to read it; two strips for the lung point; none for the single frame
        page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('#findings .f-mmode:not([hidden]) img')];
            return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0); }""", timeout=30000)
        strips = sorted(tuple(row) for row in page.evaluate("""() => [...document.querySelectorAll(
            '#findings li.finding[data-task=lung]')].map((li) => { const fig = li.querySelector('.f-mmode');
              const img = fig.querySelector('img');
              return [li.querySelector('.f-sliding').dataset.status, fig.hidden, fig.hidden ? '' : fig.dataset.sides,
                      fig.hidden ? '' : fig.querySelector('figcaption').innerText,
                      !fig.hidden && img.naturalWidth >= 8 * 4 && img.getBoundingClientRect().width === img.naturalWidth]; })"""))
        how = "M-mode through the pleural line, time →: seashore = sliding, barcode = no sliding"
        assert strips == [
            ("absent", False, "1", how, True),
            ("not assessable", False, "2", how + " Left strip: left side of the view; right strip: right side.", True),
            ("not assessable", True, "", "", False),
            ("present", False, "1", how, True),
        ], strips
        shot(page, "patient-lung-sliding")
        # the board flags the patient: absent sliding argues for Immediate (a prompt, never set)
        page.goto("/")
        card = page.locator(f"li.card[data-patient-id='{PID}']")
        page.wait_for_function("el => el.textContent.length > 0", arg=card.locator(".argues").element_handle(timeout=20000),
                               timeout=20000)
        assert card.locator(".argues").text_content() == "▲ Finding suggests Immediate: no lung sliding"
        assert card.get_attribute("data-triage") == "yellow"
    finally:
        ctx.close()


def test_m_mode_endpoint_answers_a_png_as_long_as_the_clip_or_404_with_the_reason(ui_kit, tmp_path):
    need_peer("storescu")
    patient = "PTX-2"
    auth = ui_kit.auth("clinician")
    r = ui_kit.post("/api/v1/ui/patients", json={"tag": patient, "triage": "yellow"}, headers=auth)
    assert r.status_code == 201, r.text
    single, _ = lung_cine_dataset(n_frames=1, n_blines=2, seed=19)
    single.PatientID = patient
    single.save_as(tmp_path / "single-2.dcm", enforce_file_format=True)
    push(ui_kit, _clip(tmp_path, "short.dcm", True, 74, patient=patient),
         _clip(tmp_path, "long.dcm", True, 74, n_frames=16, patient=patient), tmp_path / "single-2.dcm", flag="-xs")
    deadline = time.monotonic() + 120
    while True:  # the kit analyses in the background: wait for the three lung findings
        captures = ui_kit.get(f"/api/v1/ui/patients/{patient}", headers=auth).json()["captures"]
        lung = {c["frames"]: f for c in captures for f in c["findings"] if f["task"] == "lung"}
        if len(lung) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(lung) == [1, 8, 16], (captures, ui_kit.log())

    def m_mode(fid: str) -> requests.Response:
        return ui_kit.get(f"/api/v1/ui/findings/{fid}/mmode.png", headers=auth)

    widths = {}
    for n in (8, 16):
        assert lung[n]["result"]["sliding"]["m_mode"], lung[n]["result"]["sliding"]
        r = m_mode(lung[n]["id"])
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/png", (r.status_code, r.text[:200])
        assert r.headers["Cache-Control"] == "no-store"  # a patient image: never in the tablet's disk cache
        img = Image.open(io.BytesIO(r.content))
        img.load()  # a whole, decodable PNG
        assert img.height == 240 and len(r.content) < 50_000, (img.size, len(r.content))
        widths[n] = img.width
    assert widths[16] >= widths[8] + 8, widths  # time runs across: each frame at least a pixel wide

    r = m_mode(lung[1]["id"])
    assert r.status_code == 404 and r.json()["error"] == "a single frame has no M-mode: it needs a cine", r.text
    fast = next(f for c in captures if c["frames"] == 8 for f in c["findings"] if f["task"] != "lung")
    r = m_mode(fast["id"])
    assert r.status_code == 404 and r.json()["error"] == "an M-mode strip is made for lung findings only", r.text
    assert m_mode("no-such-finding").status_code == 404
    anonymous = requests.get(f"{ui_kit.url}/api/v1/ui/findings/{lung[8]['id']}/mmode.png", verify=ui_kit.ca, timeout=30)
    assert anonymous.status_code == 401

"""Lung sliding on the patient page, in a real Chromium against a real `fieldkit serve`
whose models run on simulated cines pushed by storescu: a clip without sliding reads
"Lung sliding: absent (pneumothorax not excluded)" as a red flag, one with sliding reads
"Lung sliding: present", one sliding on one side of a line only (a lung point) is flagged
and not called present, and a single lung frame says in words why sliding cannot be judged;
the board's card says "no lung sliding" as a finding that argues for Immediate."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need_peer
from fixtures.inference import load_train_module, lung_cine_dataset
from fixtures.ui import add_patient, new_context, push, shot, sign_in

pytestmark = pytest.mark.timeout(300)

PID = "PTX-1"


def _clip(tmp_path, name: str, slides: bool, seed: int, lung_point: bool = False):
    load_train_module("simulator")
    load_train_module("evaluate")
    sliding = load_train_module("sliding")
    frames, _ = sliding.S.simulate_sliding_cine(np.random.default_rng(seed), sliding=slides, n_frames=8,
                                                noise_sd=2.0, n_blines=0, lung_point=lung_point)
    ds = sliding.cine_dataset(frames)
    ds.PatientID = PID
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

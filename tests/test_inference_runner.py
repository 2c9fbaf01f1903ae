"""The runner on real ultrasound files and on bad input, and the SR it makes.

None of pydicom's ultrasound files is a lung or FAST view (an apical cardiac cine, a
lymph-node Doppler study, an obstetric frame), so every lung and FAST result on them
must be "not assessable": a B-line count or a fluid finding on any of them is a failure.
"""

from __future__ import annotations

import copy
import io
import re
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from fieldkit.inference import overlay, runner, sr
from fixtures.inference import PYDICOM_US_FILES, lung_cine_dataset, sr_values


def _read(name):
    return pydicom.dcmread(get_testdata_file(name))


def _roundtrip(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("name", PYDICOM_US_FILES)
def test_real_non_lung_non_fast_files_are_not_assessable(registry, name):
    ds = _read(name)
    a = runner.analyse(ds, registry)
    assert not a.skipped
    assert {r.task for r in a.results} == {"lung", "fast"}
    for r in a.results:
        assert r.assessable is False, (name, r.task, r.reason)
        assert r.reason  # says why
        assert "b_line_counts" not in r.result and "fluid_present" not in r.result
    assert a.frames_total == int(ds.get("NumberOfFrames", 1) or 1)


@pytest.mark.parametrize("name", PYDICOM_US_FILES)
def test_sr_of_a_real_file_parses_back_with_the_algorithm_and_not_assessable(registry, name):
    ds = _read(name)
    a = runner.analyse(ds, registry)
    report = _roundtrip(sr.build_sr(ds, a))
    parsed = hd.sr.Comprehensive3DSR.from_dataset(report)
    assert parsed.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert report.StudyInstanceUID == ds.StudyInstanceUID
    values = sr_values(report)
    for r in a.results:
        assert f"sha256={r.model['sha256']}" in values
        assert r.model["name"] in values
    assert values.count("Not assessable") == 2
    ref = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID



def test_sr_for_a_sparse_handheld_export(registry):
    """No patient name/sex/birth date, no study ID, no Frame of Reference: still a report."""
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=2)
    for keyword in ("PatientName", "PatientSex", "PatientBirthDate", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName", "FrameOfReferenceUID", "StudyDate", "StudyTime"):
        if keyword in ds:
            delattr(ds, keyword)
    ds = _roundtrip(ds)
    a = runner.analyse(ds, registry)
    report = _roundtrip(sr.build_sr(ds, a))
    assert report.PatientID == ds.PatientID
    assert "PatientName" in report and str(report.PatientName) == ""
    again = sr.build_sr(ds, a)
    assert again.SOPInstanceUID == report.SOPInstanceUID  # a re-run names the same report


def test_sr_for_a_source_with_malformed_descriptors(registry):
    """Values highdicom refuses to copy (a bad date, a bad time, a name too long) still give a report."""
    ds, _ = lung_cine_dataset(n_frames=2, n_blines=1)
    ds = _roundtrip(ds)
    ds["StudyDate"].value = "not-a-date"
    ds["StudyTime"].value = "25:99"
    ds.ReferringPhysicianName = "x" * 400
    ds.AccessionNumber = "y" * 100
    a = runner.analyse(ds, registry)
    report = _roundtrip(sr.build_sr(ds, a))
    assert report.StudyInstanceUID == ds.StudyInstanceUID and report.PatientID == ds.PatientID
    hd.sr.Comprehensive3DSR.from_dataset(report)


def test_simulated_lung_cine_gives_b_line_counts(registry):
    ds, truth = lung_cine_dataset(n_frames=8, n_blines=4, seed=11)
    a = runner.analyse(_roundtrip(ds), registry)
    lung = next(r for r in a.results if r.task == "lung")
    fast = next(r for r in a.results if r.task == "fast")
    assert lung.assessable, lung.reason
    assert not fast.assessable  # a lung view is not a FAST view
    assert len(lung.result["b_line_counts"]) == 8
    true = len(truth[0].bline_cols)
    assert np.median(lung.result["b_line_counts"]) == pytest.approx(true, abs=1)
    assert lung.result["pattern"] == "B-line pattern"
    assert abs(lung.result["pleural_line_row"] - truth[0].pleura_row) < 15
    assert len(lung.result["column_evidence"]) == 64


def test_close_lines_in_one_run_are_counted_on_the_clip_and_said_so(registry):
    """8 B-lines on a convex probe, two of them so close at the pleura that the model scores
    them as one run: the finding counts 8 (it counted 7 before `postprocess.fan_lines`),
    and says which columns hold two lines. The clip's first frame: on its next two, lung
    model 4.0.0 also scores the close line, weakly, as a run of its own whose track drifts
    onto its neighbour, and the frame counts 9 (README, "Counts and confluent B-lines")."""
    ds, truth = lung_cine_dataset(n_frames=1, n_blines=8, seed=11)
    lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
    assert {len(s.bline_cols) for s in truth} == {8}
    assert lung.result["b_lines"] == 8 and lung.result["b_line_counts"] == [8]
    for f in lung.result["frames"]:
        assert len(f["lines_in_columns"]) == len(f["columns"]) == 7
        assert sorted(f["lines_in_columns"]) == [1] * 6 + [2] and sum(f["lines_in_columns"]) == f["b_lines"]


def _green_bands(png: bytes, row: int) -> int:
    """How many separate green-tinted bands cross one row of an overlay image."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    tinted = rgb[row, :, 1] - rgb[row, :, 0] > 40  # the frame is grey; the tint is green
    return int(np.sum(tinted[1:] & ~tinted[:-1]) + tinted[0])


def test_the_overlay_draws_as_many_bands_as_lines_counted(registry):
    """The clinician checks a count against the picture: the 8-line cine whose two close
    lines the model scored as one run shows 8 green bands, not 7 (the frame above)."""
    ds, _ = lung_cine_dataset(n_frames=1, n_blines=8, seed=11)
    a = runner.analyse(ds, registry)
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.result["b_lines"] == 8 and 2 in a.overlay["lines_in_columns"]
    row = a.overlay["pleura_row"] + 40
    assert _green_bands(overlay.render(a.overlay_frame, a.overlay), row) == 8
    one_band_a_run = dict(a.overlay, lines_in_columns=None)  # as drawn before
    assert _green_bands(overlay.render(a.overlay_frame, one_band_a_run), row) == 7


def test_sr_names_the_view_probability_and_the_finding_probability_apart(registry):
    """The gate's figure is the probability of the view, not of the finding: the SR carries
    each under its own name (tests/test_inference_calibration.py checks the values)."""
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=4, seed=11)
    a = runner.analyse(_roundtrip(ds), registry)
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable and lung.finding_probability is not None
    report = _roundtrip(sr.build_sr(ds, a))
    values = sr_values(report)
    assert sr.VIEW_PROBABILITY.meaning in values
    assert sr.FINDING_PROBABILITY.meaning in values

    def items(ds):
        for i in getattr(ds, "ContentSequence", []):
            yield i
            yield from items(i)
    nums = [float(i.MeasuredValueSequence[0].NumericValue) for i in items(report)
            if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeValue == "VIEWP"]
    assert nums == [pytest.approx(100 * lung.view_probability, abs=0.06)]


def test_an_sr_instance_is_skipped_with_the_reason(registry):
    ds = _read("examples_ybr_color.dcm")
    report = sr.build_sr(ds, runner.analyse(ds, registry))
    a = runner.analyse(report, registry)
    assert a.skipped and "no pixel data" in a.skipped
    assert a.results == []


def test_a_cine_of_2000_frames_is_sampled_and_finishes(registry):
    ds = _read("examples_ybr_color.dcm")
    frames = runner._decode(ds, [0])[0]

    def decode(_ds, indices):  # 2000 frames without building a 2000-frame file
        return np.repeat(frames[None], len(indices), axis=0)

    big = copy.deepcopy(ds)
    big.NumberOfFrames = 2000
    a = runner.analyse(big, registry, max_frames=60, decode=decode)
    assert a.frames_total == 2000 and a.frames_analysed == 60
    assert a.subsampled and any("max_frames" in r for r in a.subsample_reasons)
    assert all(not r.assessable for r in a.results)


def test_time_budget_stops_a_long_job_and_says_so(registry):
    ds = _read("examples_ybr_color.dcm")
    a = runner.analyse(ds, registry, time_budget_s=0.0, batch_size=4)
    assert a.frames_analysed == 8 and a.subsampled  # two batches: see test_inference_gate_unit
    assert any("time budget" in r for r in a.subsample_reasons)


def test_power_policy_stride_is_applied_and_recorded(registry):
    from fieldkit.hardware.policy import decide
    from fieldkit.hardware.probe import FakeProbe
    from fieldkit.config import Config
    policy = decide(FakeProbe(battery_percent=15.0, on_battery=True, temperature_c=40.0).read(), Config())
    assert policy.frame_stride == 2
    ds = _read("examples_ybr_color.dcm")
    a = runner.analyse(ds, registry, frame_stride=policy.frame_stride, power_reasons=policy.reasons)
    assert a.frames_analysed == 15 and a.frame_numbers[:3] == [1, 3, 5]
    assert a.subsampled and "battery low" in a.subsample_reasons[0]
    idle = decide(FakeProbe(battery_percent=100.0, on_battery=False, temperature_c=40.0).read(), Config())
    assert runner.analyse(ds, registry, frame_stride=idle.frame_stride).frames_analysed == 30


@pytest.mark.parametrize("frames, why", [
    (np.zeros((1, 240, 320), np.uint8), "unexpected frame layout"),
    (np.zeros((1, 240, 320, 4), np.uint8), "unexpected frame layout"),
    (np.zeros((1, 32, 32, 3), np.uint8), "too small"),
])
def test_unexpected_frames_are_not_assessable(registry, frames, why):
    ds = _read("examples_rgb_color.dcm")
    a = runner.analyse(ds, registry, decode=lambda _ds, idx: frames)
    assert all(not r.assessable and why in r.reason for r in a.results)


def test_pixels_that_do_not_decode_are_not_assessable(registry):
    ds = _read("examples_ybr_color.dcm")
    ds.PixelData = ds.PixelData[:200]  # truncated JPEG stream
    a = runner.analyse(ds, registry)
    assert all(not r.assessable and "does not decode" in r.reason for r in a.results)


def test_a_not_assessable_result_claims_no_view_quality_probability_or_frames(registry):
    ds = _read("examples_ybr_color.dcm")
    ds.PixelData = ds.PixelData[:200]  # truncated JPEG stream
    t = time.perf_counter()
    a = runner.analyse(ds, registry)
    wall_ms = (time.perf_counter() - t) * 1000
    assert {r.task for r in a.results} == {"lung", "fast"}
    for r in a.results:
        assert (r.view, r.quality, r.view_probability, r.frames) == ("unknown", "unknown", 0.0, [])
        assert r.finding_probability is None and r.result == {}
    assert (a.view, a.quality) == ("unknown", "unknown")
    assert 0 < a.timing_ms["total"] <= wall_ms + 0.1  # milliseconds spent, to 0.1 ms


def _native_rgb_cine(planar: int = 0, n_frames: int = 8):
    ds, truth = lung_cine_dataset(n_frames=n_frames, n_blines=4, seed=3)
    if planar:
        rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(n_frames, int(ds.Rows), int(ds.Columns), 3)
        ds.PixelData = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)).tobytes()
        ds.PlanarConfiguration = 1
    return _roundtrip(ds), truth


@pytest.mark.parametrize("planar", [0, 1])
def test_uncompressed_rgb_read_directly_gives_the_decoders_luma(planar):
    from PIL import Image

    from fieldkit.dicom.frames import decode_frames
    from fieldkit.inference.decode import _native_rgb, luma_frames
    ds, _ = _native_rgb_cine(planar)
    assert _native_rgb(ds, [1, 5]) is not None  # the direct path is the one taken
    gray, colour = luma_frames(ds, [1, 5, 6])
    rgb = decode_frames(ds, [1, 5, 6])
    want = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in rgb])
    assert np.array_equal(gray, want)
    assert colour == 0.0


def test_results_do_not_depend_on_how_frames_are_batched(registry):
    ds, _ = _native_rgb_cine(n_frames=20)
    ref = runner.analyse(ds, registry, batch_size=16)
    for bs in (1, 5, 32):
        a = runner.analyse(ds, registry, batch_size=bs)
        assert a.frame_numbers == ref.frame_numbers == list(range(1, 21))
        assert [g["label"] for g in a.gate["per_frame"]] == [g["label"] for g in ref.gate["per_frame"]]
        assert [g["p"] for g in a.gate["per_frame"]] == pytest.approx([g["p"] for g in ref.gate["per_frame"]], abs=2e-3)
        lung = [r for r in a.results if r.task == "lung"][0]
        assert lung.assessable and lung.result["b_line_counts"] == \
            [r for r in ref.results if r.task == "lung"][0].result["b_line_counts"]


def test_a_lung_result_is_the_same_whether_its_frames_were_read_beside_the_gate_or_after_it(registry, monkeypatch):
    """The lung frames are read beside the gate as they come; a clip that became a lung view
    late has some read after the gate. Both give the same result, to the last figure."""
    from fixtures.inference import lung_cine_dataset
    ds, _ = lung_cine_dataset(n_frames=12, n_blines=5, seed=11)
    beside = runner.analyse(ds, registry, batch_size=4)
    init = runner._ModelThread.__init__

    def none_ahead(self, *args):  # as if no frame had been a lung view while the gate ran
        init(self, *args)
        self.lung = None
    monkeypatch.setattr(runner._ModelThread, "__init__", none_ahead)
    after = runner.analyse(ds, registry, batch_size=4)
    (a,), (b,) = ([r for r in x.results if r.task == "lung"] for x in (beside, after))
    assert a.assessable and a.result["max_b_lines"] >= 3
    assert a.result == b.result and a.finding_probability == b.finding_probability
    assert np.array_equal(beside.overlay_frame, after.overlay_frame) and str(beside.overlay) == str(after.overlay)


def test_colour_doppler_later_in_a_cine_is_still_caught(registry):
    ds, _ = _native_rgb_cine(n_frames=32)
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(32, int(ds.Rows), int(ds.Columns), 3).copy()
    rgb[16:, 60:180, 100:220] = (220, 30, 30)  # a colour-flow box on the second half only
    ds.PixelData = rgb.tobytes()
    a = runner.analyse(ds, registry, batch_size=16)
    assert all(not r.assessable and "colour-flow Doppler" in r.reason for r in a.results)
    assert a.quality == "colour Doppler"


def test_a_frame_that_fails_mid_cine_is_not_assessable_and_nothing_hangs(registry):
    import threading
    ds = _read("examples_ybr_color.dcm")
    frames = runner._decode(ds, [0])[0]

    def decode(_ds, indices):
        if max(indices) >= 12:
            raise ValueError("corrupt frame 13")
        return np.repeat(frames[None], len(indices), axis=0)

    before = threading.active_count()
    a = runner.analyse(ds, registry, decode=decode, batch_size=4)
    assert all(not r.assessable and "corrupt frame 13" in r.reason for r in a.results)
    assert threading.active_count() == before  # the decode helper thread has ended


def test_jpeg_cine_luma_fast_path_equals_pillow_frame_by_frame():
    from PIL import Image
    from pydicom.encaps import get_frame

    from fieldkit.inference.decode import _jpeg_luma, _sof
    ds = _read("examples_ybr_color.dcm")
    gray, _ = _jpeg_luma(ds, list(range(30)), None)
    want = []
    for i in range(30):
        img = Image.open(io.BytesIO(get_frame(ds.PixelData, i, number_of_frames=30)))
        img.draft("L", img.size)
        want.append(np.asarray(img.convert("L")))
    assert np.array_equal(gray, np.stack(want))
    assert _sof(get_frame(ds.PixelData, 3, number_of_frames=30)) == (240, 320, 3)


def test_a_jpeg_cine_with_a_frame_of_another_size_is_not_decoded_as_garbage(registry):
    from PIL import Image
    from pydicom.encaps import encapsulate, get_frame

    from fieldkit.inference.decode import _jpeg_luma
    ds = _read("examples_ybr_color.dcm")
    frames = [get_frame(ds.PixelData, i, number_of_frames=30) for i in range(4)]
    wider = io.BytesIO()
    Image.open(io.BytesIO(frames[2])).convert("RGB").resize((336, 240)).save(wider, "JPEG", quality=90)
    frames[2] = wider.getvalue()
    ds.PixelData = encapsulate(frames)
    ds.NumberOfFrames = 4
    with pytest.raises(ValueError, match="frame 3 is 336x240"):
        _jpeg_luma(ds, [0, 1, 2, 3], None)
    a = runner.analyse(ds, registry)  # the general decoder then has its say; no B-lines from garbage
    assert all(not r.assessable for r in a.results)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda tail: b"\xff\xd8" + tail, st.binary(max_size=64)))
def test_the_jpeg_header_scan_never_crashes(data):
    from fieldkit.inference.decode import _sof
    out = _sof(data)
    assert out is None or (len(out) == 3 and all(isinstance(v, int) for v in out))


def test_frames_come_out_in_order_when_both_threads_decode(registry):
    import threading
    import time as _time
    ds = _read("examples_ybr_color.dcm")
    spec = registry.get("gate").entry["preprocessing"]
    who = set()

    def decode(_ds, indices):  # slow enough that the caller takes a share of the chunks
        who.add(threading.get_ident())
        _time.sleep(0.004 * (1 + indices[0] % 3))
        return np.stack([np.full((96, 128, 3), i, np.uint8) for i in indices])

    before = threading.active_count()
    idx = list(range(0, 58, 2))  # a stride, as the power policy makes
    got = list(runner._prepared(ds, idx, 8, decode, spec))
    assert [i for g in got for i in g[0]] == idx
    for chunk, frames, colour, x, _ in got:
        assert len(chunk) <= 8 and colour == 0.0
        assert [int(f[0, 0, 0]) for f in frames] == chunk  # each frame is the one named
        assert np.allclose(x[:, 0, 0, 0], np.array(chunk) / 255.0, atol=1e-6)
    assert len(who) == 2 and threading.get_ident() in who
    assert threading.active_count() == before
    early = runner._prepared(ds, idx, 8, decode, spec)
    next(early)
    early.close()  # a caller that stops early (time budget) leaves no thread behind
    assert threading.active_count() == before


def test_the_decode_helper_runs_at_the_inference_threads_priority(registry):
    import os
    import threading
    import time
    ds = _read("examples_ybr_color.dcm")
    spec = registry.get("gate").entry["preprocessing"]
    seen = {}

    def decode(_ds, indices):
        seen[threading.get_native_id()] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        time.sleep(0.003)  # slow enough that both threads take chunks
        return np.zeros((len(indices), 96, 128, 3), np.uint8)

    def worker():  # as the inference worker does: lower its own thread's priority first
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        list(runner._prepared(ds, list(range(40)), 8, decode, spec))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(seen) == 2 and set(seen.values()) == {10}  # caller and helper alike


def _text_items(items, found=None):
    """(concept meaning, text) of every TEXT content item, depth first."""
    found = [] if found is None else found
    for item in items:
        if item.ValueType == "TEXT":
            found.append((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
        _text_items(item.get("ContentSequence", []), found)
    return found


def test_not_assessable_says_why_and_an_invalid_accession_is_not_copied(registry, caplog):
    ds = _read("examples_ybr_color.dcm")  # an apical cardiac cine: neither a lung nor a FAST view
    ds.AccessionNumber = ["PR", "US"]  # two values where one is allowed, as one source sent it
    a = runner.analyse(ds, registry)
    with caplog.at_level("WARNING"):
        report = _roundtrip(sr.build_sr(ds, a))
    hd.sr.Comprehensive3DSR.from_dataset(report)
    reasons = [text for meaning, text in _text_items(report.ContentSequence) if meaning == "Reason not assessable"]
    assert sorted(reasons) == sorted(r.reason for r in a.results) and all(reasons)
    assert report.AccessionNumber == ""
    assert "AccessionNumber" in caplog.text and "PR" not in caplog.text
    ds.AccessionNumber = "A" * 17
    assert _roundtrip(sr.build_sr(ds, a)).AccessionNumber == ""
    ds.AccessionNumber = "ACC-42"
    assert _roundtrip(sr.build_sr(ds, a)).AccessionNumber == "ACC-42"


def test_findings_stored_before_the_rename_still_read_their_view_probability():
    """Rows written when the gate's figure was called "confidence" keep it, under its new name."""
    from fieldkit.inference import worker
    from fieldkit.records import view_probability
    old = {"task": "lung", "model": "lung-bline", "model_version": "1", "model_sha256": "0" * 64,
           "assessable": True, "reason": "", "confidence": 0.93, "result": {}, "frames": [1]}
    assert view_probability(old) == 0.93
    assert view_probability({**old, "view_probability": 0.5}) == 0.5
    r = worker._analysis_of([old]).results[0]
    assert r.view_probability == 0.93 and r.finding_probability is None


class _NoGate:
    """The registry as loaded when the gate model failed verification."""

    def __init__(self, real):
        self._real = real

    def get(self, task):
        return None if task == "gate" else self._real.get(task)


def test_each_refusal_before_any_frame_is_read_says_its_own_reason(registry):
    ds = _read("examples_ybr_color.dcm")
    a = runner.analyse(ds, _NoGate(registry))
    assert [r.reason for r in a.results] == ["no verified view/quality gate model is loaded"] * 2
    bare = _read("examples_ybr_color.dcm")
    del bare.PixelData
    a = runner.analyse(bare, registry)
    assert a.skipped == "the object has no pixel data (not an image)" and a.results == []


def test_the_default_frame_bound_is_the_kit_setting(registry):
    """Called without bounds, a long cine is sampled to `inference.max_frames`'s default."""
    from fieldkit.config import SETTINGS
    ds = _read("examples_ybr_color.dcm")
    frames = runner._decode(ds, [0])[0]
    big = copy.deepcopy(ds)
    big.NumberOfFrames = 130
    a = runner.analyse(big, registry, decode=lambda _ds, idx: np.repeat(frames[None], len(idx), axis=0))
    assert a.frames_analysed == SETTINGS["inference.max_frames"].default == 120
    assert a.subsample_reasons == ["120 of 130 frames, evenly spread (inference.max_frames=120)"]


@pytest.mark.parametrize("keyword", ["FloatPixelData", "DoubleFloatPixelData"])
def test_float_pixel_data_is_an_image_the_kit_cannot_read_not_a_non_image(registry, keyword):
    ds = _read("examples_ybr_color.dcm")
    del ds.PixelData
    setattr(ds, keyword, b"\0" * 64)
    a = runner.analyse(ds, registry)
    assert a.skipped == ""
    assert {r.task for r in a.results} == {"lung", "fast"}
    assert all(not r.assessable and "does not decode" in r.reason for r in a.results)


def test_an_empty_number_of_frames_is_one_frame(registry):
    ds, _ = _native_rgb_cine(n_frames=1)
    ds.NumberOfFrames = None
    a = runner.analyse(ds, registry)
    assert (a.frames_total, a.frames_analysed, a.frame_numbers) == (1, 1, [1])


def test_a_number_of_frames_that_is_not_a_number_is_named_in_the_reason(registry):
    ds, _ = _native_rgb_cine(n_frames=2)
    del ds.NumberOfFrames
    ds.add_new(0x00280008, "LO", "two")  # a broken export: text where IS digits belong
    a = runner.analyse(_roundtrip(ds), registry)
    assert [r.reason for r in a.results] == ["NumberOfFrames is not a number: 'two'"] * 2


def test_power_reasons_are_recorded_only_when_frames_were_skipped_for_power(registry):
    ds = _read("examples_ybr_color.dcm")  # 30 frames
    why = ("battery low (15%)", "hot (80 C)")
    full = runner.analyse(ds, registry, frame_stride=1, power_reasons=why)
    assert full.frames_analysed == 30 and not full.subsampled and full.subsample_reasons == []
    strided = runner.analyse(ds, registry, frame_stride=2, power_reasons=why)
    assert strided.subsample_reasons == ["every 2th frame (power policy): battery low (15%); hot (80 C)"]


def test_the_time_spent_is_recorded_in_milliseconds(registry):
    """Each stage's time is part of the total; the total is what the call took, to 0.1 ms."""
    ds, _ = _native_rgb_cine(n_frames=8)
    delay = 0.3

    calls = []

    def slow_decode(_ds, idx):  # a decoder that takes a known time
        calls.append(idx)
        time.sleep(delay)
        return runner._decode(_ds, idx)

    for failing in (False, True):  # a result, and a refusal
        ds.PixelData = ds.PixelData if not failing else ds.PixelData[:100]  # too short: does not decode
        calls.clear()
        t = time.perf_counter()
        a = runner.analyse(ds, registry, decode=slow_decode, batch_size=4)
        wall_ms = (time.perf_counter() - t) * 1000
        total = a.timing_ms["total"]
        assert delay * 1000 <= total <= wall_ms + 0.1 and round(total, 1) == total
        if not failing:  # two batches of 4; decoding overlaps the gate on a helper thread
            assert len(calls) == 2
            assert 2 * delay * 1000 <= a.timing_ms["decode_preprocess"] <= 2 * wall_ms
            assert a.timing_ms["gate"] <= total


def _rgb_frame(side: int, coloured: int) -> np.ndarray:
    """One grey speckle frame with `coloured` pure-red pixels where the colour check samples
    (every 2nd row and column)."""
    rng = np.random.default_rng(1)
    frame = np.repeat(rng.integers(0, 200, (side, side, 1), dtype=np.uint8), 3, axis=2)
    rows, cols = np.divmod(np.arange(coloured), side // 2)
    frame[2 * rows, 2 * cols] = (255, 0, 0)
    return frame[None]


def test_colour_at_the_limit_is_still_b_mode_and_above_it_is_doppler(registry):
    """COLOUR_LIMIT is the largest share of coloured pixels a B-mode frame may have."""
    from fieldkit.inference.preprocess import colour_fraction
    ds = _read("examples_rgb_color.dcm")
    side = 200  # 100 x 100 sampled pixels: 100 coloured is exactly 1 %
    at, above = _rgb_frame(side, 100), _rgb_frame(side, 101)
    assert colour_fraction(at) == runner.COLOUR_LIMIT < colour_fraction(above)
    a = runner.analyse(ds, registry, decode=lambda _ds, idx: at)
    assert a.quality != "colour Doppler" and not any("colour-flow" in r.reason for r in a.results)
    a = runner.analyse(ds, registry, decode=lambda _ds, idx: above)
    assert a.quality == "colour Doppler" and all("colour-flow" in r.reason for r in a.results)


def test_colour_doppler_is_refused_with_the_frames_it_was_seen_on(registry):
    from fieldkit.inference.decode import luma_frames
    ds, _ = _native_rgb_cine(n_frames=32)
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(32, int(ds.Rows), int(ds.Columns), 3).copy()
    rgb[16:, 60:180, 100:220] = (220, 30, 30)  # a colour-flow box on the second batch only
    ds.PixelData = rgb.tobytes()
    a = runner.analyse(ds, registry, batch_size=16)
    assert (a.view, a.quality) == ("other", "colour Doppler")
    # colour is checked on the chunk of 4 frames holding the batch's middle frame (0-based 24),
    # and that chunk is refused on its own: its frames, 1-based, and its middle frame shown
    assert a.frame_numbers == [25, 26, 27, 28]
    middle, _ = luma_frames(ds, [26], None)
    assert np.array_equal(a.overlay_frame, np.repeat(middle[0][:, :, None], 3, axis=2))
    for r in a.results:
        assert re.fullmatch(r"colour-flow Doppler on the image \(\d+% of pixels coloured\); "
                            r"the models read greyscale B-mode only", r.reason), r.reason
        assert (r.view, r.quality, r.assessable) == ("other", "colour Doppler", False)


def test_frames_of_the_smallest_side_are_read_and_smaller_ones_are_named(registry):
    ds = _read("examples_rgb_color.dcm")
    a = runner.analyse(ds, registry, decode=lambda _ds, idx: np.zeros((1, 32, 320, 3), np.uint8))
    assert [r.reason for r in a.results] == ["frames of 32x320 pixels are too small (< 64)"] * 2
    a = runner.analyse(ds, registry, decode=lambda _ds, idx: np.zeros((1, 64, 64, 3), np.uint8))
    assert a.frames_analysed == 1 and not any("too small" in r.reason for r in a.results)


def test_a_codec_failure_is_named_in_at_most_200_characters(registry):
    ds = _read("examples_rgb_color.dcm")

    def failing(_ds, idx):
        raise ValueError("x" * 300)

    a = runner.analyse(ds, registry, decode=failing)
    assert [r.reason for r in a.results] == ["pixel data does not decode: " + "x" * 200] * 2


STRIPES = "every column is about the same down the image (vertical stripes, not a B-mode image)"


def _cine_with_stripes(n_frames: int, striped: int):
    """A simulated lung cine whose first `striped` frames are vertical stripes."""
    ds, _ = _native_rgb_cine(n_frames=n_frames)
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(n_frames, int(ds.Rows), int(ds.Columns), 3).copy()
    band = ((np.arange(int(ds.Columns)) // 8) % 2 * 200 + 30).astype(np.uint8)
    rgb[:striped] = band[None, None, :, None]
    ds.PixelData = rgb.tobytes()
    return ds


@pytest.mark.parametrize("n_frames, striped, refused", [(12, 8, True), (8, 4, True), (12, 4, False), (1, 1, True)])
def test_no_model_speaks_when_half_the_frames_or_more_are_no_b_mode_image(registry, n_frames, striped, refused):
    """Counted over every batch of the cine (4 frames a batch here), half is enough."""
    a = runner.analyse(_cine_with_stripes(n_frames, striped), registry, batch_size=4)
    if refused:
        assert (a.view, a.quality) == ("other", "not B-mode")
        for r in a.results:
            assert r.reason == f"{STRIPES} on {striped} of {n_frames} frames"
            assert (r.view, r.quality, r.assessable) == ("other", "not B-mode", False)
    else:
        assert a.quality != "not B-mode" and not any("not a B-mode image" in r.reason for r in a.results)


def test_the_not_b_mode_reason_is_the_most_frequent_one(registry):
    ds = _cine_with_stripes(8, 5)  # frames 1-5 vertical stripes
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(8, int(ds.Rows), int(ds.Columns), 3).copy()
    band = ((np.arange(int(ds.Rows)) // 8) % 2 * 200 + 30).astype(np.uint8)
    rgb[5:7] = band[None, :, None, None]  # frames 6-7 horizontal stripes ("every row ..." sorts last)
    ds.PixelData = rgb.tobytes()
    a = runner.analyse(ds, registry, batch_size=4)
    assert [r.reason for r in a.results] == [f"{STRIPES} on 7 of 8 frames"] * 2


def test_frames_trimmed_from_memory_are_decoded_again_for_the_clinical_model(registry):
    """A cine longer than what is held in memory (32 frames past 3 batches): the lung model
    reads the first frames again from the object, and finds what it finds with all held."""
    ds, _ = _native_rgb_cine(n_frames=40)
    held = runner.analyse(ds, registry, batch_size=64, decode=runner._decode)
    trimmed = runner.analyse(ds, registry, batch_size=4, decode=runner._decode)
    lung_held, lung_trimmed = (next(r for r in a.results if r.task == "lung") for a in (held, trimmed))
    assert lung_held.assessable and lung_trimmed.frames == lung_held.frames == list(range(1, 41))
    assert lung_trimmed.result["frames"] == lung_held.result["frames"]

"""The gate's decisions in `runner.analyse`, in process and in milliseconds: the bundled
models' manifests (labels, thresholds, preprocessing) behind small sessions whose outputs
the test chooses, and frames made by the test (each frame a flat grey whose level names
it), so the oracle is the rule itself: below, at and above the gate's `min_prob`, the view
share, the most frequent label, the poor-quality labels, and every refusal's reason. The
same rules on real models and real DICOM files are in tests/test_inference_gate.py."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pydicom
import pytest

from fieldkit.inference import bundle as B
from fieldkit.inference import postprocess as post
from fieldkit.inference import runner
from fieldkit.inference.registry import BUILTIN_DIR, LoadedModel

# each test takes milliseconds: an analysis that never ends fails here, not at the suite's bound
pytestmark = pytest.mark.timeout(10)

LABELS = ["lung", "fast", "other", "no_contact", "too_dark", "saturated"]
LEVEL0 = 10  # grey level of frame 0; frame i is LEVEL0 + i


class Session:
    """An onnxruntime session's `run`, answering what `answer(frame_ids)` says; it keeps the
    frames (by their grey level) each call was given."""

    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def run(self, names, feeds):
        (x,) = feeds.values()
        ids = [int(round(float(v) * 255)) - LEVEL0 for v in x[:, 0, 0, 0]]
        self.seen.append(ids)
        return self.answer(ids)


def _model(bundle_dir: str, answer, thresholds: dict | None = None, **entry) -> LoadedModel:
    bundle = B.read_bundle(BUILTIN_DIR / bundle_dir)
    if thresholds is not None:
        entry["thresholds"] = thresholds
    bundle = dataclasses.replace(bundle, entry=dict(bundle.entry, **entry))
    return LoadedModel(bundle, Session(answer), "image", list(bundle.entry["outputs"]), threading.Lock())


def _row(label: str, p: float) -> np.ndarray:
    rest = (1.0 - p) / (len(LABELS) - 1)
    return np.array([p if name == label else rest for name in LABELS])


def gate(rows, thresholds: dict | None = None, calibration: dict | None = None) -> LoadedModel:
    """The bundled gate's manifest; frame i gets probabilities rows[i] (the last row for any
    later frame). Without a calibration the view probability shown is the gate's own."""
    return _model("view_quality", lambda ids: [np.log(np.stack([rows[min(i, len(rows) - 1)] for i in ids]))],
                  thresholds, calibration=calibration)


def lung() -> LoadedModel:
    return _model("lung_bline", lambda ids: [np.full((len(ids), 64), -8.0, np.float32),
                                             np.zeros((len(ids), 32), np.float32)])


def fast() -> LoadedModel:
    return _model("fast_fluid", lambda ids: [np.full((len(ids), 1, 64, 64), -8.0, np.float32)])


class Registry:
    def __init__(self, **models):
        self.models = models

    def get(self, task):
        return self.models.get(task)


def models(rows, thresholds=None, tasks=("lung", "fast")) -> Registry:
    return Registry(gate=gate(rows, thresholds), **{t: {"lung": lung, "fast": fast}[t]() for t in tasks})


class Frames:
    """The decoder: frame i is a flat grey of level LEVEL0 + i (RGB), `shape` pixels."""

    def __init__(self, shape=(64, 64), make=None):
        self.shape, self.make, self.calls = shape, make, []

    def __call__(self, ds, indices):
        self.calls.append(list(indices))
        if self.make is not None:
            return self.make(indices)
        return np.stack([np.full((*self.shape, 3), LEVEL0 + i, np.uint8) for i in indices])


def cine(n: int | None = 8, **extra) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PixelData = b"\0"  # never read: the test's decoder gives the frames
    if n is not None:
        ds.NumberOfFrames = n
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def run(ds, registry, frames=None, **kw):
    return runner.analyse(ds, registry, decode=frames or Frames(), **kw)


def result(a, task):
    return next(r for r in a.results if r.task == task)


SURE, UNSURE = _row("lung", 0.7), _row("lung", 0.5)  # the gate's min_prob is 0.6


def test_the_bundled_gate_states_the_threshold_these_tests_are_built_on():
    g = gate([SURE])
    assert g.entry["labels"] == LABELS and g.thresholds == {"min_prob": 0.6}


# -- refusals before any frame is judged -------------------------------------------------

def test_an_object_without_pixel_data_is_skipped_and_no_model_runs():
    ds = pydicom.Dataset()
    ds.NumberOfFrames = 8
    reg = models([SURE])
    a = run(ds, reg)
    assert a.skipped == "the object has no pixel data (not an image)" and a.results == []
    assert reg.get("gate").session.seen == []


@pytest.mark.parametrize("keyword", ["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
def test_any_kind_of_pixel_data_is_an_image(keyword):
    ds = pydicom.Dataset()
    setattr(ds, keyword, b"\0\0\0\0\0\0\0\0")
    ds.NumberOfFrames = 2
    a = run(ds, models([SURE]))
    assert a.skipped == "" and a.frames_total == 2 and result(a, "lung").assessable


@pytest.mark.parametrize("value, total", [(None, 1), ("", 1), (0, 1), (3, 3)])
def test_an_absent_empty_or_zero_number_of_frames_is_one_frame(value, total):
    ds = cine(None)
    if value is not None:
        ds.NumberOfFrames = value
    frames = Frames()
    a = run(ds, models([SURE]), frames)
    assert a.frames_total == total and frames.calls == [list(range(total))]
    assert a.frame_numbers == list(range(1, total + 1))


def test_a_number_of_frames_that_is_no_number_is_the_reason():
    ds = cine(None)
    ds.add_new(0x00280008, "LO", "many")  # a broken export: text where IS digits belong
    a = run(ds, models([SURE]))
    assert [(r.task, r.assessable, r.reason) for r in a.results] == [
        ("lung", False, "NumberOfFrames is not a number: 'many'"),
        ("fast", False, "NumberOfFrames is not a number: 'many'")]


def test_without_a_gate_no_clinical_model_speaks_and_each_says_why():
    reg = Registry(lung=lung(), fast=fast())
    a = run(cine(), reg)
    assert a.frames_total == 8 and (a.view, a.quality) == ("unknown", "unknown")
    for r, task in zip(a.results, ("lung", "fast")):
        assert (r.task, r.assessable, r.reason) == (task, False, "no verified view/quality gate model is loaded")
        assert (r.view_probability, r.result, r.view, r.quality, r.frames) == (0.0, {}, "unknown", "unknown", [])
        assert r.model == {"name": reg.get(task).name, "version": reg.get(task).version,
                           "sha256": reg.get(task).sha256}
    assert reg.get("lung").session.seen == [] and "total" in a.timing_ms


def test_only_the_clinical_models_loaded_give_results():
    a = run(cine(), models([SURE], tasks=("fast",)))
    assert [r.task for r in a.results] == ["fast"]


def test_frames_of_an_unexpected_layout_are_the_reason():
    frames = Frames(make=lambda idx: np.zeros((len(idx), 64, 64), np.uint8))
    a = run(cine(), models([SURE]), frames)
    assert result(a, "lung").reason == ("unexpected frame layout (4, 64, 64) uint8 "
                                        "(want frames x rows x cols x RGB)")


def test_pixels_that_do_not_decode_are_named_in_at_most_200_characters():
    def broken(idx):
        raise ValueError("x" * 300)

    a = run(cine(), models([SURE]), Frames(make=broken))
    assert result(a, "lung").reason == "pixel data does not decode: " + "x" * 200
    assert result(a, "fast").reason == result(a, "lung").reason


@pytest.mark.parametrize("shape, ok", [((64, 64), True), ((63, 80), False), ((80, 63), False)])
def test_frames_smaller_than_64_pixels_are_the_reason(shape, ok):
    a = run(cine(), models([SURE]), Frames(shape))
    lung_result = result(a, "lung")
    assert lung_result.assessable is ok
    if not ok:
        assert lung_result.reason == f"frames of {shape[0]}x{shape[1]} pixels are too small (< 64)"
    else:
        assert a.image_size == (64, 64)


def test_colour_doppler_is_refused_on_the_frames_it_was_seen_on():
    def coloured(idx):
        f = np.stack([np.full((64, 64, 3), LEVEL0 + i, np.uint8) for i in idx])
        f[:, :, :, 0] = 250  # every pixel strongly red
        return f

    reg = models([SURE])
    a = run(cine(8), reg, Frames(make=coloured), batch_size=4)
    for r in a.results:
        assert not r.assessable and (r.view, r.quality) == ("other", "colour Doppler")
        assert r.reason == ("colour-flow Doppler on the image (100% of pixels coloured); "
                            "the models read greyscale B-mode only")
    assert a.frame_numbers == [1, 2, 3, 4] and (a.view, a.quality) == ("other", "colour Doppler")
    assert a.overlay_frame[0, 0].tolist() == [250, LEVEL0 + 2, LEVEL0 + 2]  # the middle one of the batch
    assert reg.get("gate").session.seen == []


# -- frames sampled and the time budget --------------------------------------------------

def test_the_power_policy_stride_and_its_reasons_are_recorded():
    frames = Frames()
    a = run(cine(8), models([SURE]), frames, frame_stride=2, power_reasons=("battery low", "hot"))
    assert a.frame_numbers == [1, 3, 5, 7] and a.frames_analysed == 4 and a.subsampled
    assert a.subsample_reasons == ["every 2th frame (power policy): battery low; hot"]
    assert sorted(i for c in frames.calls for i in c) == [0, 2, 4, 6]


def test_power_reasons_without_a_stride_are_not_recorded():
    a = run(cine(8), models([SURE]), power_reasons=("battery low",))
    assert a.frames_analysed == 8 and not a.subsampled and a.subsample_reasons == []


def test_a_stride_with_no_power_reason_keeps_its_own_reason():
    a = run(cine(8), models([SURE]), frame_stride=2)
    assert a.subsample_reasons == ["every 2th frame (power policy)"]


def test_at_most_max_frames_are_analysed_evenly_spread():
    a = run(cine(10), models([SURE]), max_frames=4)
    assert a.frame_numbers == [1, 4, 7, 10] and a.frames_total == 10
    assert a.subsample_reasons == ["4 of 10 frames, evenly spread (inference.max_frames=4)"]


def test_the_default_bound_is_120_frames():
    a = run(cine(130), models([SURE]))
    assert a.frames_analysed == 120


def test_the_time_budget_stops_after_two_batches_and_says_so():
    """The model thread has the next batch to go on with while the one before it finishes:
    the budget is checked when a batch ends, so the batch handed over after it is analysed
    too, and nothing more."""
    a = run(cine(8), models([SURE]), batch_size=2, time_budget_s=0)
    assert a.frame_numbers == [1, 2, 3, 4] and a.frames_total == 8 and a.subsampled
    assert a.subsample_reasons == ["time budget of 0s reached after 4 frames"]
    assert result(a, "lung").assessable and result(a, "lung").frames == [1, 2, 3, 4]


def test_the_default_time_budget_is_a_minute(monkeypatch):
    monkeypatch.setattr(runner, "TURN_CHECK_FRAMES", 0)  # only the frames' batches take time (the check: below)
    start = time.perf_counter()
    clock = [start]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def slow(ids):
        clock[0] += 59.0 if len(ids) and ids[0] < 4 else 2.0  # the first batch takes 59 s, later ones 2
        return [np.log(np.stack([SURE] * len(ids)))]

    reg = Registry(gate=_model("view_quality", slow), lung=lung())
    a = run(cine(20), reg, batch_size=4)
    # the first batch ended at 59 s: go on (the third batch); the second at 61 s: stop (the
    # third, handed over meanwhile, is analysed)
    assert a.frame_numbers == list(range(1, 13))
    assert a.subsample_reasons == ["time budget of 60s reached after 12 frames"]


# -- the gate: per frame, then the view, the quality and who may speak --------------------

@pytest.mark.parametrize("p, decided", [(0.59, False), (0.5999, False), (0.6, True), (0.6001, True), (0.7, True)])
def test_a_frame_is_decided_at_or_above_min_prob(p, decided):
    a = run(cine(4), models([_row("lung", p)]))
    label = "lung" if decided else "uncertain"
    assert a.gate["counts"] == {label: 4}
    assert [f["label"] for f in a.gate["per_frame"]] == [label] * 4
    lung_result = result(a, "lung")
    assert lung_result.assessable is decided
    if decided:
        assert lung_result.view_probability == round(p, 3) and lung_result.frames == [1, 2, 3, 4]
    else:
        assert lung_result.reason == ("not a lung view of usable quality (view/quality gate per frame: "
                                      "uncertain 4/4; threshold p>=0.6)")


@pytest.mark.parametrize("thresholds, p, decided", [({"min_prob": 0.8}, 0.75, False), ({"min_prob": 0.8}, 0.85, True),
                                                    ({}, 0.55, False), ({}, 0.65, True)])
def test_the_threshold_is_the_gate_manifests_own_or_else_0_6(thresholds, p, decided):
    a = run(cine(4), models([_row("lung", p)], thresholds))
    assert result(a, "lung").assessable is decided
    if not decided:
        assert result(a, "lung").reason.endswith(f"threshold p>={thresholds.get('min_prob', 0.6):g})")


def test_the_gates_record_names_each_frame_its_label_probability_and_the_model(monkeypatch):
    monkeypatch.setattr(runner, "TURN_CHECK_FRAMES", 0)  # the gate sees each frame once (the check: below)
    rows = [_row("lung", 0.8123456), _row("fast", 0.91), UNSURE, _row("too_dark", 0.99)]
    reg = models(rows)
    a = run(cine(4), reg)
    g = reg.get("gate")
    assert a.gate == {"per_frame": [{"frame": 1, "label": "lung", "p": 0.812}, {"frame": 2, "label": "fast", "p": 0.91},
                                    {"frame": 3, "label": "uncertain", "p": 0.5},
                                    {"frame": 4, "label": "too_dark", "p": 0.99}],
                      "counts": {"fast": 1, "lung": 1, "too_dark": 1, "uncertain": 1},
                      "model": {"name": g.name, "version": g.version, "sha256": g.sha256}}
    assert reg.get("gate").session.seen and sorted(i for s in g.session.seen for i in s) == [0, 1, 2, 3]


@pytest.mark.parametrize("label", LABELS)
def test_the_view_and_quality_follow_the_gates_label(label):
    a = run(cine(4), models([_row(label, 0.95)]))
    assert a.view == (label if label in ("lung", "fast", "other") else "unknown")
    assert a.quality == (label if label in ("no_contact", "too_dark", "saturated") else "good")


def test_frames_the_gate_is_unsure_of_are_no_view_of_good_quality():
    a = run(cine(4), models([UNSURE]))
    assert (a.view, a.quality) == ("unknown", "good")


@pytest.mark.parametrize("per_label, view, quality", [
    ({"lung": 5, "fast": 3}, "lung", "good"),
    ({"fast": 5, "lung": 3}, "fast", "good"),
    ({"other": 2, "lung": 1}, "other", "good"),
    ({"no_contact": 5, "too_dark": 3}, "unknown", "no_contact"),  # the most frequent poor label
    ({"too_dark": 3, "no_contact": 5}, "unknown", "no_contact"),
    ({"saturated": 3, "too_dark": 1, "lung": 4}, "lung", "saturated"),  # poor on half the frames: poor
    ({"too_dark": 3, "lung": 5}, "lung", "good"),  # poor on fewer than half
])
def test_the_view_is_the_most_frequent_label_and_the_quality_the_most_frequent_poor_one(per_label, view, quality):
    rows = [_row(label, 0.95) for label, n in per_label.items() for _ in range(n)]
    a = run(cine(len(rows)), models(rows))
    assert a.gate["counts"] == dict(sorted(per_label.items()))
    assert (a.view, a.quality) == (view, quality)


@pytest.mark.parametrize("sure, speaks", [(3, False), (4, True), (5, True), (8, True)])
def test_the_model_speaks_on_half_the_frames_in_view_or_more_and_on_those_only(sure, speaks):
    rows = [SURE if i % 8 < sure else UNSURE for i in range(8)]
    reg = models(rows)
    a = run(cine(8), reg)
    lung_result, fast_result = result(a, "lung"), result(a, "fast")
    share = round(sure / 8, 3)
    assert lung_result.assessable is speaks and lung_result.result["view_share"] == share
    assert (lung_result.view, lung_result.quality) == (a.view, "good")
    if speaks:
        assert lung_result.frames == list(range(1, sure + 1)) and lung_result.reason == ""
        assert lung_result.view_probability == 0.7
        seen = reg.get("lung").session.seen  # those frames only, in order, a few at a time (the
        assert [i for b in seen for i in b] == list(range(sure))  # model runs beside the post-processing)
        assert all(len(b) <= runner.PREP_CHUNK for b in seen)
        assert [f["frame"] for f in lung_result.result["frames"]] == list(range(1, sure + 1))
        assert lung_result.result["pattern"] == "A-line pattern"  # what the lung session said: no B-line
        assert 0 <= a.timing_ms["lung"] <= a.timing_ms["total"]
    else:
        assert lung_result.result == {"view_share": share} and lung_result.view_probability == 0.0
        assert lung_result.frames == list(range(1, 9))
        # the lung model may have read the lung view frames while the clip so far was one
        # (the first batch): nothing more, and nothing of it in the result
        assert {i for b in reg.get("lung").session.seen for i in b} <= set(range(sure))
        assert "lung" not in a.timing_ms
    assert not fast_result.assessable and fast_result.result == {"view_share": 0.0}
    assert "fast" not in a.timing_ms


def test_the_view_probability_is_the_mean_over_the_frames_used():
    rows = [_row("lung", p) for p in (0.9, 0.8, 0.61, 0.3)]
    a = run(cine(4), models(rows))
    assert result(a, "lung").view_probability == round((0.9 + 0.8 + 0.61) / 3, 3)
    assert result(a, "lung").frames == [1, 2, 3]


def test_a_temperature_rescales_the_view_probability_shown_not_the_gates_decision():
    """The bundled gate's signed temperature sharpens what is shown (it is under-confident);
    which frames it passes is still decided on its own probabilities and min_prob."""
    rows = [_row("lung", p) for p in (0.9, 0.8, 0.61, 0.59)]
    cal = {"method": "temperature", "t": 0.5}
    a = run(cine(4), Registry(gate=gate(rows, calibration=cal), lung=lung(), fast=fast()))
    shown = post.view_calibrated(np.stack(rows[:3]), cal)[:, LABELS.index("lung")]
    assert result(a, "lung").frames == [1, 2, 3]  # 0.59 sharpened is over 0.6, but not passed
    assert result(a, "lung").view_probability == round(float(shown.mean()), 3)
    assert result(a, "lung").view_probability > round((0.9 + 0.8 + 0.61) / 3, 3)
    bundled = B.read_bundle(BUILTIN_DIR / "view_quality").entry["calibration"]
    assert bundled["method"] == "temperature" and 0 < bundled["t"] < 1


def test_the_fast_model_speaks_on_fast_frames():
    reg = models([_row("fast", 0.9)])
    a = run(cine(4), reg)
    fast_result, lung_result = result(a, "fast"), result(a, "lung")
    assert fast_result.assessable and fast_result.frames == [1, 2, 3, 4] and fast_result.view == "fast"
    assert fast_result.result["fluid_present"] is False and fast_result.result["view_share"] == 1.0
    assert fast_result.finding_probability == fast_result.result.get("finding_probability")
    assert reg.get("fast").session.seen == [[0, 1, 2, 3]]
    assert not lung_result.assessable and lung_result.reason.startswith("not a lung view")
    assert a.overlay["kind"] == "fast"


def test_a_single_frame_in_view_is_all_of_the_frames():
    a = run(cine(1), models([SURE]))
    lung_result = result(a, "lung")
    assert lung_result.assessable and lung_result.frames == [1] and lung_result.result["view_share"] == 1.0


@pytest.mark.parametrize("n, sure, share", [(6, 2, 0.333), (7, 5, 0.714)])
def test_the_view_share_is_given_to_three_places(n, sure, share):
    a = run(cine(n), models([SURE if i < sure else UNSURE for i in range(n)]))
    assert result(a, "lung").result["view_share"] == share


# -- _why_not: what a clinician reads when the gate abstains ------------------------------

def test_an_abstention_names_the_view_and_every_label_count_most_frequent_first():
    rows = [SURE if i % 3 == 0 else UNSURE for i in range(8)]
    a = run(cine(8), models(rows))
    says = "view/quality gate per frame: uncertain 5/8, lung 3/8; threshold p>=0.6"
    assert result(a, "lung").reason == f"not a lung view of usable quality ({says})"
    assert result(a, "fast").reason == f"not a FAST (abdominal) view of usable quality ({says})"


def test_labels_counted_alike_are_named_in_the_order_of_their_names():
    rows = [_row("other", 0.9)] * 3 + [_row("lung", 0.9)] * 2 + [_row("fast", 0.9)] * 2
    a = run(cine(7), models(rows, {"min_prob": 0.65}))
    assert result(a, "fast").reason == (
        "not a FAST (abdominal) view of usable quality (view/quality gate per frame: "
        "other 3/7, fast 2/7, lung 2/7; threshold p>=0.65)")
    assert runner._why_not("lung", {"a": 1, "b": 4}, 5, 0.5) == (
        "not a lung view of usable quality (view/quality gate per frame: b 4/5, a 1/5; threshold p>=0.5)")


# -- not B-mode, and what is shown ---------------------------------------------------------

def _stripes(striped: int):
    """Frames whose first `striped` are vertical stripes (every column alike down the image)."""
    def make(idx):
        out = []
        for i in idx:
            f = np.full((64, 64, 3), LEVEL0 + i, np.uint8)
            if i < striped:
                f[:, 1::2] = 200
            out.append(f)
        return np.stack(out)
    return make


@pytest.mark.parametrize("n, striped, refused", [(8, 4, True), (8, 5, True), (8, 3, False), (1, 1, True)])
def test_no_model_speaks_when_half_the_frames_or_more_are_no_b_mode_image(n, striped, refused):
    a = run(cine(n), models([SURE]), Frames(make=_stripes(striped)))
    for r in a.results:
        if refused:
            assert not r.assessable and (r.view, r.quality) == ("other", "not B-mode")
            assert r.reason == (f"every column is about the same down the image (vertical stripes, not a B-mode "
                                f"image) on {striped} of {n} frames")
        else:
            assert r.task == "fast" or r.assessable
    if refused:
        assert (a.view, a.quality) == ("other", "not B-mode")


def test_the_frame_shown_is_the_findings_frame_or_else_the_middle_one():
    spoke = run(cine(8), models([SURE]))
    summary = result(spoke, "lung").result["summary_frame"]
    assert spoke.overlay_frame.shape == (64, 64, 3) and spoke.overlay["kind"] == "lung"
    assert spoke.overlay_frame[0, 0, 0] == LEVEL0 + summary - 1
    silent = run(cine(8), models([UNSURE]))
    assert silent.overlay_frame[0, 0].tolist() == [LEVEL0 + 4] * 3 and silent.overlay == {}


def again(frames, n: int) -> list[int]:
    """The frames of an n-frame cine decoded more than once."""
    redone = sorted(i for c in frames.calls for i in c)
    assert set(redone) == set(range(n))
    return sorted(set(i for i in redone if redone.count(i) > 1))


def test_a_long_cine_keeps_the_last_frames_and_decodes_again_only_the_one_shown():
    """80 frames, 4 a batch: only the last 32 stay in memory. The lung model reads all 80
    as they come (beside the gate), so none is decoded again but the frame the overlay
    shows, when it is no longer held."""
    frames = Frames()
    reg = models([SURE])
    a = run(cine(80), reg, frames, batch_size=4)
    lung = result(a, "lung")
    assert lung.assessable
    assert [i for s in reg.get("lung").session.seen for i in s] == list(range(80))
    shown = lung.result["summary_frame"] - 1
    assert again(frames, 80) == ([shown] if shown < 48 else [])
    assert a.overlay_frame[0, 0, 0] == LEVEL0 + shown
    silent = run(cine(80), models([UNSURE]), batch_size=4)
    assert silent.overlay_frame[0, 0, 0] == LEVEL0 + 48  # the middle one is gone: the first still held


def test_lung_frames_read_before_the_clip_was_a_lung_view_are_analysed_at_the_end():
    """Frame 0 is a lung view but the rest of its batch is not: the lung model does not read
    it then. Once the clip reads as a lung view it reads the next batches as they come, and
    frame 0 at the end; the result lists every lung frame in order, as one pass would."""
    rows = [SURE, UNSURE, UNSURE, UNSURE] + [SURE] * 8
    reg = models(rows)
    a = run(cine(12), reg, batch_size=4)
    lung = result(a, "lung")
    assert lung.assessable and lung.frames == [1] + list(range(5, 13))
    assert reg.get("lung").session.seen == [[4, 5, 6, 7], [8, 9, 10, 11], [0]]
    assert [f["frame"] for f in lung.result["frames"]] == [1] + list(range(5, 13))
    whole = run(cine(12), models([SURE] + [SURE] * 11), batch_size=4)
    assert result(whole, "lung").result["frames"][0] == lung.result["frames"][0]


@pytest.mark.parametrize("task, ahead", [("fast", False), ("lung", False), ("lung", True)])
def test_frames_no_longer_held_are_decoded_again_from_the_clip_and_set_upright(task, ahead, monkeypatch):
    """80 frames shown inverted (the marker at the bottom), 4 a batch. The FAST model, and
    the lung model when no frame was read beside the gate, read all 80 after the gate: the
    first 48, no longer held, are decoded again from the same object by the decoder given,
    and set upright as the ones held. Lung frames read beside the gate are not decoded
    again, only the overlay's frame when it is no longer held; it is shown as stored. (Each
    frame's own level is in its bottom-left corner as stored: its top-left corner once
    upright, where the model's input is read.)"""
    monkeypatch.setattr(runner.marker, "find", lambda image: "bottom left")
    if not ahead:
        init = runner._ModelThread.__init__

        def none_ahead(self, *args):
            init(self, *args)
            self.lung = None
        monkeypatch.setattr(runner._ModelThread, "__init__", none_ahead)

    def inverted(idx):
        out = np.full((len(idx), 64, 64, 3), 250, np.uint8)
        for j, i in enumerate(idx):
            out[j, 32:, :32] = LEVEL0 + i  # a quarter: no stripe across or down the frame
        return out
    frames, asked = Frames(make=inverted), []

    def decode(ds, idx):
        asked.append(ds)
        return frames(ds, idx)
    ds, reg = cine(80), models([_row(task, 0.7)])
    a = runner.analyse(ds, reg, decode=decode, batch_size=4)
    assert a.turned_upright and result(a, task).assessable
    assert [i for s in reg.get(task).session.seen for i in s] == list(range(80))
    shown = a.overlay["frame"] - 1
    assert again(frames, 80) == ([shown] if shown < 48 else []) if ahead else again(frames, 80)[:48] == list(range(48))
    assert all(d is ds for d in asked)
    assert np.array_equal(a.overlay_frame, inverted([shown])[0])


def test_a_short_cine_is_decoded_once():
    frames = Frames()
    run(cine(12), models([SURE]), frames, batch_size=4)
    assert sorted(i for c in frames.calls for i in c) == list(range(12))


def test_each_stage_time_is_recorded_in_milliseconds_to_a_tenth(monkeypatch):
    # no check of the view's orientation: it runs on the model thread while this one
    # analyses the lung frames, and on one clock for both its time would count twice
    monkeypatch.setattr(runner, "TURN_CHECK_FRAMES", 0)
    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def decode(idx):  # each stage's time with more decimals than the tenth of a millisecond kept
        clock[0] += 10.00123
        return np.stack([np.full((64, 64, 3), LEVEL0 + i, np.uint8) for i in idx])

    def answer(ids):
        clock[0] += 20.00456
        return [np.log(np.stack([SURE] * len(ids)))]

    def lung_answer(ids):
        clock[0] += 40.00789
        return [np.full((len(ids), 64), -8.0, np.float32), np.zeros((len(ids), 32), np.float32)]

    reg = Registry(gate=_model("view_quality", answer), lung=_model("lung_bline", lung_answer))
    a = run(cine(4), reg, Frames(make=decode), batch_size=4)
    assert a.timing_ms == {"decode_preprocess": 10_001.2, "gate": 20_004.6, "lung": 40_007.9, "total": 70_013.7}


def test_with_batches_of_16_frames_the_last_32_to_48_stay_in_memory(monkeypatch):
    """Memory is trimmed to the last 32 frames once more than 3 batches are held: with
    batches of 16 (decoded a whole batch at a time here, so every batch is 16 frames), an
    80-frame cine ends holding frames 32 to 79. The middle frame (40) is still there to be
    shown when no model spoke; when the lung model speaks, only the frame it shows is
    decoded again, if it is one of frames 0 to 31."""
    monkeypatch.setattr(runner, "PREP_CHUNK", 16)
    silent = run(cine(80), models([UNSURE]))
    assert silent.overlay_frame[0, 0, 0] == LEVEL0 + 40
    frames = Frames()
    spoke = run(cine(80), models([SURE]), frames)
    shown = result(spoke, "lung").result["summary_frame"] - 1
    assert again(frames, 80) == ([shown] if shown < 32 else [])


def test_a_refusal_records_its_time_in_milliseconds_to_a_tenth(monkeypatch):
    clock = [1000.0]

    def perf_counter():  # each reading 12.34 ms after the one before
        clock[0] += 0.01234
        return clock[0]

    monkeypatch.setattr(time, "perf_counter", perf_counter)
    a = run(cine(), Registry(lung=lung()))  # no gate: refused before any frame is read
    assert a.timing_ms == {"total": 12.3}


# -- a view turned on the screen -----------------------------------------------------------

# Frame i holds grey LEVEL0 + i in its top-left quarter (what the session reads) and another
# grey in each of the other three, so the session can tell which turn of which frame it sees:
# a quarter turn (counter-clockwise) brings the top-right quarter to the top left, a half turn
# the bottom-right one, three quarters the bottom-left one.
CORNER = {1: (slice(None, 32), slice(32, None), 150), 2: (slice(32, None), slice(32, None), 200),
          3: (slice(32, None), slice(None, 32), 170)}
TURN_ID = {k: level - LEVEL0 for k, (_, _, level) in CORNER.items()}  # turn k of frame i reads TURN_ID[k] + i


def corner_frames(indices, shape=(64, 64)):
    out = np.zeros((len(indices), *shape, 3), np.uint8)
    h, w = shape[0] // 2, shape[1] // 2
    for n, i in enumerate(indices):
        out[n, :h, :w] = LEVEL0 + i
        out[n, :h, w:], out[n, h:, w:], out[n, h:, :w] = 150 + i, 200 + i, 170 + i
    return out


def turned_gate(view_p, turned_p, shape=None, thresholds=None) -> LoadedModel:
    """Frame i upright reads as view_p(i) (a probability row); turn k of frame i as the view
    "lung" at turned_p(k, i)."""
    def answer(ids):
        rows = []
        for i in ids:
            k = next((k for k, base in TURN_ID.items() if base <= i < base + 10), None)
            rows.append(view_p(i) if k is None else _row("lung", turned_p(k, i - TURN_ID[k])))
        return [np.log(np.stack(rows))]
    m = _model("view_quality", answer, thresholds)
    if shape is not None:  # a gate whose input is not square
        pre = dict(m.entry["preprocessing"], size=list(shape))
        m = dataclasses.replace(m, bundle=dataclasses.replace(m.bundle, entry=dict(m.entry, preprocessing=pre)))
    return m


def lung_at(p):
    return lambda i: _row("lung", p)


@pytest.mark.parametrize("p_turned, turned", [(0.7 + runner.TURN_MARGIN + 0.001, True),
                                              (0.7 + runner.TURN_MARGIN - 0.001, False), (0.5, False)])
def test_a_clip_whose_view_frames_read_better_turned_is_not_assessable(p_turned, turned):
    reg = Registry(gate=turned_gate(lung_at(0.7), lambda k, i: p_turned), lung=lung())
    a = run(cine(8), reg, Frames(make=corner_frames))
    lung_result = result(a, "lung")
    assert lung_result.assessable is not turned
    if turned:
        assert lung_result.reason == ("the lung view seems turned on the screen (the view gate reads it better "
                                      "turned a quarter or half turn); the models read upright views only")
        assert a.gate["counts"] == {"turned": 8} and {f["label"] for f in a.gate["per_frame"]} == {"turned"}
        assert a.view == "unknown"
    else:
        assert a.gate["counts"] == {"lung": 8}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_each_turn_alone_can_show_the_view_is_turned(k):
    g = turned_gate(lung_at(0.7), lambda turn, i: 0.9 if turn == k else 0.5)
    a = run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert not result(a, "lung").assessable and a.gate["counts"] == {"turned": 8}
    # the first 3 view frames, a quarter turn, a half turn and three quarters of each
    assert g.session.seen[1] == [TURN_ID[turn] + i for turn in (1, 2, 3) for i in range(3)]


def test_a_frame_read_too_surely_to_be_beaten_by_the_margin_is_not_looked_at_turned():
    # frames 0 and 2 read as lung just over 1 - TURN_MARGIN (no turn can read better by the
    # margin: a probability is at most 1); frame 1 just under it, so it alone is turned
    over, under = 1 - runner.TURN_MARGIN + 1e-9, 1 - runner.TURN_MARGIN - 1e-9
    g = turned_gate(lambda i: _row("lung", under if i == 1 else over), lambda k, i: 1.0)
    a = run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert g.session.seen[1] == [TURN_ID[k] + 1 for k in (1, 2, 3)]
    # one of the three checked frames reads better turned: the clip is upright
    assert result(a, "lung").assessable and a.gate["counts"] == {"lung": 8}


def test_a_clip_read_surely_upright_is_never_looked_at_turned():
    g = turned_gate(lung_at(1 - runner.TURN_MARGIN + 1e-9), lambda k, i: 1.0)
    a = run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert [len(seen) for seen in g.session.seen] == [4, 4]  # the two batches, nothing turned
    assert result(a, "lung").assessable


def test_a_frame_at_the_threshold_is_a_view_and_is_checked():
    # min_prob set to exactly the probability the frames get (0.6 reads back as 0.6000000000000001)
    at = float(runner.post.softmax(np.log(_row("lung", 0.6)))[0])
    g = turned_gate(lung_at(0.6), lambda k, i: 0.9, thresholds={"min_prob": at})
    a = run(cine(4), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert a.gate["counts"] == {"turned": 4}


def test_most_of_the_frames_checked_decide():
    g = turned_gate(lung_at(0.7), lambda k, i: 0.9 if i in (0, 1) else 0.5)  # two of the three read better turned
    assert not result(run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames)), "lung").assessable
    g = turned_gate(lung_at(0.7), lambda k, i: 0.9 if i == 0 else 0.5)  # one of three: the clip is upright
    a = run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert result(a, "lung").assessable and a.gate["counts"] == {"lung": 8}


def test_only_frames_the_gate_passes_as_a_view_are_checked_and_a_fast_view_is_named():
    rows = {0: UNSURE, 1: _row("other", 0.9)}
    g = turned_gate(lambda i: rows.get(i, _row("fast", 0.8)), lambda k, i: 0.95)
    a = run(cine(4), Registry(gate=g, fast=fast()), Frames(make=corner_frames))
    assert g.session.seen[1] == [TURN_ID[k] + i for k in (1, 2, 3) for i in (2, 3)]  # not the unsure frame, nor the other view
    fast_result = result(a, "fast")
    assert not fast_result.assessable and fast_result.reason.startswith(
        "the FAST (abdominal) view seems turned on the screen")
    assert a.gate["counts"] == {"other": 1, "turned": 2, "uncertain": 1}


def test_a_clip_mostly_of_another_view_is_named_so_even_when_its_few_view_frames_are_turned():
    rows = {i: _row("other", 0.9) for i in range(3, 8)}  # 3 lung frames (turned), 5 of another view
    g = turned_gate(lambda i: rows.get(i, _row("lung", 0.7)), lambda k, i: 0.9)
    a = run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert a.gate["counts"] == {"other": 5, "turned": 3}
    assert result(a, "lung").reason.startswith("not a lung view of usable quality (view/quality gate per frame: "
                                               "other 5/8, turned 3/8")


@pytest.mark.parametrize("n", [1, 2])
def test_a_short_clip_of_another_view_is_not_called_turned(n):
    g = turned_gate(lambda i: _row("other", 0.9), lambda k, i: 0.9)
    a = run(cine(n), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert result(a, "lung").reason.startswith("not a lung view of usable quality")
    assert len(g.session.seen) == 1  # no view frame: nothing to check


def test_a_gate_of_input_that_is_not_square_is_asked_about_the_half_turn_only():
    g = turned_gate(lung_at(0.7), lambda k, i: 0.9, shape=(64, 96))
    a = run(cine(4), Registry(gate=g, lung=lung()), Frames(make=lambda idx: corner_frames(idx, (64, 96))))
    assert g.session.seen[1] == [TURN_ID[2] + i for i in range(3)]
    assert a.gate["counts"] == {"turned": 4}


def test_the_check_gathers_its_frames_across_batches():
    # one lung frame a batch: the three frames checked come from three batches, and all count
    g = turned_gate(lung_at(0.7), lambda k, i: 0.9 if i in (0, 1) else 0.5)  # frames 0 and 1 read better turned
    a = run(cine(6), Registry(gate=g, lung=lung()), Frames(make=corner_frames), batch_size=1)
    assert [len(s) for s in g.session.seen[:6]] == [1, 3, 1, 3, 1, 3]
    assert not result(a, "lung").assessable and a.gate["counts"] == {"turned": 6}


def test_a_later_batch_checks_only_what_the_first_left_to_check():
    rows = {i: _row("other", 0.9) for i in (1, 2, 3)}  # the first batch holds one lung frame (0)
    g = turned_gate(lambda i: rows.get(i, _row("lung", 0.7)), lambda k, i: 0.5)
    run(cine(8), Registry(gate=g, lung=lung()), Frames(make=corner_frames), batch_size=4)
    assert [len(s) for s in g.session.seen] == [4, 1 * 3, 4, 2 * 3]  # frame 0, then frames 4 and 5


def test_two_frames_checked_one_turned_is_no_majority():
    g = turned_gate(lung_at(0.7), lambda k, i: 0.9 if i == 0 else 0.5)
    a = run(cine(2), Registry(gate=g, lung=lung()), Frames(make=corner_frames))
    assert result(a, "lung").assessable and a.gate["counts"] == {"lung": 2}


def test_the_lung_model_runs_the_next_frames_while_the_last_ones_are_post_processed(monkeypatch):
    """The model's second batch waits until the first frames have been post-processed: it
    can, because a helper thread runs the model ahead (run one after the other, it would
    wait in vain). It runs in that helper; the frames come back in order."""
    first_done, threads = threading.Event(), []
    frames_post = post.lung_frames

    def lung_frames(*args, **kw):
        out = frames_post(*args, **kw)
        first_done.set()
        return out

    def answer(ids):
        threads.append(threading.current_thread().name)
        if ids[0] > 0:
            threads.append(first_done.wait(10))  # True unless it waited in vain
        return [np.full((len(ids), 64), -8.0, np.float32), np.zeros((len(ids), 32), np.float32)]

    monkeypatch.setattr(post, "lung_frames", lung_frames)
    reg = models([SURE])
    reg.models["lung"] = _model("lung_bline", answer)
    a = run(cine(8), reg)
    assert result(a, "lung").assessable and result(a, "lung").frames == list(range(1, 9))
    assert [i for s in reg.get("lung").session.seen for i in s] == list(range(8))
    assert threads == ["inference-model_0", "inference-model_0", True], threads


def test_a_lung_model_that_fails_on_a_later_batch_fails_the_analysis_and_leaves_no_thread():
    def answer(ids):
        if 5 in ids:
            raise RuntimeError("onnxruntime: out of memory")
        return [np.full((len(ids), 64), -8.0, np.float32), np.zeros((len(ids), 32), np.float32)]

    reg = models([SURE])
    reg.models["lung"] = _model("lung_bline", answer)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(cine(8), reg)
    assert not [t for t in threading.enumerate() if t.name.startswith("inference-model")]


def _job(lung_frames=None, *, failed=False, finished=True):
    """A batch handed to the model thread: its lung model outputs are there (on
    `lung_frames` frames, or on none: None), or it failed; `finished`: the model thread is
    through with it."""
    from concurrent.futures import Future
    job = runner._Job([0], (64, 64), np.zeros((1, 1, 64, 64), np.float32), Future(), Future())
    if failed:
        job.lung.set_exception(RuntimeError("onnxruntime: out of memory"))
    else:
        job.lung.set_result(None if lung_frames is None else (list(range(lung_frames)), [], 0.0))
    if finished:
        job.done.set_result(None)
    return job


def _worth(pending, ready):
    models = runner._ModelThread(_model("view_quality", None), None, 0.6, {})
    try:
        models._pending.extend(pending)
        return models._worth(ready)
    finally:
        models.close()


def test_lung_frames_wait_for_a_batch_of_eight_while_the_model_thread_runs():
    eight = runner.LUNG_AT_ONCE
    running = _job(finished=False)  # the model thread is still on a later batch
    four, three, one = _job(4), _job(eight - 5), _job(1)
    assert not _worth([four, three, running], [four, three])  # 7 frames: wait for more
    assert _worth([four, three, one, running], [four, three, one])  # 8: analysed together
    assert not _worth([running], [])  # nothing there
    # batches with no lung frame count none
    assert not _worth([four, _job(None), _job(None), running], [four, _job(None), _job(None)])


def test_lung_frames_are_analysed_at_once_when_the_model_thread_has_run_all_or_a_batch_failed():
    four = _job(4)
    assert _worth([four], [four])  # nothing more is coming soon
    assert not _worth([four], [])
    failed = _job(failed=True)
    assert _worth([four, failed, _job(finished=False)], [four, failed])  # its error surfaces now

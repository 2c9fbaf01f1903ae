"""Lung sliding (the trauma half of eFAST): simulated cines with and without sliding go
through the kit's own path (gate, lung model, its pleural row) and are called present,
absent or not assessable; a fresh seed meets the floors measured on another
(models/train/sliding.py), a moving probe and a single frame abstain with the reason in
words, the M-mode strip shows seashore or barcode (the simulator's and the one the kit makes
for the patient page), and the SR carries the coded item."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from PIL import Image

from fieldkit.inference import postprocess as post
from fieldkit.inference import runner, sr
from fieldkit.web import clip_images
from fixtures.inference import load_train_module, lung_cine_dataset

FRESH_SEED = 63_001  # neither the tuning seed nor the seed of the published figures
N_CLIPS = 200  # per class: a fair sample for a floor near 1
# the lower bounds of the 95 % intervals measured on models/train/sliding.py's test seed
FLOOR = {"absent": 0.98, "present": 0.98}
# share of the clips (still or slightly drifting probe) the kit may leave unjudged; measured
# 2 % and 6.5 % (clips with sliding pay for the lung-point check)
MAX_ABSTAINED = {"absent": 0.05, "present": 0.10}
N_POINTS = 100
POINT_PRESENT_MAX = 0.25  # lung-point clips still called "present" (measured 15 %)


@pytest.fixture(scope="module")
def sliding():
    load_train_module("simulator")
    load_train_module("evaluate")
    return load_train_module("sliding")


@pytest.mark.parametrize("truth,name", [(False, "absent"), (True, "present")])
def test_fresh_clips_meet_the_measured_floor(registry, sliding, truth, name):
    got = sliding.figures(sliding.table(registry, FRESH_SEED + int(truth), N_CLIPS, classes=(truth,)))[name]
    assert got["clips"] == N_CLIPS
    assert got["rate"] >= FLOOR[name], got
    assert got["abstained"] <= MAX_ABSTAINED[name] * N_CLIPS, got


def test_a_lung_point_is_mostly_not_called_present(registry, sliding):
    """Sliding on one side of a line only: the edge of a pneumothorax. The kit abstains
    ("partial") rather than call it present; the share it still misses is the measured limit."""
    row = sliding.table(registry, FRESH_SEED + 2, N_POINTS, classes=(sliding.POINT,))[sliding.POINT]
    assert row["present"] <= POINT_PRESENT_MAX * N_POINTS, row
    assert row["partial"] >= 0.6 * N_POINTS, row


def test_a_moving_probe_abstains_and_never_reads_as_sliding(registry, sliding, simulator):
    rng = np.random.default_rng(FRESH_SEED + 7)
    verdicts = [sliding.verdict(registry, simulator.simulate_sliding_cine(rng, sliding=i % 2 == 0, motion=3.0)[0])
                for i in range(10)]
    assert all(v["status"] == "not assessable" for v in verdicts), verdicts
    codes = [v["reason_code"] for v in verdicts]
    # not_lung: the gate itself did not pass the blurred frames (the whole lung finding abstains)
    assert set(codes) <= {"probe_moved", "no_pleura", "not_lung"}, codes
    assert codes.count("probe_moved") >= 7, codes
    moved = next(v for v in verdicts if v["reason_code"] == "probe_moved")
    assert moved["reason"] == "the probe moved: the chest wall changes between frames"


@pytest.mark.parametrize("n,code,words", [(1, "single_frame", "a single frame: lung sliding needs motion (a cine)"),
                                          (3, "too_few_frames", "3 lung frames: at least 4 are needed")])
def test_a_single_frame_or_too_few_are_not_assessable(registry, n, code, words):
    ds, _ = lung_cine_dataset(n_frames=n, n_blines=2, seed=19)
    lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
    assert lung.assessable, lung.reason  # the B-line finding stands on its own
    s = lung.result["sliding"]
    assert s["status"] == "not assessable" and s["reason_code"] == code and s["reason"].startswith(words), s
    assert s["frames"] == lung.frames


def test_no_clear_pleural_line_abstains(simulator, registry):
    """The lung model unsure where the pleura is (its row probability spread out) or seeing
    it at very different rows: no verdict."""
    frames, _ = simulator.simulate_sliding_cine(np.random.default_rng(FRESH_SEED + 9), sliding=True)
    from fieldkit.inference.preprocess import preprocess
    model = registry.get("lung")
    x = preprocess(frames, model.entry["preprocessing"])
    _, rows = model.run(x)
    # the model's own rows, made sure: a clear line at them is judged (this clip slides)
    rows = np.where(rows == rows.max(axis=1, keepdims=True), 10.0, -10.0).astype(rows.dtype)
    judged = post.lung_sliding(x[:, 0], rows, range(1, 9))
    assert judged["status"] == "present", judged
    flat = post.lung_sliding(x[:, 0], np.zeros_like(rows), range(1, 9))
    assert flat["status"] == "not assessable" and flat["reason"] == "no clear pleural line found", flat
    wandering = rows.copy()
    wandering[::2] = np.roll(rows[::2], 12, axis=1)  # every other frame: the peak 12 bins lower
    moved = post.lung_sliding(x[:, 0], wandering, range(1, 9))
    assert moved["reason_code"] == "no_pleura", moved


def test_m_mode_seashore_with_sliding_barcode_without(simulator):
    """Time change along the M-mode strip below the pleura against above it: sand under still
    waves when the lung slides; lines all the way down when it does not."""
    def below_over_above(slides):
        """Per M-mode line at a quarter, half and three quarters of the width (one may lie
        in a rib's shadow, where nothing is seen)."""
        frames, truth = simulator.simulate_sliding_cine(np.random.default_rng(FRESH_SEED + 11), sliding=slides,
                                                        n_frames=30, probe="linear", n_blines=0, noise_sd=2.0)
        row, w = int(round(truth["pleura_row"])), frames.shape[2]
        out = []
        for col in (w // 4, w // 2, 3 * w // 4):
            strip = simulator.m_mode(frames, col).astype(float)
            assert strip.shape == (frames.shape[1], 30)
            change = np.abs(np.diff(strip, axis=1)).mean(1)  # per depth, frame to frame
            out.append(change[row - 1:row + 12].mean() / change[row - 30:row - 4].mean())
        return out
    assert max(below_over_above(True)) > 2.0  # seashore
    assert max(below_over_above(False)) < 1.5  # barcode


def _kits_strips(registry, sliding, frames):
    """The kit's sliding result on a clip, and the M-mode PNG it makes from it for the
    patient page as (depth, time) arrays with one sample per frame, and their margins."""
    s = next(r for r in runner.analyse(sliding.cine_dataset(frames), registry).results if r.task == "lung").result["sliding"]
    assert s["m_mode"], s
    clip = clip_images.clip_of(frames, {"frames": len(frames)})
    png = clip_images.m_mode_png(clip, s["m_mode"]["columns"], s["m_mode"]["pleura_row"])
    assert png.startswith(b"\x89PNG")
    img = np.asarray(Image.open(io.BytesIO(png)), float)
    n, px, edge, gap = len(frames), clip_images.M_MODE_FRAME_PX, clip_images.M_MODE_MARGIN, clip_images.M_MODE_GAP
    strips, margins, x = [], [], 0
    while x < img.shape[1]:
        strips.append(img[:, x + edge:x + edge + n * px])
        margins += [img[:, x:x + edge], img[:, x + edge + n * px:x + 2 * edge + n * px]]
        x += 2 * edge + n * px + gap
    assert x - gap == img.shape[1], img.shape  # nothing else in the image
    return s, strips, margins


@pytest.mark.parametrize("probe", ["linear", "convex"])
def test_the_kits_m_mode_strip_is_seashore_with_sliding_barcode_without(registry, sliding, simulator, probe):
    """The strip the patient page shows, made by the kit where its sliding judge saw the
    pleura, read against the simulator's truth: a real image column of every frame in time
    order, sand below the pleura when the lung slides and lines all the way down when it
    does not, the pleural row ticked in the margins only. (A convex probe's sector: the
    column has chest wall in view above the pleura, not the black beside the sector.)"""
    n = 30
    for slides in (True, False):
        frames, truth = simulator.simulate_sliding_cine(np.random.default_rng(FRESH_SEED + 21), sliding=slides,
                                                        n_frames=n, probe=probe, n_blines=0, noise_sd=2.0)
        s, strips, margins = _kits_strips(registry, sliding, frames)
        assert len(strips) == 1, s
        wide = strips[0]
        assert wide.shape == (frames.shape[1], n * clip_images.M_MODE_FRAME_PX)
        strip = wide[:, ::clip_images.M_MODE_FRAME_PX]
        assert all(np.array_equal(wide[:, k::clip_images.M_MODE_FRAME_PX], strip)
                   for k in range(clip_images.M_MODE_FRAME_PX))  # each frame widened, not resampled
        # one column of the frames, the same in every frame, in time order
        grey = frames.astype(float) @ np.array([0.299, 0.587, 0.114])
        col = int(np.argmin([np.abs(grey[0, :, c] - strip[:, 0]).mean() for c in range(frames.shape[2])]))
        assert np.abs(grey[:, :, col].T - strip).max() <= 1, col
        # read at the true pleural row of that column; the truth of that column says
        # whether it slides (between the ribs of a lung that slides)
        c = s["m_mode"]["columns"][0]
        assert truth["sliding_columns"][c] == slides, (c, s)
        ratio = sliding.m_mode_strip_ratio(strip, truth["pleura_rows"][c])
        assert (ratio > sliding.SEASHORE) if slides else (ratio < sliding.BARCODE), (slides, ratio, s)
        for m in margins:  # dark but for a tick at the pleural row (the lung model gives
            # its row in 32 bins of the height: within one bin of the truth)
            lit = np.flatnonzero(m.max(1) > 128)
            assert len(lit) and abs(lit.mean() - truth["pleura_rows"][c]) <= frames.shape[1] / 32, lit
            assert m[lit.max() + 2:].max() == 0 and m[:lit.min() - 1].max() == 0


def test_a_lung_point_gets_a_strip_per_side_one_seashore_one_barcode(registry, sliding, simulator):
    """Sliding on one side of a line only (the simulator's lung point): where the kit
    abstains as "partial" it draws a strip on each side, left to right, and the simulator's
    truth (one side slides, the other does not) shows in them."""
    rng = np.random.default_rng(FRESH_SEED + 23)
    judged = 0
    for _ in range(6):
        frames, truth = simulator.simulate_sliding_cine(rng, sliding=True, lung_point=True, n_frames=30,
                                                        probe="linear", n_blines=0, noise_sd=2.0)
        s, strips, _ = _kits_strips(registry, sliding, frames)
        if s["reason_code"] != "partial":
            continue
        judged += 1
        left, right = s["m_mode"]["columns"]
        assert left < right and len(strips) == 2, s
        # one on each side of the simulator's line: one where the pleura slides, one where it does not
        assert sorted(truth["sliding_columns"][[left, right]]) == [False, True], (s, truth["lung_point"])
        for col, strip in zip((left, right), strips):
            ratio = sliding.m_mode_strip_ratio(strip[:, ::clip_images.M_MODE_FRAME_PX], truth["pleura_rows"][col])
            assert (ratio > sliding.SEASHORE) if truth["sliding_columns"][col] else (ratio < sliding.BARCODE), (ratio, s)
    assert judged >= 3  # measured: most lung points abstain as "partial"


def _sliding_item(report):
    """(value meaning, reason text or None) of the SR's lung sliding item, read back."""
    buf = io.BytesIO()
    report.save_as(buf, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    import highdicom as hd
    hd.sr.Comprehensive3DSR.from_dataset(ds)  # highdicom reads it back as a valid report

    def walk(items):
        for i in items:
            yield i
            yield from walk(getattr(i, "ContentSequence", []))
    found = [i for i in walk(ds.ContentSequence) if getattr(i, "ValueType", "") == "CODE"
             and i.ConceptNameCodeSequence[0].CodeValue == "LSLIDE"]
    assert len(found) == 1
    item = found[0]
    assert item.ConceptNameCodeSequence[0].CodingSchemeDesignator == sr.SCHEME
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Lung sliding"
    reason = [c.TextValue for c in getattr(item, "ContentSequence", []) if c.ValueType == "TEXT"]
    return item.ConceptCodeSequence[0], (reason[0] if reason else None)


def test_the_sr_carries_lung_sliding_as_a_coded_item(registry, sliding, simulator):
    rng = np.random.default_rng(FRESH_SEED + 13)
    for slides, meaning, value in ((True, "Present", codes_present()), (False, "Absent", codes_absent())):
        frames, _ = simulator.simulate_sliding_cine(rng, sliding=slides)
        ds = sliding.cine_dataset(frames)
        analysis = runner.analyse(ds, registry)
        lung = next(r for r in analysis.results if r.task == "lung")
        assert lung.result["sliding"]["status"] == meaning.lower(), lung.result["sliding"]
        code, reason = _sliding_item(sr.build_sr(ds, analysis))
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == value and reason is None
        # the items that were there before are still there
        assert any(i.ConceptNameCodeSequence[0].CodeMeaning == "Confluent B-lines" for i in _codes(ds, analysis))
    ds, _ = lung_cine_dataset(n_frames=1, n_blines=2, seed=19)
    analysis = runner.analyse(ds, registry)
    code, reason = _sliding_item(sr.build_sr(ds, analysis))
    assert code.CodeMeaning == "Not assessable" and reason == "a single frame: lung sliding needs motion (a cine)"


def codes_present():
    from pydicom.sr.codedict import codes
    return (codes.DCM.Present.value, "DCM", codes.DCM.Present.meaning)


def codes_absent():
    from pydicom.sr.codedict import codes
    return (codes.DCM.Absent.value, "DCM", codes.DCM.Absent.meaning)


def _codes(ds, analysis):
    report = sr.build_sr(ds, analysis)

    def walk(items):
        for i in items:
            yield i
            yield from walk(getattr(i, "ContentSequence", []))
    return [i for i in walk(report.ContentSequence) if getattr(i, "ValueType", "") == "CODE"]


@pytest.mark.parametrize("kind", ["blank", "saturated", "noise", "stripes"])
def test_frames_no_lung_shows_never_read_as_sliding(kind):
    """Whatever the frames (and a confident pleural row): a verdict or a reason, never an
    exception, and never "present" for frames without a still chest wall over a moving lung."""
    rng = np.random.default_rng(5)
    frames = {"blank": np.zeros((8, 128, 128)), "saturated": np.ones((8, 128, 128)),
              "noise": rng.random((8, 128, 128)),
              "stripes": np.tile((np.arange(128) % 8 < 4).astype(float)[None, :, None], (8, 1, 128))}[kind]
    logits = np.full((8, 32), -5.0)
    logits[:, 10] = 5.0  # the model sure of a row at a third of the height
    got = post.lung_sliding(frames, logits, range(1, 9))
    assert got["status"] in ("absent", "not assessable") and got["reason"], got
    if got["status"] == "not assessable":
        assert got["reason_code"] in ("no_pleura", "probe_moved"), got

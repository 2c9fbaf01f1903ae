"""B-line mimics, on fresh simulated frames and through the kit's own path (DICOM cine ->
runner.analyse -> findings).

A B-line arises from the pleural line and reaches the bottom of the screen without fading.
Simulated frames with no true B-line but a vertical artefact that is not one (E-lines and
needle ring-down that start above the pleura, Z-lines that fade, acoustic shadows,
instrument reverberation, a dead transducer element, subcutaneous emphysema, and an A-line
control) must not read as B-lines. The issue's target is, per mimic type, at most 5 % of
frames with any B-line and at most 1 % with a B-line pattern. The bundled lung model (4.x)
was trained with mimics as negatives (45 % of its frames), and the post-processing check on
its pleural row (the bundle's learned line check, with the rules for wide bands) turns away
what it still scores (at a lower threshold in frames of three runs or more, where mimics
are rare). Since bundle 4.1.0 the check also measures the chest wall averaged along the
line, and was fitted on three times as many runs of the mimics that start above the
pleura: every type meets both targets on these seeds, E-lines with 1.5 % (6 % with 4.0.0).
The seeds here were used neither in training, nor to fit or choose the check.

Measured on these seeds: see README, "B-line mimics".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.inference import postprocess as post
from fieldkit.inference import runner
from fieldkit.inference.registry import BUILTIN_DIR
from fixtures.inference import load_train_module, lung_cine_dataset

MIMICS = load_train_module("simulator").MIMICS
LINE_CHECK = json.loads((BUILTIN_DIR / "lung_bline" / "manifest.json").read_text())["thresholds"]["line_check"]
FRAMES, SEED = 200, 700_000  # per mimic type: 1 % is at most 2 frames of 200
TARGET = (0.05, 0.01)  # (max share of frames with any B-line, with a B-line pattern)
# measured on these seeds: E-lines 1.5 % / 0 %, needle 1 % / 0 %, emphysema 1.5 % / 0 % (lung
# bundle 4.0.0: 6 % / 0.5 %, 4.5 % / 0 %, 2.5 % / 0 %; lung model 3.0.0: 4.5 % / 0 %, 5.5 % / 0 %,
# 5 % / 0 %; with one check threshold for every frame, 4.5 % / 0 %, 5 % / 0 %, 5 % / 0 %; 2.0.0:
# 9.5 % / 0 %, 7 % / 0 %, 12.5 % / 0 %; 1.1.0, trained without mimics, with the learned line check: 24 % / 0.5 %, 22 % / 0 %, 39.5 % / 8.5 %; with
# the rules alone: 31 % / 0.5 %, 34 % / 0.5 %, 57.5 % / 11 %)
CLIPS, CLIP_FRAMES = 8, 3
# the lower end of the pattern sensitivity's 95 % interval on the card of the model trained
# without mimics: learning the mimics must not cost true B-lines more than that
PREVIOUS_SENSITIVITY_LOW = 0.7146


@pytest.mark.parametrize("mimic", MIMICS)
def test_b_line_mimics_are_not_called_b_lines_in_frames(registry, evaluate, simulator, mimic):
    model = registry.get("lung")
    rng = np.random.default_rng(SEED + MIMICS.index(mimic))
    res = evaluate.lung_frames(model.session, model.thresholds,
                               [simulator.simulate_lung(rng, n_blines=0, mimic=mimic) for _ in range(FRAMES)])
    before = np.mean([c > 0 for c, _ in res])
    any_after = np.mean([f["b_lines"] > 0 for _, f in res])
    pattern = np.mean([f["score"] >= 0 for _, f in res])
    print(f"{mimic}: any B-line {before:.1%} (model alone) -> {any_after:.1%}, pattern {pattern:.1%}")
    max_any, max_pattern = TARGET
    assert any_after <= max_any, f"{mimic}: {any_after:.1%} of frames show a B-line (model alone {before:.1%})"
    assert pattern <= max_pattern, f"{mimic}: {pattern:.1%} of frames read 'B-line pattern'"


def test_true_b_line_patterns_are_still_found(registry, evaluate):
    model = registry.get("lung")
    fresh = evaluate.lung_metrics(model.session, model.thresholds, n=600, seed=SEED + 50)
    sens = fresh["bline_pattern_sensitivity"]["value"]
    assert sens >= PREVIOUS_SENSITIVITY_LOW, f"pattern sensitivity {sens} on true B-lines"


def _rates(registry, mimic, n_blines=0):
    """(frames with any B-line before/after the check, clips with a pattern before/after, frames, clips)."""
    any0 = any1 = pat0 = pat1 = frames = clips = 0
    for i in range(CLIPS):
        ds, _ = lung_cine_dataset(n_frames=CLIP_FRAMES, n_blines=n_blines or 0, seed=SEED + 100 * MIMICS.index(mimic) + i
                                  if mimic else SEED + i, mimic=mimic, probe="linear" if i % 2 else "convex")
        lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
        assert lung.assessable, lung.reason  # a lung view with an artefact is still a lung view
        after = lung.result["b_line_counts"]
        before = [f["b_lines"] + len(f["not_b_lines"]) for f in lung.result["frames"]]
        any0 += sum(c > 0 for c in before); any1 += sum(c > 0 for c in after)
        pat0 += max(before) >= 3; pat1 += lung.result["pattern"] == "B-line pattern"
        frames += len(after); clips += 1
    print(f"{mimic or 'true B-lines'}: any B-line {any0}->{any1}/{frames} frames, pattern {pat0}->{pat1}/{clips} clips")
    return any0 / frames, any1 / frames, pat0 / clips, pat1 / clips


@pytest.mark.parametrize("mimic", MIMICS)
def test_no_mimic_clip_reads_b_line_pattern(registry, mimic):
    any_before, any_after, pat_before, pat_after = _rates(registry, mimic)
    # clips: the pattern needs 30 % of the frames; emphysema still makes one now and then
    assert pat_after <= (0.25 if mimic == "emphysema" else 0), \
        f"{mimic}: {pat_after:.0%} of clips read 'B-line pattern' (before the check {pat_before:.0%})"
    assert any_after <= any_before  # the check only ever removes lines


def test_the_finding_counts_what_was_turned_away(registry):
    ds, _ = lung_cine_dataset(n_frames=2, n_blines=0, seed=SEED, mimic="e_line", probe="convex")
    lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
    assert all(m["why"] for f in lung.result["frames"] for m in f["not_b_lines"])
    assert lung.result["max_vertical_artefacts_not_b_lines"] == max(len(f["not_b_lines"]) for f in lung.result["frames"])


def test_true_b_lines_still_make_a_pattern(registry):
    """The cost of the check on clips with 4 true B-lines (the pattern needs 3 in a frame)."""
    any_before, any_after, pat_before, pat_after = _rates(registry, None, n_blines=4)
    assert any_after >= 0.95, f"true B-lines: only {any_after:.0%} of frames show one"
    assert pat_after >= 0.70, f"true B-lines: pattern on {pat_after:.0%} of clips (before the check {pat_before:.0%})"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), a=st.floats(-10, 140), width=st.floats(0, 40), pleura=st.floats(-20, 150),
       black=st.booleans())
def test_the_mimic_check_answers_for_any_column_and_pleural_row(seed, a, width, pleura, black):
    """Columns at the edges, a pleural row off the image, a black frame: a reason or "", never an error."""
    img = np.random.default_rng(seed).random((128, 128)).astype(np.float32)
    if black:
        img[:] = 0
    why = post.bline_mimic(img, (a, a + width), pleura)
    assert isinstance(why, str)
    # and with the bundle's learned line check deciding (measurements of any line are finite)
    why = post.bline_mimic(img, (a, a + width), pleura, check=LINE_CHECK, peak=0.9)
    assert isinstance(why, str)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), frames=st.integers(1, 6), bins=st.sampled_from([16, 32, 64]),
       black=st.sampled_from(["none", "one frame", "left half"]))
def test_a_batch_of_any_frames_is_analysed_as_each_frame_alone(seed, frames, bins, black):
    """Any stack the runner may hand over (random frames, evidence and pleura, frames or
    halves of them black): the batch's results are each frame's own, and never an error."""
    rng = np.random.default_rng(seed)
    imgs = rng.random((frames, 128, 128)).astype(np.float32)
    if black == "one frame":
        imgs[rng.integers(frames)] = 0.0
    elif black == "left half":
        imgs[:, :, :64] = 0.0
    probs = rng.random((frames, bins)) ** 3  # mostly low, with runs above the threshold
    logits = rng.normal(0, 3, (frames, 16))
    thresholds = {"bline": 0.5, "pattern_min_blines": 3, "line_check": LINE_CHECK}
    alone = [post.lung_frame(p, lg, img, thresholds) for p, lg, img in zip(probs, logits, imgs)]
    assert post.lung_frames(probs, logits, imgs, thresholds) == alone

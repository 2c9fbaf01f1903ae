"""The finding's probability means what it says, on fresh simulated data.

Each shown probability (the calibrated probability of a B-line pattern, of free fluid, and
the gate's probability of the view) is checked on a fresh seed, never used in training, in
fitting the calibration or for the card: predictions are put in ten equal-width probability
bins, and the expected calibration error (the frame-weighted mean gap between the mean
probability and the observed share in each bin) must be at most 0.05. Through the kit's own
path the finding carries that probability, the SR carries it under its own code, apart from
the view probability.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from fieldkit.inference import postprocess as post
from fieldkit.inference import runner, sr
from fieldkit.inference.registry import BUILTIN_DIR
from fixtures.inference import lung_cine_dataset

MAX_ECE = 0.05


def _manifest(name):
    return json.loads((BUILTIN_DIR / name / "manifest.json").read_text())


def _bins(p, y):
    """(mean probability, observed share, frames) per non-empty bin: printed when a test fails."""
    idx = np.minimum((np.asarray(p) * 10).astype(int), 9)
    return [(round(float(p[idx == b].mean()), 3), round(float(y[idx == b].mean()), 3), int((idx == b).sum()))
            for b in range(10) if (idx == b).any()]


@pytest.mark.parametrize("task,bundle,frames,seed", [("lung", "lung_bline", 800, 95_001),
                                                      ("fast", "fast_fluid", 400, 95_002)])
def test_finding_probability_is_calibrated_on_a_fresh_seed(registry, evaluate, task, bundle, frames, seed):
    model = registry.get(task)
    cal = _manifest(bundle)["calibration"]
    scores = evaluate.lung_scores if task == "lung" else evaluate.fast_scores
    s, truth = scores(model.session, model.thresholds, frames, seed)[:2]
    p = np.array([post.calibrated(v, cal) for v in s])
    got = evaluate.ece(p, truth)
    assert 0.1 < truth.mean() < 0.9, "the fresh set must hold both answers for the check to mean anything"
    assert got <= MAX_ECE, f"{task}: ECE {got:.3f} > {MAX_ECE} on seed {seed}; bins {_bins(p, truth)}"
    # what the card says the calibration did is what the signed manifest holds
    assert cal["ece_after"] <= MAX_ECE and cal["method"] == "platt"


def test_view_probability_is_calibrated_on_a_fresh_seed(registry, evaluate):
    """The view probability as the kit shows it (the gate's, temperature-scaled by its
    signed calibration: the gate is trained with label smoothing and is under-confident)."""
    gate = registry.get("gate")
    cal = _manifest("view_quality")["calibration"]
    p, truth = evaluate.gate_view_probs(gate.session, 200, 95_003, cal)
    got = evaluate.ece(p, truth)
    assert got <= MAX_ECE, f"view: ECE {got:.3f}; bins {_bins(p, truth)}"
    assert cal["method"] == "temperature" and cal["ece_after"] <= MAX_ECE


def test_ece_tells_an_overconfident_model_from_a_calibrated_one(evaluate):
    """The measure itself can fail: 90 % said, half right, is far off; said as often as right is not."""
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.5
    assert evaluate.ece(np.full(2000, 0.9), y) > 0.3
    p = rng.random(4000)
    assert evaluate.ece(p, rng.random(4000) < p) < 0.05


def _items(ds):
    for i in getattr(ds, "ContentSequence", []):
        yield i
        yield from _items(i)


def _number(report, code):
    return [float(i.MeasuredValueSequence[0].NumericValue) for i in _items(report)
            if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeValue == code]


def _roundtrip(ds):
    import io
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("n_blines,pattern", [(5, "B-line pattern"), (0, "A-line pattern")])
def test_the_finding_carries_its_probability_and_the_sr_both_figures(registry, n_blines, pattern):
    ds, _ = lung_cine_dataset(n_frames=4, n_blines=n_blines, seed=12)
    a = runner.analyse(_roundtrip(ds), registry)
    lung = next(r for r in a.results if r.task == "lung")
    assert lung.assessable and lung.result["pattern"] == pattern
    assert lung.result["finding_probability_of"] == "B-line pattern"
    # the probability is the calibrated score of the frame the clip's summary came from
    frame = next(f for f in lung.result["frames"] if f["frame"] == lung.result["summary_frame"])
    want = post.calibrated(frame["pattern_score"], _manifest("lung_bline")["calibration"])
    assert lung.finding_probability == pytest.approx(want, abs=2e-3)
    assert (lung.finding_probability > 0.5) == (n_blines > 0)
    report = _roundtrip(sr.build_sr(ds, a))
    assert _number(report, "FINDP") == [pytest.approx(100 * lung.finding_probability, abs=0.06)]
    assert _number(report, "VIEWP") == [pytest.approx(100 * lung.view_probability, abs=0.06)]


def test_a_bundle_without_calibration_claims_no_finding_probability(registry):
    """A hospital's bundle that carries no calibration: the page says so, the SR has no FINDP."""
    import copy
    lung = registry.get("lung")
    entry = copy.deepcopy(lung.entry)
    entry.pop("calibration")
    ds, _ = lung_cine_dataset(n_frames=2, n_blines=4, seed=13)
    original = lung.bundle.entry
    lung.bundle.entry = entry
    try:
        a = runner.analyse(ds, registry)
    finally:
        lung.bundle.entry = original
    r = next(r for r in a.results if r.task == "lung")
    assert r.assessable and r.finding_probability is None and "finding_probability_of" not in r.result
    assert "FINDP" not in [i.ConceptNameCodeSequence[0].CodeValue for i in _items(sr.build_sr(ds, a))
                           if "ConceptNameCodeSequence" in i]


@pytest.mark.parametrize("bundle, spoil, words", [
    ("view_quality", lambda c: c.__setitem__("t", 0), "needs a positive finite temperature t"),
    ("view_quality", lambda c: c.__setitem__("t", float("inf")), "needs a positive finite temperature t"),
    ("view_quality", lambda c: c.__setitem__("method", "isotonic"), "method 'isotonic' is not none, platt or temperature"),
    ("lung_bline", lambda c: c.pop("a"), "needs finite a and b"),
])
def test_a_bundle_whose_calibration_the_kit_cannot_use_is_refused_naming_it(model_copy, signing_key, bundle, spoil, words):
    """Signed by a trusted key, but its probabilities could not be formed: refused at verification."""
    from fieldkit.inference import bundle as B
    key, config = signing_key
    path = model_copy / bundle / "manifest.json"
    entry = json.loads(path.read_text())
    spoil(entry["calibration"])
    path.write_text(json.dumps(entry))
    B.sign_bundle(path.parent, key)
    verified = B.verify_bundle(B.read_bundle(path.parent), B.trusted_keys(config["inference.trusted_keys"]))
    assert not verified.ok and verified.status.endswith(f"manifest calibration {words}"), verified.status
    assert post.calibration_problem(_manifest(bundle)["calibration"]) is None  # the shipped one is usable
    assert post.calibration_problem("0.5") == "is not an object"

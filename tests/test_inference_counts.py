"""B-line counts to confluence, on fresh simulated frames (seeds never used in training, for
the calibration or for the card).

Per frame, through the kit's post-processing (`postprocess.lung_frame`, mimic check
included). The issue's targets (within one on >= 90 % of frames for 0-8 true lines,
confluent detected on >= 90 %) are NOT met by the bundled lung model: these tests hold what
it does now (see the lung card's "Counts by true count"), so that it does not get worse:
0-4 lines are counted within one on >= 80 % of frames each (measured 85-100 %), 0-8 on
>= 75 % pooled (measured 83 %; 65 % before the learned line check: the mimic check turns
away some of many close lines), confluent lines are called confluent on >= 50 % of frames
(measured 59 %) with the model's pleural row where it is, and separate lines or mimics
almost never are. The lung model 1.x called 75-80 % confluent, but on about a third of
those frames its pleural row lay deep in the band (it was never trained on white lung) and
the band was not judged from the pleura: 2.0.0, trained on confluent bands, finds the row.
"""

from __future__ import annotations

import numpy as np

from fieldkit.inference import runner, sr

FRAMES_PER_COUNT, SEED = 40, 810_000  # 360 frames in all: a 90 % share is measured to about +-3 %


def _frames(evaluate, registry, samples):
    model = registry.get("lung")
    return [f for _, f in evaluate.lung_frames(model.session, model.thresholds, samples)]


def test_counts_are_right_within_one_from_zero_to_eight(registry, evaluate, simulator):
    rng = np.random.default_rng(SEED)
    rows, within, total = [], 0, 0
    for n in range(9):
        samples = [simulator.simulate_lung(rng, n_blines=n) for _ in range(FRAMES_PER_COUNT)]
        true = np.array([len(s.bline_cols) for s in samples])
        got = np.array([len(f["runs"]) for f in _frames(evaluate, registry, samples)])
        ok = np.abs(got - true) <= 1
        rows.append((n, round(float(ok.mean()), 3), round(float(got.mean()), 2)))
        within += int(ok.sum()); total += len(ok)
    print("true count, within one, mean count:", rows)
    assert within / total >= 0.75, f"within one on {within / total:.1%} of frames; per count {rows}"
    assert min(r[1] for r in rows[:5]) >= 0.80, rows
    assert [r[2] for r in rows] == sorted(r[2] for r in rows), f"more true lines must read as more: {rows}"


def test_confluent_lines_are_called_confluent(registry, evaluate, simulator):
    rng = np.random.default_rng(SEED + 100)
    white = [simulator.simulate_lung(rng, n_blines=int(rng.integers(0, 3)), confluent=True) for _ in range(200)]
    frames = _frames(evaluate, registry, white)
    detected = np.mean([f["confluent"] for f in frames])
    pattern = np.mean([f["score"] >= 0 for f in frames])
    # the band is judged from the pleura: the model's row must be where the pleura is
    off = [abs(f["pleura_row"] - s.pleura_row * 128 / s.image.shape[0]) > 10 for f, s in zip(frames, white)]
    assert np.mean(off) <= 0.05, f"pleural row more than 10 rows off on {np.mean(off):.1%} of white-lung frames"
    assert detected >= 0.50, f"confluent lines called confluent on {detected:.1%} of frames"
    assert pattern >= detected, "a frame called confluent makes a B-line pattern"
    apart = [simulator.simulate_lung(rng, n_blines=int(rng.integers(0, 9))) for _ in range(200)]
    wrongly = np.mean([f["confluent"] for f in _frames(evaluate, registry, apart)])
    assert wrongly <= 0.03, f"separate lines called confluent on {wrongly:.1%} of frames"


def test_the_mimics_are_not_confluent(registry, evaluate, simulator):
    rng = np.random.default_rng(SEED + 200)
    samples = [simulator.simulate_lung(rng, n_blines=0, mimic=m) for m in simulator.MIMICS for _ in range(25)]
    called = np.mean([f["confluent"] for f in _frames(evaluate, registry, samples)])
    assert called <= 0.03, f"mimics called confluent on {called:.1%} of frames"


def _coded(report):
    return [(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
            for i in _walk(report) if getattr(i, "ValueType", "") == "CODE"]


def test_the_finding_and_sr_say_whether_lines_are_confluent(registry):
    from fixtures.inference import lung_cine_dataset
    ds, _ = lung_cine_dataset(n_frames=3, n_blines=4, seed=SEED)
    analysis = runner.analyse(ds, registry)
    lung = next(r for r in analysis.results if r.task == "lung")
    assert lung.assessable and lung.result["confluent"] is False
    assert all(f["confluent"] is False for f in lung.result["frames"])
    assert ("Confluent B-lines", "Absent") in _coded(sr.build_sr(ds, analysis))
    # the view gate does not yet pass simulated white-lung clips (it was not trained on them:
    # they abstain as "uncertain"), so no real clip reaches this: the same analysis, read as
    # confluent, shows how the SR carries it
    lung.result["confluent"] = True
    assert ("Confluent B-lines", "Present") in _coded(sr.build_sr(ds, analysis))


def test_white_lung_clips_abstain_at_the_gate_rather_than_read_wrong(registry):
    """What the kit does today with a confluent clip: not assessable, with the reason."""
    from fixtures.inference import lung_cine_dataset
    ds, _ = lung_cine_dataset(n_frames=3, n_blines=1, seed=SEED, confluent=True)
    lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
    assert not lung.assessable and "lung view" in lung.reason


def _walk(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)

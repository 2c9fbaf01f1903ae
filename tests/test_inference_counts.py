"""B-line counts to confluence, on fresh simulated frames (seeds never used in training, for
the calibration, for the card or for choosing the post-processing's constants).

Per frame, through the kit's post-processing (`postprocess.lung_frame`, mimic check
included). The issue's target is a count within one on >= 90 % of frames for each true
count from 0 to 8, and it is held here for each (measured 92.5-100 % on these seeds, 40
frames each; pooled 96.7 %). Before close lines were told apart where they fan out
(`postprocess.fan_lines`) 8 lines read within one on 82 % of the card's frames and 90 %
here: near a convex probe's apex they fall in one of the model's column bins. Confluent
lines (white lung) are called confluent on >= 90 % of frames (the card: 94.5 %; 55 % while
the band had to cover a fifth of the image's width, which a convex probe's narrow sector at
the pleura rarely gives it), with the model's pleural row where it is, and separate lines
or mimics almost never are. Whole white-lung clips pass the view gate (1.1.0, trained with
them) and are read as confluent B-lines.
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
        got = np.array([f["b_lines"] for f in _frames(evaluate, registry, samples)])
        ok = np.abs(got - true) <= 1
        rows.append((n, round(float(ok.mean()), 3), round(float(got.mean()), 2)))
        within += int(ok.sum()); total += len(ok)
    print("true count, within one, mean count:", rows)
    assert within / total >= 0.90, f"within one on {within / total:.1%} of frames; per count {rows}"
    assert min(r[1] for r in rows) >= 0.90, rows
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
    assert detected >= 0.90, f"confluent lines called confluent on {detected:.1%} of frames"
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
    white, _ = lung_cine_dataset(n_frames=3, n_blines=1, seed=SEED, confluent=True)
    analysis = runner.analyse(white, registry)
    lung = next(r for r in analysis.results if r.task == "lung")
    assert lung.assessable and lung.result["confluent"] is True and lung.result["pattern"] == "B-line pattern"
    assert ("Confluent B-lines", "Present") in _coded(sr.build_sr(white, analysis))


CLIPS = 24  # white-lung clips, half on a convex probe (its sector narrow at the pleura), half linear


def test_white_lung_clips_pass_the_gate_and_read_as_confluent_b_lines(registry):
    """The sickest lungs must not be "not assessable", nor read as normal: the gate 1.0 called
    them FAST or "other" (11.5 % passed), and a convex probe's band was seldom called
    confluent (10 % of clips)."""
    from fixtures.inference import lung_cine_dataset
    read = []
    for i in range(CLIPS):
        ds, _ = lung_cine_dataset(n_frames=3, n_blines=i % 3, seed=SEED + 1000 + i, confluent=True,
                                  probe="convex" if i % 2 else "linear")
        lung = next(r for r in runner.analyse(ds, registry).results if r.task == "lung")
        read.append("not assessable" if not lung.assessable else
                    "confluent" if lung.result["confluent"] else lung.result["pattern"])
    print("white-lung clips read as:", {k: read.count(k) for k in set(read)})
    assert read.count("not assessable") <= 2, read
    assert read.count("confluent") >= 0.8 * CLIPS, read
    assert read.count("A-line pattern") <= 1, read


def _walk(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)

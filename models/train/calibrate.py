"""Fit each clinical model's finding calibration on held-out simulated data, measure what
the kit's post-processing does (B-line mimics, counts by true count, reliability before and
after calibration), write it all and the training recipe into the manifests, and sign them.

    python models/train/calibrate.py --key SIGNING_KEY.pem     # after train.py; needs no torch

The finding probability is Platt scaling of the frame's finding score (see
`fieldkit/inference/postprocess.py`, "finding scores"): sigmoid(a * score + b), with a and b
fitted on a calibration set (its own seed, never trained on and not the card's test set),
and its expected calibration error measured on yet another seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import evaluate as E  # noqa: E402
import recipe as R  # noqa: E402
import simulator as S  # noqa: E402
from fieldkit.inference import bundle as B  # noqa: E402
from fieldkit.inference import postprocess as post  # noqa: E402

DIRS = {"gate": "view_quality", "lung": "lung_bline", "fast": "fast_fluid"}
FINDING = {"lung": "B-line pattern", "fast": "free fluid"}
MIMIC_FRAMES = 200  # per mimic type
COUNT_FRAMES = 60  # per true count 0..8
PLEURA_OFF_ROWS = 10  # confluent frames: a pleural row this far (input rows) from the truth is "off"
PLEURA_FRAMES = 2400  # the pleural-row error: a mean dominated by a few misses needs a large set


def reliability(p, y, bins: int = 10) -> list[list]:
    """[bin low, bin high, frames, mean probability, observed share] per non-empty bin."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return [[b / bins, (b + 1) / bins, int((idx == b).sum()), round(float(p[idx == b].mean()), 3),
             round(float(y[idx == b].mean()), 3)] for b in range(bins) if (idx == b).any()]


def calibration(task: str, session, thresholds: dict) -> dict:
    n = R.RECIPE[task]["calibration_size"]
    scores = E.lung_scores if task == "lung" else E.fast_scores
    fit_s, fit_y = scores(session, thresholds, n, R.seed(task, "calibration"))[:2]
    ece_s, ece_y = scores(session, thresholds, n, R.seed(task, "ece"))[:2]
    cal = E.fit_platt(fit_s, fit_y)
    before = post.sigmoid(ece_s)
    after = np.array([post.calibrated(s, cal) for s in ece_s])
    return {"method": "platt", "of": FINDING[task], **cal,
            "fitted_on": {"seed": R.seed(task, "calibration"), "frames": n},
            "ece_measured_on": {"seed": R.seed(task, "ece"), "frames": n},
            "ece_before": round(E.ece(before, ece_y), 4), "ece_after": round(E.ece(after, ece_y), 4),
            "reliability_before": reliability(before, ece_y), "reliability_after": reliability(after, ece_y)}


def gate_calibration(session) -> dict:
    """Temperature scaling of the gate's probabilities (fitted on the calibration seed's
    frames of every class), and the shown view probability's reliability before and after."""
    n = R.RECIPE["gate"]["calibration_per_class"]
    probs, y = E.gate_probs(session, n, R.seed("gate", "calibration"))
    cal = {"method": "temperature", "t": E.fit_temperature(probs, y)}
    before, y_before = E.gate_view_probs(session, n, R.seed("gate", "ece"))
    after, y_after = E.gate_view_probs(session, n, R.seed("gate", "ece"), cal)
    return {**cal, "of": "view (lung or FAST)",
            "fitted_on": {"seed": R.seed("gate", "calibration"), "frames": int(len(y))},
            "ece_measured_on": {"seed": R.seed("gate", "ece"), "frames": int(len(after))},
            "ece_before": round(E.ece(before, y_before), 4), "ece_after": round(E.ece(after, y_after), 4),
            "reliability_before": reliability(before, y_before), "reliability_after": reliability(after, y_after)}


def mimic_table(session, thresholds) -> dict:
    """Per mimic type (no true B-line): share of frames with any B-line and with a B-line
    pattern, by the model's columns alone ("before") and after the kit's mimic check."""
    out = {}
    for i, kind in enumerate(S.MIMICS):
        seed = R.seed("lung", "test") + 1000 + i
        rng = np.random.default_rng(seed)
        res = E.lung_frames(session, thresholds, [S.simulate_lung(rng, n_blines=0, mimic=kind) for _ in range(MIMIC_FRAMES)])
        k = thresholds["pattern_min_blines"]
        out[kind] = {"frames": MIMIC_FRAMES, "seed": seed,
                     "any_before": round(np.mean([c > 0 for c, _ in res]), 4),
                     "any_after": round(np.mean([f["b_lines"] > 0 for _, f in res]), 4),
                     "pattern_before": round(np.mean([c >= k for c, _ in res]), 4),
                     "pattern_after": round(np.mean([f["score"] >= 0 for _, f in res]), 4)}
    return out


def count_table(session, thresholds) -> dict:
    """Per true count 0-8: share of frames counted exactly and within one, mean count."""
    out = {}
    for n in range(9):
        seed = R.seed("lung", "test") + 2000 + n
        rng = np.random.default_rng(seed)
        samples = [S.simulate_lung(rng, n_blines=n) for _ in range(COUNT_FRAMES)]
        true = np.array([len(s.bline_cols) for s in samples])
        got = np.array([f["b_lines"] for _, f in E.lung_frames(session, thresholds, samples)])
        out[str(n)] = {"frames": COUNT_FRAMES, "seed": seed, "exact": round(float(np.mean(got == true)), 4),
                       "within_1": round(float(np.mean(np.abs(got - true) <= 1)), 4),
                       "mean_count": round(float(got.mean()), 2)}
    return out


CONFLUENT_FRAMES = 200


def confluent_table(session, thresholds) -> dict:
    """Confluent B-lines (merged over a wide sector): the share of fresh frames with them that
    the kit calls confluent, and the share of frames with 0-8 separate lines it wrongly does."""
    seed = R.seed("lung", "test") + 3000
    rng = np.random.default_rng(seed)
    white = [S.simulate_lung(rng, n_blines=int(rng.integers(0, 3)), confluent=True) for _ in range(CONFLUENT_FRAMES)]
    apart = [S.simulate_lung(rng, n_blines=int(rng.integers(0, 9))) for _ in range(CONFLUENT_FRAMES)]
    frames = [f for _, f in E.lung_frames(session, thresholds, white)]
    h = E.SPEC["size"][0]
    # the model's pleural row far from the true one: the band is then not judged from the pleura
    off = [abs(f["pleura_row"] - s.pleura_row * h / s.image.shape[0]) > PLEURA_OFF_ROWS for f, s in zip(frames, white)]
    return {"frames": CONFLUENT_FRAMES, "seed": seed,
            "detected": round(float(np.mean([f["confluent"] for f in frames])), 4),
            "pleura_row_off": round(float(np.mean(off)), 4),
            "detected_with_pleura_row_off": round(float(np.mean([f["confluent"] and o for f, o in zip(frames, off)])), 4),
            "called_on_separate_lines": round(float(np.mean([f["confluent"] for _, f in
                                                             E.lung_frames(session, thresholds, apart)])), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM) to sign the bundles with")
    ap.add_argument("--only", choices=list(DIRS), action="append", help="only these models (default: all)")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    key = B.load_private_key(args.key)
    for task, d in DIRS.items():
        if args.only and task not in args.only:
            continue
        t0 = time.time()
        path = args.models / d / B.MANIFEST
        entry = json.loads(path.read_text(encoding="utf-8"))
        session = ort.InferenceSession(str(path.parent / entry["file"]), providers=["CPUExecutionProvider"])
        entry["training"].update(R.training_facts(task))
        if task == "gate":
            entry["calibration"] = gate_calibration(session)
        else:
            entry["calibration"] = calibration(task, session, entry["thresholds"])
        if task == "lung":
            # the card's test metrics, through the kit's post-processing (mimic check included)
            entry["metrics"] = E.lung_metrics(session, entry["thresholds"], n=R.RECIPE["lung"]["test_size"],
                                              seed=R.seed("lung", "test"))
            entry["mimics"] = mimic_table(session, entry["thresholds"])
            entry["counts_by_true_count"] = count_table(session, entry["thresholds"])
            entry["confluent"] = confluent_table(session, entry["thresholds"])
            x, _, rows, _ = E.make_lung_set(PLEURA_FRAMES, R.seed("lung", "test") + 300)
            row_px = np.array([post.pleura_row(r, E.SPEC["size"][0]) for r in E._run(session, x)[1]])
            err = np.abs(row_px - (rows + 0.5) * E.SPEC["size"][0] / E.PLEURA_BINS)
            entry["metrics"]["pleura_row_mae_px"] = E.bootstrap_mean(err, R.seed("lung", "test") + 300)
        path.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        B.sign_bundle(path.parent, key)
        print(f"{task}: calibrated and signed in {time.time() - t0:.0f}s: "
              f"{json.dumps({k: v for k, v in entry['calibration'].items() if not k.startswith('reliab')})}", flush=True)


if __name__ == "__main__":
    main()

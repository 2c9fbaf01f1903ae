"""Compare B-line post-processing variants side by side on one fair simulated sample.

    python models/train/postcheck.py --seed 5200000                      # the kit's own
    python models/train/postcheck.py --seed 5200000 a.py b.py            # variants of postprocess.py

Simulates, once, 200 frames per true count 0-8, 200 per mimic type, 200 with confluent
lines and 200 with 0-8 separate lines, and 600 frames of the card's natural mix; runs the
bundled lung model once; then puts each module's `lung_frame` over the same outputs and
prints, per module: mean count and share within one per true count, per mimic type the
share of frames with any B-line and with a pattern (score >= 0), confluent detected / called
on separate lines, pattern sensitivity and specificity on the natural mix (Wilson 95 %
intervals) and lung_frame's time per frame. Choose with one seed, report with another
(never a seed of recipe.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import evaluate as E  # noqa: E402
import simulator as S  # noqa: E402
from fieldkit.inference.preprocess import preprocess  # noqa: E402

PER = 200  # frames per true count, per mimic type, confluent and separate
NATURAL = 600  # the card's test size


def sample(base: int):
    """(frames, kind of each, true count of each): the whole sample from one seed base."""
    frames, kind, truth = [], [], []

    def add(s, k):
        frames.append(s); kind.append(k); truth.append(len(s.bline_cols))

    for n in range(9):
        rng = np.random.default_rng(base + n)
        for _ in range(PER):
            add(S.simulate_lung(rng, n_blines=n), f"count {n}")
    for i, m in enumerate(S.MIMICS):
        rng = np.random.default_rng(base + 100 + i)
        for _ in range(PER):
            add(S.simulate_lung(rng, n_blines=0, mimic=m), m)
    rng = np.random.default_rng(base + 200)
    for _ in range(PER):
        add(S.simulate_lung(rng, n_blines=int(rng.integers(0, 3)), confluent=True), "confluent")
    for _ in range(PER):
        add(S.simulate_lung(rng, n_blines=int(rng.integers(0, 9))), "separate")
    rng = np.random.default_rng(base + 300)
    for _ in range(NATURAL):
        add(S.simulate_lung(rng), "natural")
    return frames, np.array(kind), np.array(truth)


def table(post, probs, rows, x, kind, truth, thresholds) -> dict:
    t = time.perf_counter()
    fr = [post.lung_frame(p, r, img[0], thresholds) for p, r, img in zip(probs, rows, x)]
    ms = (time.perf_counter() - t) * 1000 / len(fr)
    count = np.array([f["b_lines"] for f in fr])
    score = np.array([f["score"] for f in fr])
    conf = np.array([f["confluent"] for f in fr])
    out = {}
    for n in range(9):
        m = kind == f"count {n}"
        out[f"{n} lines: mean count / within one"] = f"{count[m].mean():.2f} / {np.mean(np.abs(count[m] - truth[m]) <= 1):.1%}"
    for k in S.MIMICS:
        m = kind == k
        out[f"{k}: any / pattern"] = f"{np.mean(count[m] > 0):.1%} / {np.mean(score[m] >= 0):.1%}"
    out["confluent: detected / on separate lines"] = f"{conf[kind == 'confluent'].mean():.1%} / {conf[kind == 'separate'].mean():.1%}"
    m = kind == "natural"
    pos = truth[m] >= thresholds["pattern_min_blines"]
    for name, hit in (("sensitivity", count[m][pos] >= thresholds["pattern_min_blines"]),
                      ("specificity", count[m][~pos] < thresholds["pattern_min_blines"])):
        w = E.wilson(int(hit.sum()), len(hit))
        out[f"pattern {name} (95 % CI)"] = f"{w['value']:.3f} ({w['ci95'][0]:.3f}-{w['ci95'][1]:.3f})"
    out["lung_frame ms per frame"] = f"{ms:.2f}"
    return out


def load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True, help="seed base of the sample")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("modules", nargs="*", help="postprocess.py variants (default: the kit's own)")
    args = ap.parse_args(argv)
    import json

    import onnxruntime as ort
    bundle = args.models / "lung_bline"
    thresholds = json.loads((bundle / "manifest.json").read_text())["thresholds"]
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    frames, kind, truth = sample(args.seed)
    x = np.stack([preprocess(s.image[None], E.SPEC)[0] for s in frames])
    cols, rows = E._run(session, x)
    paths = args.modules or [str(ROOT / "fieldkit/inference/postprocess.py")]
    tables = {Path(p).name: table(load(p), E.post.sigmoid(cols), rows, x, kind, truth, thresholds) for p in paths}
    print("| seed " + str(args.seed) + " | " + " | ".join(tables) + " |")
    print("|---" * (len(tables) + 1) + "|")
    for key in next(iter(tables.values())):
        print(f"| {key} | " + " | ".join(t[key] for t in tables.values()) + " |")


if __name__ == "__main__":
    main()

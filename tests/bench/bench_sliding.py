"""Lung sliding benchmark (measured, never asserted): what judging lung sliding adds to the
analysis of a lung clip. A simulated 120-frame clip with sliding (8 frames is what the
figures use; 120 is inference.max_frames' default) is analysed by `runner.analyse` with the
bundled models, alternately with and without the sliding step, and the step alone on the
same frames. Printed: medians and their ratio, measured side by side in the same run.

    python tests/bench/bench_sliding.py [--runs 15] [--frames 120]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "models" / "train")]

import numpy as np  # noqa: E402

import sliding as SL  # noqa: E402
from fieldkit.config import Config  # noqa: E402
from fieldkit.inference import postprocess as post  # noqa: E402
from fieldkit.inference import runner  # noqa: E402
from fieldkit.inference.preprocess import preprocess  # noqa: E402
from fieldkit.inference.registry import Registry  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--frames", type=int, default=120)
    args = ap.parse_args()
    registry = Registry(Config(), data_dir=None)
    frames, _ = SL.S.simulate_sliding_cine(np.random.default_rng(1), sliding=True, n_frames=args.frames)
    ds = SL.cine_dataset(frames)
    lung = registry.get("lung")
    x = preprocess(frames, lung.entry["preprocessing"])
    _, rows = lung.run(x)
    judge = post.lung_sliding
    with_step, without, alone = [], [], []
    runner.analyse(ds, registry)  # warm up
    try:
        for _ in range(args.runs):
            post.lung_sliding = lambda *a, **k: {}
            t = time.perf_counter()
            runner.analyse(ds, registry)
            without.append(time.perf_counter() - t)
            post.lung_sliding = judge
            t = time.perf_counter()
            runner.analyse(ds, registry)
            with_step.append(time.perf_counter() - t)
            t = time.perf_counter()
            judge(x[:, 0], rows, range(1, args.frames + 1))
            alone.append(time.perf_counter() - t)
    finally:
        post.lung_sliding = judge
    w, wo, a = (1000 * statistics.median(v) for v in (with_step, without, alone))
    print(f"analyse, {args.frames}-frame lung clip: with sliding {w:.0f} ms, without {wo:.0f} ms "
          f"(median of {args.runs}); ratio {w / wo:.3f}")
    print(f"lung_sliding alone: {a:.1f} ms ({a / wo:.1%} of the analysis)")


if __name__ == "__main__":
    main()

"""The lung training mixture (models/train/evaluate.py `make_lung_mixture`): B-line mimics
are negatives (every column target zero), confluent bands and many-line frames are in it,
and the same seed gives the same set."""

from __future__ import annotations

import numpy as np

FRAMES = 120


def test_mimic_frames_are_negatives_with_zero_column_targets(evaluate):
    x, cols, rows, counts = evaluate.make_lung_mixture(40, seed=11, mimic_share=1.0, confluent_share=0.0)
    assert x.shape == (40, 1, 128, 128)
    assert not cols.any() and not counts.any()
    # they are not blank frames: the mimics are drawn in them
    assert float(x.std()) > 0.05


def test_the_mixture_holds_mimics_confluent_bands_and_many_lines(evaluate):
    _, plain_cols, _, plain = evaluate.make_lung_set(FRAMES, seed=12)
    x, cols, rows, counts = evaluate.make_lung_mixture(FRAMES, seed=12, mimic_share=0.3)
    # 30 % mimics plus 1/14 of the separate-line frames have no line at all
    assert 0.2 <= float(np.mean(counts == 0)) <= 0.5
    # a confluent band covers at least 12 of the 64 column bins, separate lines far fewer
    assert (cols.sum(1) >= 12).sum() >= 3
    # among frames with lines, counts 4-8 are over-sampled against the recipe's set
    assert np.mean(counts[counts > 0] >= 4) > np.mean(plain[plain > 0] >= 4)
    assert rows.min() >= 0 and rows.max() < evaluate.PLEURA_BINS


def test_the_same_seed_gives_the_same_mixture(evaluate):
    a = evaluate.make_lung_mixture(10, seed=13, mimic_share=0.3)
    b = evaluate.make_lung_mixture(10, seed=13, mimic_share=0.3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_column_targets_at_128_bins_keep_close_lines_apart(evaluate, simulator):
    """Why `train.py --lung-bins 128` exists: at 64 bins (2 input pixels each) the targets
    of neighbouring lines touch and merge into one run; at 128 they stay apart."""
    from fieldkit.inference import postprocess as post
    rng = np.random.default_rng(14)
    samples = [simulator.simulate_lung(rng, n_blines=8) for _ in range(30)]
    runs = {}
    for bins in (64, 128):
        targets = [evaluate.lung_targets(s, s.image.shape[1], s.image.shape[0], bins)[0] for s in samples]
        assert all(t.shape == (bins,) for t in targets)
        runs[bins] = np.mean([len(post.runs(t > 0.5)) for t in targets])
    true = np.mean([len(s.bline_cols) for s in samples])
    assert runs[64] < runs[128] <= true, (runs, true)
    assert true - runs[128] < 0.5 * (true - runs[64]), (runs, true)

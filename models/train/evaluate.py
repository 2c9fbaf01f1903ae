"""Held-out metrics of the reference models on freshly simulated data (numpy + onnxruntime).

The training script writes these numbers (with 95 % confidence intervals) into each
manifest entry and model card; the tests call the same functions with other seeds and
fail when a model does worse than its card says.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import simulator as S  # noqa: E402
from fieldkit.inference import postprocess as post  # noqa: E402
from fieldkit.inference.preprocess import preprocess  # noqa: E402

SPEC = {"colour": "luma-bt601", "size": [128, 128], "resample": "bilinear", "scale": 1 / 255, "layout": "NCHW"}
LUNG_BINS = 64  # per-column B-line evidence bins over the input width
PLEURA_BINS = 32
FLUID_SIZE = 64


# ----------------------------------------------------------------------- targets

BAND_SHARE = 0.1  # a run of true columns wider than this share of the image is a confluent band
CENTRE_SHARE = 0.5  # a separate line's target: the bins within this share of its half-width of its centre


def lung_targets(s: S.Sample, w: int, h: int, bins: int = LUNG_BINS):
    """Column targets and the pleural row bin. A confluent band is marked over its whole
    width; a separate line only on its centre (at least the nearest bin): marked over
    their whole width, neighbouring lines 4 % of the sector apart touch at 64 bins and the
    model learns to score them as one run."""
    cols = np.zeros(bins, np.float32)
    centres = np.arange(bins) + 0.5
    for c0, c1 in s.bline_cols:
        if c1 - c0 > BAND_SHARE * w:
            b0 = int(np.clip(c0 / w * bins, 0, bins - 1))
            b1 = int(np.clip(c1 / w * bins, 0, bins - 1))
            cols[b0:b1 + 1] = 1
        else:
            c, half = (c0 + c1) / 2 / w * bins, (c1 - c0) / 2 / w * bins
            cols[np.abs(centres - c) <= max(CENTRE_SHARE * half, 0.5)] = 1
    row = int(np.clip(s.pleura_row / h * PLEURA_BINS, 0, PLEURA_BINS - 1))
    return cols, row


def fluid_target(s: S.Sample) -> np.ndarray:
    from PIL import Image
    m = Image.fromarray(s.fluid_mask.astype(np.uint8) * 255).resize((FLUID_SIZE, FLUID_SIZE), Image.BILINEAR)
    return (np.asarray(m) >= 128).astype(np.float32)


def make_gate_set(n_per_class: int, seed: int, misoriented: int = 0):
    """n_per_class frames of each gate class; with misoriented, that many more lung and FAST
    frames turned on the screen (S.simulate_misoriented), labelled "other"."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label in range(len(S.GATE_CLASSES)):
        for _ in range(n_per_class):
            s = S.simulate_gate(rng, label)
            xs.append(preprocess(s.image[None], SPEC)[0])
            ys.append(label)
    for _ in range(misoriented):
        s = S.simulate_misoriented(rng)
        xs.append(preprocess(s.image[None], SPEC)[0])
        ys.append(s.gate)
    return np.stack(xs), np.array(ys)


def make_lung_set(n: int, seed: int, bins: int = LUNG_BINS):
    rng = np.random.default_rng(seed)
    xs, cols, rows, counts = [], [], [], []
    for _ in range(n):
        s = S.simulate_lung(rng)
        h, w = s.image.shape[:2]
        xs.append(preprocess(s.image[None], SPEC)[0])
        c, r = lung_targets(s, w, h, bins)
        cols.append(c); rows.append(r); counts.append(len(s.bline_cols))
    return np.stack(xs), np.stack(cols), np.array(rows), np.array(counts)


def make_lung_mixture(n: int, seed: int, mimic_share: float, confluent_share: float = 0.1, bins: int = LUNG_BINS):
    """A lung training set with B-line mimics as negatives: a `mimic_share` of the frames
    hold one mimic type and no B-line (all-zero column targets), E-lines, needles and
    emphysema twice as often as the others (the mimics the kit's check misses most); a
    `confluent_share` hold a confluent band; the rest hold 0-8 separate lines, counts 4-8
    twice as often as 0-3 (the counts the model undercounts)."""
    rng = np.random.default_rng(seed)
    kinds = list(S.MIMICS)
    kind_w = np.array([2.0 if k in ("e_line", "needle", "emphysema") else 1.0 for k in kinds])
    count_w = np.array([1.0] * 4 + [2.0] * 5)
    xs, cols, rows, counts = [], [], [], []
    for _ in range(n):
        u = rng.random()
        if u < mimic_share:
            s = S.simulate_lung(rng, n_blines=0, mimic=str(rng.choice(kinds, p=kind_w / kind_w.sum())))
        elif u < mimic_share + confluent_share:
            s = S.simulate_lung(rng, n_blines=int(rng.integers(0, 3)), confluent=True)
        else:
            s = S.simulate_lung(rng, n_blines=int(rng.choice(9, p=count_w / count_w.sum())))
        h, w = s.image.shape[:2]
        xs.append(preprocess(s.image[None], SPEC)[0])
        c, r = lung_targets(s, w, h, bins)
        cols.append(c); rows.append(r); counts.append(len(s.bline_cols))
    return np.stack(xs), np.stack(cols), np.array(rows), np.array(counts)


def make_fast_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    xs, masks = [], []
    for _ in range(n):
        s = S.simulate_fast(rng)
        xs.append(preprocess(s.image[None], SPEC)[0])
        masks.append(fluid_target(s))
    return np.stack(xs), np.stack(masks)


# ----------------------------------------------------------------------- statistics

def wilson(k: int, n: int, z: float = 1.96):
    """Proportion with its Wilson 95 % interval."""
    if n == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return {"value": round(p, 4), "ci95": [round(max(0, c - h), 4), round(min(1, c + h), 4)], "n": n}


def bootstrap_mean(values, seed=0, reps=1000):
    v = np.asarray(values, float)
    if len(v) == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (reps, len(v)))].mean(axis=1)
    return {"value": round(float(v.mean()), 4),
            "ci95": [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)],
            "n": int(len(v))}


def _run(session, x, batch=64):
    name = session.get_inputs()[0].name
    outs = None
    for i in range(0, len(x), batch):
        o = session.run(None, {name: x[i:i + batch]})
        outs = [[a] for a in o] if outs is None else [p + [a] for p, a in zip(outs, o)]
    return [np.concatenate(p) for p in outs]


# ----------------------------------------------------------------------- metrics

def gate_metrics(session, thresholds: dict, n_per_class=60, seed=10_001):
    x, y = make_gate_set(n_per_class, seed)
    probs = post.softmax(_run(session, x)[0])
    pred = np.where(probs.max(axis=1) >= thresholds["min_prob"], probs.argmax(axis=1), -1)
    out = {"accuracy": wilson(int((pred == y).sum()), len(y))}
    for i, name in ((0, "lung"), (1, "fast")):
        pos = y == i
        out[f"{name}_sensitivity"] = wilson(int((pred[pos] == i).sum()), int(pos.sum()))
        out[f"{name}_specificity"] = wilson(int((pred[~pos] != i).sum()), int((~pos).sum()))
    bad = y >= 3
    out["poor_quality_sensitivity"] = wilson(int((pred[bad] >= 3).sum()), int(bad.sum()))
    return out


def _passed_as(session, x, thresholds: dict, views: tuple[int, ...]) -> np.ndarray:
    """Which frames the gate passes as one of `views` (class indices): its most likely class
    is one of them, at min_prob or more, as the kit decides."""
    probs = post.softmax(_run(session, x)[0])
    return (probs.max(axis=1) >= thresholds["min_prob"]) & np.isin(probs.argmax(axis=1), views)


def misoriented_metrics(session, thresholds: dict, n_per_view=100, seed=10_002):
    """Lung and FAST frames turned on the screen (S.simulate_misoriented): the share the gate
    still passes as a lung or FAST view (the clinical models would then misread them)."""
    rng = np.random.default_rng(seed)
    out = {}
    for view in ("lung", "fast"):
        x = np.stack([preprocess(S.simulate_misoriented(rng, view).image[None], SPEC)[0] for _ in range(n_per_view)])
        passed = _passed_as(session, x, thresholds, views=(0, 1))
        out[f"misoriented_{view}_passed"] = wilson(int(passed.sum()), n_per_view)
    return out


def white_lung_metrics(session, thresholds: dict, n=200, seed=10_005):
    """Lung frames with confluent lines (white lung, the sickest lungs): the share the gate
    passes as a lung view (the lung model reads them only then)."""
    rng = np.random.default_rng(seed)
    x = np.stack([preprocess(S.simulate_lung(rng, confluent=True).image[None], SPEC)[0] for _ in range(n)])
    passed = _passed_as(session, x, thresholds, views=(0,))
    return {"white_lung_passed": wilson(int(passed.sum()), n)}


def lung_metrics(session, thresholds: dict, n=300, seed=20_001):
    x, _, rows, counts = make_lung_set(n, seed)
    cols_logit, row_logit = _run(session, x)
    probs = post.sigmoid(cols_logit)
    # what the kit reports: the model's columns after the mimic check (post.lung_frame)
    pred = np.array([post.lung_frame(p, r, img[0], thresholds)["b_lines"] for p, r, img in zip(probs, row_logit, x)])
    pat_true = counts >= thresholds["pattern_min_blines"]
    pat_pred = pred >= thresholds["pattern_min_blines"]
    tp = int((pat_true & pat_pred).sum()); fp = int((~pat_true & pat_pred).sum()); fn = int((pat_true & ~pat_pred).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    row_px = np.array([post.pleura_row(r, SPEC["size"][0]) for r in row_logit])
    row_true = (rows + 0.5) * SPEC["size"][0] / PLEURA_BINS
    return {
        "bline_pattern_sensitivity": wilson(tp, int(pat_true.sum())),
        "bline_pattern_specificity": wilson(int((~pat_true & ~pat_pred).sum()), int((~pat_true).sum())),
        "bline_pattern_f1": {"value": round(f1, 4), "n": n},
        "bline_count_exact": wilson(int((pred == counts).sum()), n),
        "bline_count_within_1": wilson(int((np.abs(pred - counts) <= 1).sum()), n),
        "pleura_row_mae_px": bootstrap_mean(np.abs(row_px - row_true), seed),
    }


def fast_metrics(session, thresholds: dict, n=200, seed=30_001):
    x, masks = make_fast_set(n, seed)
    logits = _run(session, x)[0]
    pred = np.stack([post.fluid_mask(l, thresholds["pixel"]) for l in logits])
    min_px = thresholds["min_area_px"]
    present_true = masks.reshape(n, -1).sum(1) >= min_px
    present_pred = pred.reshape(n, -1).sum(1) >= min_px
    dices = [post.dice(p, m > 0.5) for p, m, t in zip(pred, masks, present_true) if t]
    return {
        "fluid_sensitivity": wilson(int((present_pred & present_true).sum()), int(present_true.sum())),
        "fluid_specificity": wilson(int((~present_pred & ~present_true).sum()), int((~present_true).sum())),
        "fluid_dice_positive": bootstrap_mean(dices, seed),
    }


# ----------------------------------------------------------------------- calibration

def fit_platt(scores, labels, iters: int = 200) -> dict:
    """Platt scaling: (a, b) maximising the likelihood of labels under sigmoid(a*s + b)
    (damped Newton steps on two parameters; a small ridge keeps it finite on separable data)."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, float)
    X = np.stack([s, np.ones_like(s)], axis=1)
    ridge = 1e-3

    def loss(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + ridge / 2 * w @ w)

    w = np.array([1.0, 0.0])
    for _ in range(iters):
        p = post.sigmoid(X @ w)
        g = X.T @ (p - y) + ridge * w
        H = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(H, g)
        t, f0 = 1.0, loss(w)
        while loss(w - t * step) > f0 and t > 1e-8:
            t /= 2
        w = w - t * step
        if np.abs(t * step).max() < 1e-9:
            break
    return {"a": round(float(w[0]), 5), "b": round(float(w[1]), 5)}


def ece(probs, labels, bins: int = 10) -> float:
    """Expected calibration error: the mean |observed share - mean probability| over equal-width
    probability bins, weighted by how many predictions fall in each."""
    p = np.asarray(probs, float)
    y = np.asarray(labels, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / max(1, len(p)))


def lung_scores(session, thresholds: dict, n: int, seed: int):
    """Per frame: the pattern score (post.lung_frame, mimic check included), whether the frame
    truly has a B-line pattern, the accepted count and the true count."""
    x, _, _, counts = make_lung_set(n, seed)
    cols_logit, row_logit = _run(session, x)
    probs = post.sigmoid(cols_logit)
    frames = [post.lung_frame(p, r, img[0], thresholds) for p, r, img in zip(probs, row_logit, x)]
    return (np.array([f["score"] for f in frames]), counts >= thresholds["pattern_min_blines"],
            np.array([f["b_lines"] for f in frames]), counts)


def lung_frames(session, thresholds: dict, samples):
    """Per sample: (the model's own count, post.lung_frame after the mimic check; frames
    analysed a batch at a time, as the kit does, with the same results)."""
    x = np.stack([preprocess(s.image[None], SPEC)[0] for s in samples])
    cols, rows = _run(session, x)
    probs = post.sigmoid(cols)
    frames = [f for s in range(0, len(x), 16) for f in post.lung_frames(probs[s:s + 16], rows[s:s + 16], x[s:s + 16, 0], thresholds)]
    return [(post.count_blines(p, thresholds["bline"], dip=post.SPLIT_DIP)[0], f) for p, f in zip(probs, frames)]


def fast_scores(session, thresholds: dict, n: int, seed: int):
    """Per frame: the free-fluid score and whether the frame truly shows free fluid."""
    x, masks = make_fast_set(n, seed)
    logits = _run(session, x)[0]
    truth = masks.reshape(n, -1).sum(1) >= thresholds["min_area_px"]
    return np.array([post.fluid_score(l, thresholds) for l in logits]), truth


def gate_probs(session, n_per_class: int, seed: int, calibration: dict | None = None):
    """The gate's class probabilities as the kit shows them (post.view_calibrated) on fresh
    frames of every class, and the true classes."""
    x, y = make_gate_set(n_per_class, seed)
    return post.view_calibrated(post.softmax(_run(session, x)[0]), calibration), y


def gate_view_probs(session, n_per_class: int, seed: int, calibration: dict | None = None):
    """The shown view probabilities (p of lung, p of FAST on frames called that view) and
    whether each frame truly is that view."""
    probs, y = gate_probs(session, n_per_class, seed, calibration)
    called = probs.argmax(1)
    shown = np.isin(called, (0, 1))
    return probs[shown, called[shown]], y[shown] == called[shown]


def fit_temperature(probs, labels) -> float:
    """Temperature scaling: the t (a grid over 0.2-5, log-spaced) maximising the likelihood of
    the true classes under softmax(logits / t)."""
    best, best_loss = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 401)):
        q = post.view_calibrated(probs, {"method": "temperature", "t": t})
        loss = -np.mean(np.log(np.clip(q[np.arange(len(labels)), labels], 1e-12, 1)))
        if loss < best_loss:
            best, best_loss = float(t), loss
    return round(best, 4)

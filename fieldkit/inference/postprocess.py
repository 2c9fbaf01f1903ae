"""Model outputs -> numbers a clinician reads. Shared by the runner, training and tests."""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def runs(mask: np.ndarray, min_len: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D mask, at least min_len long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def count_blines(col_prob: np.ndarray, threshold: float, min_width: int = 1) -> tuple[int, list]:
    """One frame's per-column B-line probabilities -> (count, [start, end) column runs)."""
    r = runs(col_prob >= threshold, min_width)
    return len(r), r


def pleura_row(row_logits: np.ndarray, input_rows: int) -> float:
    """Row (in model-input pixels) of the pleural line from the per-row-bin logits."""
    bins = row_logits.shape[-1]
    p = softmax(row_logits)
    return float((np.argmax(p) + 0.5) * input_rows / bins)


def fluid_mask(fluid_logits: np.ndarray, threshold: float) -> np.ndarray:
    """(1, h, w) or (h, w) logits -> bool mask."""
    return sigmoid(np.squeeze(fluid_logits)) >= threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


# A B-line (consensus definition) arises from the pleural line and reaches the bottom of
# the screen without fading. The lung model scores columns at the pleura; these checks
# follow each scored column in the image itself and turn away vertical artefacts that do
# not: E-lines and needle ring-down start above the pleura, Z-lines and comet tails fade.
LINE_HALF = 1  # half-width (input pixels) of the line sampled along its track
SIDE = (4, 8)  # background band either side of the line (input pixels from its centre)
IN_VIEW = 0.02  # below this the image is black: outside the field of view
MIN_CONTRAST = 0.04  # a line brighter than its surroundings by less is no line
FADE_RATIO = 0.45  # deep contrast below this share of the contrast near the pleura: it fades
ABOVE_RATIO = 0.12  # median contrast over the chest wall above this share of the one below: starts above
ABOVE_MIN = 0.03  # ... and above this: chest-wall speckle alone stays under it


def _contrast(img: np.ndarray, row: int, col: int) -> float:
    """Line brightness minus its background at one point, or nan outside the field of view."""
    w = img.shape[1]
    line = img[row, max(0, col - LINE_HALF):col + LINE_HALF + 1]
    sides = np.concatenate([img[row, max(0, col - SIDE[1]):max(0, col - SIDE[0] + 1)],
                            img[row, min(w, col + SIDE[0]):min(w, col + SIDE[1] + 1)]])
    if line.mean() < IN_VIEW:
        return float("nan")
    return float(line.mean() - np.median(sides)) if sides.size else float("nan")


def _track(img: np.ndarray, row0: int, col0: int) -> list[tuple[int, int, float]]:
    """(row, column, contrast) down a near-vertical line from (row0, col0) to the bottom of
    the field of view; the column may drift one pixel per row (lines fan out on a convex
    or phased probe)."""
    w = img.shape[1]
    col, out = col0, []
    for row in range(row0, img.shape[0]):
        cand = [c for c in (col - 1, col, col + 1) if 0 <= c < w]
        col = max(cand, key=lambda c: img[row, max(0, c - LINE_HALF):c + LINE_HALF + 1].mean())
        c = _contrast(img, row, col)
        if np.isnan(c):
            break
        out.append((row, col, c))
    return out


def bline_mimic(img: np.ndarray, cols: tuple[float, float], pleura_row: float) -> str:
    """Why a run of columns the model scored as a B-line is not one, or "" when it is one.

    img: one frame as the model saw it ((H, W) float, 0-1); cols ([start, end)) and
    pleura_row in the same pixels."""
    h, w = img.shape
    prow = int(round(pleura_row))
    lo, hi = max(0, int(cols[0])), min(w, max(int(cols[0]) + 1, int(np.ceil(cols[1]))))
    band = img[min(h - 1, prow + 3):min(h, prow + 11), lo:hi]
    if band.size == 0:
        return ""
    start = lo + int(np.argmax(band.mean(axis=0)))  # the line's brightest column under the pleura
    below = _track(img, min(h - 1, prow + 3), start)
    if len(below) < 8:
        return ""  # too little image below the pleura to judge: leave the model's call
    q = max(2, len(below) // 4)
    contrast = [c for _, _, c in below]
    near, deep = float(np.median(contrast[:q])), float(np.median(contrast[-q:]))
    if near < MIN_CONTRAST:
        return "no bright line below the pleura"
    # above the pleura, follow the line's own direction (no search: a search finds speckle)
    rows = np.array([r for r, _, _ in below[:16]], float)
    slope = np.polyfit(rows, [c for _, c, _ in below[:16]], 1)[0] if len(rows) > 2 else 0.0
    above = [_contrast(img, r, int(round(start + slope * (r - rows[0]))))
             for r in range(max(0, prow // 3), prow - 8) if 0 <= round(start + slope * (r - rows[0])) < w]
    above = [c for c in above if not np.isnan(c)]
    if len(above) >= 4 and float(np.median(above)) > max(ABOVE_MIN, ABOVE_RATIO * near):
        return "starts above the pleural line (E-line or needle artefact)"
    if deep < FADE_RATIO * near:
        return "fades before the bottom of the image (Z-line or comet tail)"
    return ""

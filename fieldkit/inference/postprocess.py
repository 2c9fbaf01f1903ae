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

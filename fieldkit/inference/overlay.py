"""The overlay image the tablet shows next to a finding: the frame the finding rests on,
with the model's evidence drawn on it (PNG bytes; the store encrypts them as a blob)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def render(frame: np.ndarray, overlay: dict) -> bytes:
    """frame (H, W, 3) uint8; overlay from runner.Analysis.overlay (may be empty)."""
    img = frame.astype(np.float32).copy()
    h, w = img.shape[:2]
    kind = overlay.get("kind")
    if kind == "lung":
        row = int(np.clip(overlay.get("pleura_row", 0), 0, h - 1))
        # the image as the scanner shows it: inverted top to bottom, the lung lies above
        # the pleura and the skin is at the bottom
        inverted = bool(overlay.get("upside_down"))
        deep = slice(0, row + 1) if inverted else slice(row, None)
        columns = overlay.get("columns", [])
        for (c0, c1), n in zip(columns, overlay.get("lines_in_columns") or [1] * len(columns)):
            for b0, b1 in bands(int(c0), int(c1), n, w):  # B-lines: green bands beyond the pleura
                img[deep, b0:b1] = 0.55 * img[deep, b0:b1] + 0.45 * np.array([40, 220, 90])
        evidence = np.asarray(overlay.get("evidence", []), np.float32)
        if evidence.size:  # per-column evidence as a bar along the skin's edge
            cols = np.clip((np.arange(w) * evidence.size / w).astype(int), 0, evidence.size - 1)
            bar = (evidence[cols][None, :, None] * np.array([40, 220, 90])).repeat(6, axis=0)
            img[slice(h - 6, None) if inverted else slice(0, 6)] = bar
        img[max(0, row - 1):row + 2] = [0, 200, 255]  # pleural line in cyan
    elif kind == "fast":
        mask = np.asarray(overlay["mask"], bool)
        ys = (np.arange(h) * mask.shape[0] // h)
        xs = (np.arange(w) * mask.shape[1] // w)
        big = mask[ys][:, xs]
        img[big] = 0.5 * img[big] + 0.5 * np.array([255, 40, 40])
    out = io.BytesIO()  # fastest zlib level: half the default's time, within ±20% of its size
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def bands(c0: int, c1: int, n: int, w: int) -> list[tuple[int, int]]:
    """The pixel spans [start, end) that draw a run of columns c0..c1 (inclusive) holding
    n lines: n bands side by side, a pixel apart, so that the screen shows as many bands
    as the lines counted (close lines the model scored as one run). A run too narrow for
    that is widened about its centre; everything stays inside the image's w columns."""
    c0, c1 = int(np.clip(c0, 0, w - 1)), int(np.clip(c1, 0, w - 1)) + 1
    n = max(1, int(n))
    if n == 1:
        return [(c0, c1)]
    need = 2 * n - 1  # a pixel a band and a pixel between each two
    if c1 - c0 < need:
        c0 = int(np.clip((c0 + c1 - need) // 2, 0, max(0, w - need)))
        c1 = min(w, c0 + need)
    edges = np.linspace(c0, c1 + 1, n + 1)  # each band's last pixel is left as the gap
    return [(int(round(a)), int(round(b)) - 1) for a, b in zip(edges[:-1], edges[1:])]

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
        for c0, c1 in overlay.get("columns", []):  # B-lines: green bands below the pleura
            c0, c1 = int(np.clip(c0, 0, w - 1)), int(np.clip(c1, 0, w - 1)) + 1
            img[row:, c0:c1] = 0.55 * img[row:, c0:c1] + 0.45 * np.array([40, 220, 90])
        evidence = np.asarray(overlay.get("evidence", []), np.float32)
        if evidence.size:  # per-column evidence as a bar along the top edge
            cols = np.clip((np.arange(w) * evidence.size / w).astype(int), 0, evidence.size - 1)
            bar = (evidence[cols][None, :, None] * np.array([40, 220, 90])).repeat(6, axis=0)
            img[:6] = bar
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

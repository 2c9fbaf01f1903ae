"""Frame preprocessing shared by the runner, the training script and the tests.

One implementation, so the numbers a model was trained on are the numbers it sees on the
kit. Which steps a model wants is written in its manifest entry ("preprocessing"); only
the values below are understood, anything else refuses to load the model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SUPPORTED = {
    "colour": {"luma-bt601"},
    "resample": {"bilinear"},
    "layout": {"NCHW"},
}

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def check_spec(spec: dict) -> None:
    """Raise ValueError naming the first preprocessing value this code cannot do."""
    for key, allowed in SUPPORTED.items():
        if spec.get(key) not in allowed:
            raise ValueError(f"preprocessing {key}={spec.get(key)!r} is not supported (supported: {sorted(allowed)})")
    size = spec.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 16 <= v <= 1024 for v in size)):
        raise ValueError(f"preprocessing size={size!r} must be [height, width] in 16..1024")
    if not isinstance(spec.get("scale"), (int, float)):
        raise ValueError(f"preprocessing scale={spec.get('scale')!r} must be a number")


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB or (N, H, W) -> (N, H, W) uint8 luma."""
    if frames.ndim == 3:
        return frames.astype(np.uint8, copy=False)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) RGB or (N, H, W) grey, got shape {frames.shape}")
    return np.clip(frames.astype(np.float32) @ _LUMA + 0.5, 0, 255).astype(np.uint8)


def resize_gray(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 -> (N, h, w) uint8, antialiased bilinear (Pillow)."""
    h, w = size
    out = np.empty((gray.shape[0], h, w), np.uint8)
    for i, frame in enumerate(gray):
        out[i] = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
    return out


def preprocess(frames: np.ndarray, spec: dict) -> np.ndarray:
    """Frames as decoded -> the model's float32 input tensor (N, 1, h, w).

    Per frame, Pillow does the luma conversion (ITU-R 601 weights, as to_gray) and the
    resize in C: several times faster than numpy on full-size frames. The scaling to
    float32 is one numpy call for the whole batch.
    """
    if frames.ndim == 4 and frames.shape[-1] != 3 or frames.ndim not in (3, 4):
        raise ValueError(f"frames must be (N, H, W, 3) RGB or (N, H, W) grey, got shape {frames.shape}")
    h, w = spec["size"]
    small = np.empty((frames.shape[0], h, w), np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        if frame.ndim == 3:
            img = img.convert("L")
        small[i] = np.asarray(img.resize((w, h), Image.BILINEAR))
    out = np.empty((frames.shape[0], 1, h, w), np.float32)
    np.multiply(small, np.float32(spec["scale"]), out=out[:, 0], casting="unsafe")
    return out


def colour_fraction(frames: np.ndarray) -> float:
    """Share of pixels that are strongly coloured (colour-flow Doppler, not greyscale B-mode).

    Looks at up to 4 frames and every 4th pixel: plenty to estimate a share, and cheap.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        return 0.0
    f = frames[:: max(1, len(frames) // 4)][:4, ::2, ::2]
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8, no overflow
    return float((chroma > 80).mean())


# A B-mode image changes about as much across as down (speckle, tissue edges). A frame that
# hardly changes across is a time trace (an M-mode strip: each column is one moment of the
# same scan line) or horizontal stripes; one that hardly changes down is vertical stripes.
# Neither is an image the models were made for. Measured on simulated lung, FAST and other
# views, across/down lies in 0.56-2.0; simulated M-mode strips (with a granular seashore
# below the pleura) stay under 0.35.
STEP = 8  # pixels of the model input between the compared samples
MIN_ACROSS = 0.4
MAX_ACROSS = 4.0


def not_b_mode(x: np.ndarray) -> list[str]:
    """Per model-input frame ((N, 1, H, W) 0-1), why it is not a B-mode image, or ""."""
    out = []
    for img in x[:, 0]:
        a, b = img[:, STEP:], img[:, :-STEP]
        c, d = img[STEP:, :], img[:-STEP, :]
        across = (a > 0.02) & (b > 0.02)  # inside the field of view on both sides
        down = (c > 0.02) & (d > 0.02)
        h = float(np.abs(a - b)[across].mean()) if across.any() else 0.0
        v = float(np.abs(c - d)[down].mean()) if down.any() else 0.0
        if h + v < 1e-3:
            out.append("")  # flat: the view gate says "too dark" or "saturated"
        elif h < MIN_ACROSS * v:
            out.append("every row is about the same across the image (an M-mode strip or horizontal stripes, "
                       "not a B-mode image)")
        elif h > MAX_ACROSS * v:
            out.append("every column is about the same down the image (vertical stripes, not a B-mode image)")
        else:
            out.append("")
    return out

"""Small JPEG previews for the tablet's lists, made once at ingest from the first frame."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMB_MAX_SIDE = 256


def thumbnail_jpeg(frame: np.ndarray, max_side: int = THUMB_MAX_SIDE, quality: int = 80) -> bytes:
    """uint8 RGB (rows, cols, 3) -> JPEG bytes, longest side at most `max_side`."""
    img = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    # box-average by a whole factor: a tenth of the cost of a bilinear resample, and
    # the preview's longest side lands between max_side/2 and max_side
    factor = -(-max(img.size) // max_side)
    if factor > 1:
        img = img.reduce(factor)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def render(frame: np.ndarray, media_type: str = "image/png", quality: int = 90) -> bytes:
    """A full-size rendered frame (WADO-RS rendered), PNG or JPEG."""
    img = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=3)
    return buf.getvalue()

"""Frames for the models: luma only, decoded as cheaply as the encoding allows.

The models read greyscale. For JPEG baseline/extended (what most handhelds send) libjpeg
can hand back the luma component directly (Pillow's draft mode): no chroma upsampling,
no colour conversion; an order of magnitude faster than decoding to RGB and converting
back. JFIF's Y is ITU-R 601 luma, the same weights the preprocessing uses for RGB.
Everything else goes through the kit's one decoder (fieldkit.dicom.frames) as RGB.

The colour check (colour-flow Doppler) needs chroma, so one frame per batch is also
decoded in colour for it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..dicom.frames import decode_frames
from .preprocess import colour_fraction

JPEG_LOSSY = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def _fast_jpeg(ds) -> bool:
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return (ts in JPEG_LOSSY and int(ds.get("SamplesPerPixel", 1) or 1) in (1, 3)
            and int(ds.get("BitsAllocated", 8) or 8) == 8
            and str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME2", "YBR_FULL", "YBR_FULL_422", "RGB"))


def luma_frames(ds, indices: list[int]) -> tuple[np.ndarray, float]:
    """(frames (n, H, W) uint8 luma, share of strongly coloured pixels)."""
    if _fast_jpeg(ds):
        try:
            return _jpeg_luma(ds, indices)
        except Exception:  # an odd stream: the general decoder gives the real reason
            pass
    rgb = decode_frames(ds, indices)
    gray = np.empty(rgb.shape[:3], np.uint8)
    for i, frame in enumerate(rgb):
        gray[i] = np.asarray(Image.fromarray(frame).convert("L"))
    return gray, colour_fraction(rgb)


def _jpeg_luma(ds, indices):
    from pydicom.encaps import get_frame
    n = int(ds.get("NumberOfFrames", 1) or 1)
    out = []
    for i in indices:
        img = Image.open(io.BytesIO(get_frame(ds.PixelData, i, number_of_frames=n)))
        img.draft("L", img.size)
        out.append(np.asarray(img.convert("L")))
    gray = np.stack(out)
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1 or str(ds.PhotometricInterpretation) == "MONOCHROME2":
        return gray, 0.0
    # one frame in colour (libjpeg's own YCbCr -> RGB) for the colour-Doppler check
    mid = Image.open(io.BytesIO(get_frame(ds.PixelData, indices[len(indices) // 2], number_of_frames=n)))
    if str(ds.PhotometricInterpretation) == "RGB" and mid.mode == "RGB":
        rgb = np.asarray(mid)  # stored as RGB: no colour transform in the stream
    else:
        rgb = np.asarray(mid.convert("RGB"))
    return gray, colour_fraction(rgb[None])

"""Frames for the models: luma only, decoded as cheaply as the encoding allows.

The models read greyscale. For JPEG baseline/extended (what most handhelds send) libjpeg
can hand back the luma component directly (Pillow's draft mode): no chroma upsampling,
no colour conversion; an order of magnitude faster than decoding to RGB and converting
back. JFIF's Y is ITU-R 601 luma, the same weights the preprocessing uses for RGB.
Uncompressed 8-bit RGB (what simulators and some carts send) is read straight from the
pixel data buffer and converted to luma by Pillow in one call for the whole batch (the
same ITU-R 601 integer formula as per frame). Everything else goes through the kit's one
decoder (fieldkit.dicom.frames) as RGB.

The colour check (colour-flow Doppler) needs chroma: the caller names the frame to check
(`colour_at`; about one per model batch), which for JPEG is also decoded in colour.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..dicom.frames import decode_frames
from .preprocess import colour_fraction

JPEG_LOSSY = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _fast_jpeg(ds) -> bool:
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return (ts in JPEG_LOSSY and int(ds.get("SamplesPerPixel", 1) or 1) in (1, 3)
            and int(ds.get("BitsAllocated", 8) or 8) == 8
            and str(ds.get("PhotometricInterpretation", "")) in ("MONOCHROME2", "YBR_FULL", "YBR_FULL_422", "RGB"))


def luma_frames(ds, indices: list[int], colour_at: int | None = -1) -> tuple[np.ndarray, float]:
    """(frames (n, H, W) uint8 luma, share of strongly coloured pixels).

    `colour_at`: the frame index whose colour is checked (-1: the middle one of `indices`;
    None: no check, the share is 0.0). Where the frames are RGB anyway, all of `indices`
    are checked.
    """
    if colour_at is not None and colour_at < 0:
        colour_at = indices[len(indices) // 2]
    if _fast_jpeg(ds):
        try:
            return _jpeg_luma(ds, indices, colour_at)
        except Exception:  # an odd stream: the general decoder gives the real reason
            pass
    rgb = _native_rgb(ds, indices)
    if rgb is None:
        rgb = decode_frames(ds, indices)
    n, h, w, _ = rgb.shape
    # one Pillow call for the batch: frames stacked vertically; luma is per pixel
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(rgb).reshape(n * h, w, 3)).convert("L")).reshape(n, h, w)
    return gray, colour_fraction(rgb) if colour_at is not None else 0.0


def _native_rgb(ds, indices):
    """(n, H, W, 3) uint8 view of uncompressed 8-bit RGB pixel data, or None when the
    data is anything else (the general decoder then handles it, with its checks)."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        if not (ts in NATIVE_LE and int(ds.get("SamplesPerPixel", 1) or 1) == 3
                and str(ds.get("PhotometricInterpretation", "")).strip().upper() == "RGB"
                and int(ds.get("BitsAllocated", 0) or 0) == 8 and int(ds.get("BitsStored", 8) or 8) == 8
                and "PixelData" in ds):
            return None
        n = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
    except (TypeError, ValueError, AttributeError):
        return None
    if not isinstance(data, (bytes, bytearray)) or len(data) < n * rows * cols * 3 or rows < 1 or cols < 1:
        return None
    if any(not 0 <= i < n for i in indices):
        return None
    buf = np.frombuffer(data, np.uint8, count=n * rows * cols * 3)
    if int(ds.get("PlanarConfiguration", 0) or 0) == 1:  # RRR..GGG..BBB.. per frame
        return buf.reshape(n, 3, rows, cols)[indices].transpose(0, 2, 3, 1)
    return buf.reshape(n, rows, cols, 3)[indices]


def _jpeg_luma(ds, indices, colour_at):
    from pydicom.encaps import get_frame
    n = int(ds.get("NumberOfFrames", 1) or 1)
    gray, header = None, None
    for k, i in enumerate(indices):
        data = get_frame(ds.PixelData, i, number_of_frames=n)
        if header is not None and _sof(data) == header:
            # the frames of a cine share their header (checked: same size and components):
            # straight to the decoder with the settings Pillow chose for the first one,
            # skipping its header parsing in Python (about a third of the time)
            img = Image.frombytes("L", (header[1], header[0]), data, "jpeg", "L", "")
        else:
            img = Image.open(io.BytesIO(data))
            img.draft("L", img.size)  # libjpeg hands back the luma component only
            args = tuple(img.tile[0][3]) if len(img.tile) == 1 else None
            img = img.convert("L")
            if k == 0:
                gray = np.empty((len(indices), img.size[1], img.size[0]), np.uint8)
                sof = _sof(data)
                header = sof if args == ("L", "") and sof and (sof[1], sof[0]) == img.size else None
            elif img.size != (gray.shape[2], gray.shape[1]):
                raise ValueError(f"frame {i + 1} is {img.size[0]}x{img.size[1]}, "
                                 f"frame {indices[0] + 1} {gray.shape[2]}x{gray.shape[1]}")
        gray[k] = np.asarray(img)
    if colour_at is None or int(ds.get("SamplesPerPixel", 1) or 1) == 1 \
            or str(ds.PhotometricInterpretation) == "MONOCHROME2":
        return gray, 0.0
    # one frame in colour (libjpeg's own YCbCr -> RGB) for the colour-Doppler check
    mid = Image.open(io.BytesIO(get_frame(ds.PixelData, colour_at, number_of_frames=n)))
    if str(ds.PhotometricInterpretation) == "RGB" and mid.mode == "RGB":
        rgb = np.asarray(mid)  # stored as RGB: no colour transform in the stream
    else:
        rgb = np.asarray(mid.convert("RGB"))
    return gray, colour_fraction(rgb[None])


def _sof(data: bytes):
    """(height, width, components) from a JPEG stream's baseline/extended SOF header, or
    None when the stream is anything else or the header cannot be found simply."""
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, min(len(data), 65536)
    while i + 9 < end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xC0, 0xC1):
            return (int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9])
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xDA:
            return None  # another coding process, or scan data before a frame header
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None

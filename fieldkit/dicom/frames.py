"""Any stored instance -> normalised frames: uint8 RGB, shape (frames, rows, cols, 3).

One function for the whole kit (thumbnails, inference, rendered WADO frames), so every
photometric interpretation and transfer syntax is handled in one place:

- native and deflated/big-endian data, JPEG family, JPEG-LS, JPEG 2000 and RLE go through
  pydicom's pixel decoders (Pillow, and libjpeg-turbo for lossless and 12-bit JPEG through
  jpeg_turbo.py; pyjpegls, openjpeg and pylibjpeg-rle for the rest);
  YBR_FULL/YBR_FULL_422 come back as RGB, and YBR_RCT/ICT are undone by the JPEG 2000 codec;
- PALETTE COLOR goes through the palette; MONOCHROME1/2 through the modality and VOI LUTs
  (window, else the frame's own range), MONOCHROME1 inverted so bright means echo;
- MPEG-2, MPEG-4 AVC/H.264 and HEVC cine loops are decoded with PyAV (FFmpeg).
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from ..errors import short
from . import uids


class DecodeError(ValueError):
    """The pixel data cannot be turned into frames; the message says why."""


def frame_count(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DecodeError(f"NumberOfFrames is not a number: {ds.get('NumberOfFrames')!r}") from None
    if n < 1:
        raise DecodeError(f"NumberOfFrames must be at least 1, got {n}")
    return n


def has_pixels(ds: Dataset) -> bool:
    return any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009))


def decode_frames(ds: Dataset, indices: Iterable[int] | None = None) -> np.ndarray:
    """Frames of `ds` (all, or those in `indices`) as uint8 RGB (n, rows, cols, 3).

    Raises DecodeError with the reason when the pixel data is missing or does not decode.
    """
    if not has_pixels(ds):
        raise DecodeError("the object has no pixel data")
    n = frame_count(ds)
    wanted = list(range(n)) if indices is None else [int(i) for i in indices]
    for i in wanted:
        if not 0 <= i < n:
            raise DecodeError(f"frame {i + 1} requested but the object has {n} frame(s)")
    ts = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else ""
    if uids.is_video(ts):
        return _decode_video(ds, ts, wanted)
    out = []
    for i in wanted:
        try:
            arr = pixel_array(ds, index=i) if n > 1 else pixel_array(ds)
        except Exception as exc:  # codecs raise many types; callers need one with a reason
            raise DecodeError(f"pixel data does not decode: {short(exc)} [{_ts_label(ts)}]") from None
        out.append(_normalise(ds, arr))
    return np.stack(out)


def decode_frame(ds: Dataset, index: int = 0) -> np.ndarray:
    """One frame, uint8 RGB (rows, cols, 3)."""
    return decode_frames(ds, [index])[0]


def _normalise(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp == 1:
        if arr.ndim != 2:
            raise DecodeError(f"expected one sample per pixel, decoded shape {arr.shape}")
        if pi == "PALETTE COLOR":
            try:
                rgb = apply_color_lut(arr, ds)
            except Exception as exc:
                raise DecodeError(f"palette colour lookup failed: {short(exc)}") from None
            return _to_uint8(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
        gray = _grayscale(ds, arr)
        if pi == "MONOCHROME1":
            gray = 255 - gray
        return np.repeat(gray[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DecodeError(f"expected three samples per pixel, decoded shape {arr.shape}")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    return _to_uint8(arr, bits)


def _grayscale(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8 and "WindowCenter" not in ds and "VOILUTSequence" not in ds \
            and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        return arr
    try:
        values = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds)
    except Exception:
        values = arr  # a broken LUT must not hide the image: fall back to the frame's range
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    shift = max(0, min(bits, arr.dtype.itemsize * 8) - 8)
    return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _decode_video(ds: Dataset, ts: str, wanted: list[int]) -> np.ndarray:
    import av  # PyAV: FFmpeg bindings, imported here so a kit without video still starts

    try:
        stream_bytes = b"".join(generate_fragments(ds.PixelData))
    except Exception as exc:
        raise DecodeError(f"video pixel data is not encapsulated properly: {short(exc)}") from None
    fmt = "hevc" if ts in uids.HEVC_SYNTAXES else ("mpegvideo" if ts in uids.MPEG2_SYNTAXES else "h264")
    want = set(wanted)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(stream_bytes), format=fmt) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except Exception as exc:
        raise DecodeError(f"video stream does not decode: {short(exc)} [{_ts_label(ts)}]") from None
    missing = [i for i in wanted if i not in got]
    if missing:
        raise DecodeError(f"video stream holds {len(got) and max(got) + 1 or 0} decodable frame(s); "
                          f"frame {missing[0] + 1} is missing")
    return np.stack([got[i] for i in wanted])


def _ts_label(ts: str) -> str:
    return uids.transfer_syntax_name(ts) if ts else "no transfer syntax"

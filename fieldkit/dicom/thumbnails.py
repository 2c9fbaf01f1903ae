"""Small JPEG previews for the tablet's lists, made once at ingest from the first frame."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from . import uids
from .frames import decode_frame, frame_count

THUMB_MAX_SIDE = 256


def _factor(cols: int, rows: int, max_side: int) -> int:
    """The smallest whole reduction that brings the longest side to `max_side` or less:
    previews are made by averaging k x k blocks (Image.reduce), several times cheaper than
    resampling to an exact size, so their longest side lies between max_side/2 and max_side."""
    return max(1, -(-max(cols, rows) // max_side))


def _jpeg(img: Image.Image, max_side: int, quality: int = 80) -> bytes:
    k = _factor(*img.size, max_side)
    if k > 1:
        img = img.reduce(k)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_jpeg(frame: np.ndarray, max_side: int = THUMB_MAX_SIDE, quality: int = 80) -> bytes:
    """uint8 RGB (rows, cols, 3) -> JPEG bytes, longest side at most `max_side`."""
    return _jpeg(Image.fromarray(np.ascontiguousarray(frame), "RGB"), max_side, quality)


def thumbnail_of(ds: Dataset, max_side: int = THUMB_MAX_SIDE) -> bytes:
    """The preview of `ds`'s first frame. Raises frames.DecodeError when it does not decode.

    An 8-bit YCbCr or greyscale baseline JPEG frame (what most probes' cines hold) is
    decoded by Pillow straight at the reduced size (DCT scaling): a fraction of a full
    decode and colour conversion. Anything else, or a frame Pillow refuses, goes through
    the kit's one decoder."""
    frame = _jpeg_preview(ds, max_side)
    if frame is None:
        frame = _native_rgb_preview(ds, max_side)
    if frame is not None:
        return frame
    return thumbnail_jpeg(decode_frame(ds, 0), max_side)


def _native_rgb_preview(ds: Dataset, max_side: int) -> bytes | None:
    """8-bit interleaved RGB, uncompressed (most probes' stills): the first frame's bytes
    are the picture, no decoder needed. The length was checked at ingest (parse.check)."""
    try:
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if ts not in (uids.IMPLICIT_LE, uids.EXPLICIT_LE) or \
                str(ds.get("PhotometricInterpretation", "")).strip().upper() != "RGB":
            return None
        if int(ds.get("SamplesPerPixel", 0) or 0) != 3 or int(ds.get("BitsAllocated", 0) or 0) != 8 or \
                int(ds.get("PlanarConfiguration", 0) or 0) != 0:
            return None
        rows, cols = int(ds.Rows), int(ds.Columns)
        value = ds.get_item(0x7FE00010).value
        if not isinstance(value, (bytes, bytearray)) or len(value) < rows * cols * 3:
            return None
        img = Image.frombuffer("RGB", (cols, rows), value, "raw", "RGB", 0, 1)
    except Exception:
        return None  # the kit's decoder decides, with its reason
    return _jpeg(img, max_side)


def _jpeg_preview(ds: Dataset, max_side: int) -> bytes | None:
    try:
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if ts not in (uids.JPEG_BASELINE, uids.JPEG_EXTENDED):
            return None
        pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        spp, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 0) or 0)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if bits != 8:
            return None
        if not ((spp == 3 and pi in ("YBR_FULL_422", "YBR_FULL")) or
                (spp == 1 and pi == "MONOCHROME2" and not _has_luts(ds))):
            return None
        first = next(generate_frames(ds.get_item(0x7FE00010).value, number_of_frames=frame_count(ds)))
        img = Image.open(io.BytesIO(first), formats=["JPEG"])
        if img.size != (cols, rows) or img.mode != ("RGB" if spp == 3 else "L"):  # libjpeg converts YCbCr
            return None
        k = _factor(cols, rows, max_side)
        size = (-(-cols // k), -(-rows // k))  # what reducing the full decode gives
        img.draft(img.mode, size)  # DCT scaling: at least this size
        img = img.convert("RGB")  # decodes the whole scan: a damaged stream raises here
    except Exception:
        return None  # the kit's decoder decides, with its reason
    if img.size != size:
        img = img.resize(size, Image.Resampling.BOX)
    return _jpeg(img, max_side)


def _has_luts(ds: Dataset) -> bool:
    return any(k in ds for k in ("WindowCenter", "VOILUTSequence", "RescaleSlope", "ModalityLUTSequence"))


def render(frame: np.ndarray, media_type: str = "image/png", quality: int = 90) -> bytes:
    """A full-size rendered frame (WADO-RS rendered), PNG or JPEG."""
    img = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG", compress_level=3)
    return buf.getvalue()

"""Whether two copies of a DICOM object hold the same content, whatever their encoding.

A probe or PACS may send the same instance again in another transfer syntax (big endian,
implicit VR, JPEG lossless): the bytes differ, the object does not. Two copies are the same
when every attribute has equal values and the decoded pixels are equal. Ignored, because
they describe the encoding and not the object: group lengths, Specific Character Set (the
values are compared decoded), Planar Configuration (the pixels are compared decoded),
trailing padding, the pixel data's bytes, and a Derivation Description that only notes a
lossless compression (dcmcjpeg adds one). The patient identity attributes the kit
stamps (PatientID, IssuerOfPatientID, OtherPatientIDsSequence) are left to the caller.

Lossy compression is a real difference: its pixels differ, and so do the Lossy Image
Compression attributes. A video stream (MPEG/HEVC) is compared as stored bytes.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import pixel_array

from . import uids

PIXEL_DATA = 0x7FE00010
DERIVATION = 0x00082111  # Derivation Description
ENCODING_TAGS = frozenset({0x00080005, 0x00280006, 0xFFFCFFFC, PIXEL_DATA})
IDENTITY_TAGS = frozenset({0x00100020, 0x00100021, 0x00101002})
_SWAP = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}  # word sizes of binary VRs
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _little(value: bytes, vr: str, little: bool) -> bytes:
    """A binary value in little endian order, whatever order it was read in."""
    size = _SWAP.get(vr)
    if little or size is None or not value or len(value) % size:
        return value
    return np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _un_text(value: bytes) -> str:
    return value.decode("latin-1", "replace").rstrip("\0 ").strip()


def _equal(a, b, little_a: bool, little_b: bool) -> bool:
    if a.VR == "SQ" or b.VR == "SQ":
        if a.VR != b.VR or len(a.value) != len(b.value):
            return False
        return all(difference(x, y, little_a, little_b) is None for x, y in zip(a.value, b.value))
    va, vb = a.value, b.value
    if a.VR != b.VR and "UN" in (a.VR, b.VR):  # implicit VR read an unknown (private) tag as UN
        un, other = (va, b) if a.VR == "UN" else (vb, a)
        return other.VR in _TEXT_VRS and _un_text(un or b"") == str(other.value if other.value is not None else "")
    if isinstance(va, bytes) and isinstance(vb, bytes):
        return _little(va, a.VR, little_a) == _little(vb, b.VR, little_b)
    return va == vb


def _only_lossless_note(a: Dataset, b: Dataset) -> bool:
    """Derivation Descriptions that differ only by a note of lossless compression, which
    a re-encoder such as dcmtk's dcmcjpeg adds ("Lossless JPEG compression, ...")."""
    texts = sorted((str(ds.get(DERIVATION, "") or "") for ds in (a, b)), key=len)
    short, long = texts
    extra = long.replace(short, "", 1) if short in long else long
    return "lossless" in extra.lower() and "lossy" not in extra.lower()


def difference(a: Dataset, b: Dataset, little_a: bool = True, little_b: bool = True,
               skip: frozenset = frozenset()) -> str | None:
    """The first attribute (as "gggg,eeee") whose value differs between `a` and `b`,
    outside the encoding tags and `skip`; None when every one is equal."""
    def tags(ds):
        return {int(t) for t in ds.keys() if t.element != 0 and int(t) not in ENCODING_TAGS | skip}
    for tag in sorted(tags(a) | tags(b)):
        if tag not in a or tag not in b or not _equal(a[tag], b[tag], little_a, little_b):
            if tag == DERIVATION and _only_lossless_note(a, b):
                continue
            return f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
    return None


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def same_pixels(a: Dataset, b: Dataset) -> bool:
    """Whether the pixel data of both decodes to the same values (video: the same bytes)."""
    if (PIXEL_DATA in a) != (PIXEL_DATA in b):
        return False
    if PIXEL_DATA not in a:
        return True
    ts_a, ts_b = _syntax(a), _syntax(b)
    if uids.is_video(ts_a) or uids.is_video(ts_b):
        return ts_a == ts_b and b"".join(generate_fragments(a.PixelData)) == b"".join(generate_fragments(b.PixelData))
    try:
        return np.array_equal(pixel_array(a), pixel_array(b))
    except Exception:  # a copy whose pixels do not decode is not shown to be the same
        return False


def same_content(a: Dataset, b: Dataset, skip: frozenset = IDENTITY_TAGS) -> bool:
    """Whether `a` and `b` (both read with their file meta) are the same object."""
    little_a = not _syntax(a) == uids.EXPLICIT_BE
    little_b = not _syntax(b) == uids.EXPLICIT_BE
    return difference(a, b, little_a, little_b, skip) is None and same_pixels(a, b)

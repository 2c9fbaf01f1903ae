"""Reading and checking a received DICOM object before anything is stored.

Every path into the kit (C-STORE, STOW-RS, upload, import) goes through `read_part10` or
`read_dimse`, then `check`. A refused object raises InvalidDicom whose `code` says which
DIMSE status / STOW failure reason fits and whose message says why, naming the bad value.
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError

from ..errors import BadInput, short
from . import uids
from .encode import PIXEL_DATA
from .frames import frame_count, has_pixels

# Reason codes (mapped to DIMSE statuses and STOW FailureReason in one place each)
UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
CANNOT_UNDERSTAND = "cannot_understand"
DOES_NOT_MATCH_SOP_CLASS = "does_not_match_sop_class"
TOO_LARGE = "too_large"

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_FRAME_PIXELS = 1 << 26   # 64 Mpx in one frame: no probe comes near; a decode bomb does
MAX_FRAMES = 100_000


class InvalidDicom(BadInput):
    """A refused object; `code` is one of the reason codes above."""

    def __init__(self, message: str, code: str = CANNOT_UNDERSTAND, sop_instance_uid: str = ""):
        super().__init__(message)
        self.code = code
        self.sop_instance_uid = sop_instance_uid


def valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID_RE.match(text))


def read_part10(source: bytes | BinaryIO) -> Dataset:
    """A Part-10 file (preamble, DICM, file meta) -> Dataset, or InvalidDicom."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        ds = pydicom.dcmread(fp, force=False)
    except InvalidDicomError:
        raise InvalidDicom("not a DICOM Part-10 file (no 'DICM' prefix and file meta header)") from None
    except Exception as exc:
        raise InvalidDicom(f"DICOM file cannot be parsed: {short(exc)}") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidDicom("DICOM file meta header lacks TransferSyntaxUID (0002,0010)")
    if len(ds) == 0:
        # pydicom drops the whole dataset when an undefined-length item runs off the end
        raise InvalidDicom("file holds no readable dataset after its header: truncated or damaged")
    return ds


def read_dimse(raw: bytes | BinaryIO, transfer_syntax: str) -> Dataset:
    """A bare dataset as received over DIMSE, in the presentation context's syntax."""
    from pynetdicom.dsutils import decode

    fp = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    ts = pydicom.uid.UID(str(transfer_syntax))
    try:
        ds = decode(fp, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    except Exception as exc:
        raise InvalidDicom(f"dataset cannot be parsed: {short(exc)}") from None
    if len(ds) == 0:
        raise InvalidDicom("dataset is empty or cut short before its first complete element")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def check(ds: Dataset) -> dict:
    """Refuse what the kit cannot keep faithfully; return the catalogue facts of `ds`."""
    def early(message: str, code: str = CANNOT_UNDERSTAND):
        raise InvalidDicom(message, code)

    _check_truncation(ds, early)
    try:
        return _check(ds)
    except InvalidDicom:
        raise
    except Exception as exc:  # pydicom cannot read a value it was asked for: malformed input
        raise InvalidDicom(f"element cannot be read: {short(exc)}") from None


def _check(ds: Dataset) -> dict:
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")

    def refuse(message: str, code: str = CANNOT_UNDERSTAND):
        raise InvalidDicom(message, code, sop_uid if valid_uid(sop_uid) else "")

    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if ts not in uids.ACCEPTED_TRANSFER_SYNTAXES:
        refuse(f"transfer syntax {ts or '(none)'} is not one the kit accepts", UNSUPPORTED_TRANSFER_SYNTAX)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not valid_uid(sop_class):
        refuse(f"SOPClassUID is missing or not a valid UID: {sop_class[:70]!r}")
    if sop_class not in uids.ACCEPTED_SOP_CLASSES:
        refuse(f"SOP class {sop_class} ({pydicom.uid.UID(sop_class).name}) is not stored by the kit; "
               "it keeps ultrasound, secondary capture, structured reports and PDF documents", UNSUPPORTED_SOP_CLASS)
    meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if meta_class and meta_class != sop_class:
        refuse(f"file meta says SOP class {meta_class} but the dataset says {sop_class}",
               DOES_NOT_MATCH_SOP_CLASS)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if not valid_uid(value):
            refuse(f"{keyword} is missing or not a valid UID: {value[:70]!r}", DOES_NOT_MATCH_SOP_CLASS)
    meta_inst = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    if meta_inst and meta_inst != sop_uid:
        refuse(f"file meta says SOP instance {meta_inst} but the dataset says {sop_uid}")

    facts = {"sop_instance_uid": sop_uid, "sop_class_uid": sop_class,
             "study_instance_uid": str(ds.StudyInstanceUID), "series_instance_uid": str(ds.SeriesInstanceUID),
             "transfer_syntax": ts, "frames": 0, "rows": 0, "columns": 0, "frame_time_ms": None,
             "is_image": sop_class in uids.IMAGE_STORAGE_CLASSES,
             "modality": str(ds.get("Modality", "") or "")[:16], "study_date": str(ds.get("StudyDate", "") or "")[:8]}
    if sop_class in uids.DOCUMENT_STORAGE_CLASSES:
        if not ds.get("EncapsulatedDocument"):
            refuse("encapsulated document has no document (0042,0011): missing or truncated",
                   DOES_NOT_MATCH_SOP_CLASS)
        return facts
    if sop_class in uids.SR_STORAGE_CLASSES:
        if "ContentSequence" not in ds and "ValueType" not in ds:
            refuse("structured report has no content (ContentSequence missing: truncated?)",
                   DOES_NOT_MATCH_SOP_CLASS)
        return facts
    if not has_pixels(ds):
        refuse("image object has no Pixel Data (7FE0,0010): missing or truncated", DOES_NOT_MATCH_SOP_CLASS)
    facts.update(_check_pixels(ds, ts, refuse))
    return facts


def _check_pixels(ds: Dataset, ts: str, refuse) -> dict:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = frame_count(ds)
    except Exception as exc:
        refuse(f"image pixel description is incomplete or not numeric: {short(exc)}", DOES_NOT_MATCH_SOP_CLASS)
    if rows < 1 or cols < 1 or rows * cols > MAX_FRAME_PIXELS:
        refuse(f"image size {rows}x{cols} is outside what the kit accepts")
    if spp not in (1, 3) or bits not in (1, 8, 16, 32) or n > MAX_FRAMES:
        refuse(f"unsupported pixel layout: SamplesPerPixel={spp}, BitsAllocated={bits}, frames={n}")
    if "PhotometricInterpretation" not in ds:
        refuse("PhotometricInterpretation (0028,0004) is missing", DOES_NOT_MATCH_SOP_CLASS)
    if "PixelData" not in ds:
        refuse("only integer Pixel Data (7FE0,0010) is accepted")
    value = ds.get_item(PIXEL_DATA).value  # raw access: no conversion, no copy of a large value
    if value is None:
        refuse("Pixel Data has no value")
    if ts in uids.NATIVE_SYNTAXES:
        # native YBR_FULL_422 keeps one Cb and one Cr per pair of pixels: two samples a pixel
        stored = 2 if spp == 3 and str(ds.PhotometricInterpretation).strip().upper() == "YBR_FULL_422" else spp
        need = (rows * cols * stored * n * bits + 7) // 8
        if len(value) < need:
            refuse(f"Pixel Data truncated or wrong length: {len(value)} bytes, {need} needed for "
                   f"{rows}x{cols}x{stored} samples x {bits} bits x {n} frame(s)")
    else:
        try:
            fragments = sum(1 for _ in generate_fragments(value))
        except Exception as exc:
            refuse(f"encapsulated Pixel Data is damaged: {short(exc)}")
        if fragments < 1:
            refuse("encapsulated Pixel Data holds no fragments")
        if not uids.is_video(ts) and n > 1 and fragments < n:
            # a frame may span fragments, never the other way round
            refuse(f"encapsulated Pixel Data holds {fragments} fragment(s) for {n} frames: truncated")
    frame_time = None
    for keyword in ("FrameTime",):
        try:
            if keyword in ds and ds.get(keyword) not in (None, ""):
                frame_time = float(ds.get(keyword))
        except (TypeError, ValueError):
            frame_time = None
    if frame_time is None and "CineRate" in ds:
        try:
            rate = float(ds.CineRate)
            frame_time = 1000.0 / rate if rate > 0 else None
        except (TypeError, ValueError):
            pass
    return {"frames": n, "rows": rows, "columns": cols, "frame_time_ms": frame_time}


def _check_truncation(ds: Dataset, refuse, depth: int = 0) -> None:
    """pydicom keeps a short last value rather than failing; the kit must not store it."""
    if depth > 16:
        refuse("sequences nested more than 16 deep")
    for tag, elem in ds._dict.items():
        if tag >> 16 in (0x0000, 0x0002) and tag & 0xFFFF:
            refuse(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) of the command or file meta group "
                   "sits inside the dataset")
        if isinstance(elem, RawDataElement):
            if elem.value is not None and elem.length not in (0xFFFFFFFF,) and len(elem.value) < elem.length:
                refuse(f"truncated file: element ({elem.tag.group:04X},{elem.tag.element:04X}) has "
                       f"{len(elem.value)} of {elem.length} bytes")
        elif elem.VR == "SQ":
            for item in elem.value or []:
                _check_truncation(item, refuse, depth + 1)

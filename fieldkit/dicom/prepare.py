"""Everything the kit reads from a received object before it stores it, in one step that
needs neither the store nor a key: read and check the object, encode the copy to keep
(all of it but the identity, which the store stamps once the patient is known), make its
preview, and read the identity it came with and the attributes QIDO-RS answers with.

A `Prepared` keeps only what storing needs (the encoded pieces and the small identity
dataset), not the parsed dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset

from . import encode, parse, uids
from .frames import DecodeError
from .identity import SourceIdentity, source_identity
from .thumbnails import thumbnail_of

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    facts: dict               # parse.check's catalogue facts
    encoded: encode.Encoded    # the copy to keep, identity not yet stamped
    source: SourceIdentity    # the identity the object came with
    thumbnail: bytes | None   # JPEG preview of the first frame (images)
    decode_error: str         # a video frame the kit cannot decode: kept, flagged
    descriptive: dict         # text attributes QIDO-RS answers with

    @property
    def sop_instance_uid(self) -> str:
        return self.facts["sop_instance_uid"]


def prepare(data: bytes | BinaryIO | Dataset, *, transfer_syntax: str | None = None, raw: dict | None = None,
            thumbnail: bool = True) -> Prepared:
    """A Part-10 file (bytes or a reader), or with `transfer_syntax` a bare dataset as
    received over DIMSE, or a pydicom Dataset (with `raw`, its element dict as read) ->
    Prepared. Raises parse.InvalidDicom (a BadInput) with the reason when refused."""
    if isinstance(data, Dataset):
        ds = data
    else:
        ds = parse.read_dimse(data, transfer_syntax) if transfer_syntax else parse.read_part10(data)
        raw = dict(ds._dict)  # the elements as received, before checking converts any
    facts = parse.check(ds)
    sop_uid = facts["sop_instance_uid"]
    encoded = guarded(lambda: encode.Encoded(ds, raw), sop_uid)  # the one full encoding
    decode_error, thumb = "", None
    if facts["is_image"] and thumbnail:
        try:
            thumb = thumbnail_of(ds)
        except DecodeError as exc:
            if not uids.is_video(facts["transfer_syntax"]):
                raise parse.InvalidDicom(str(exc), parse.CANNOT_UNDERSTAND, sop_uid) from None
            decode_error = str(exc)  # kept as sent (stored and synced); flagged for the UI
        except Exception as exc:  # a codec failing in an unexpected way is still a refusal
            raise parse.InvalidDicom(f"pixel data does not decode: {str(exc)[:200]}",
                                     parse.CANNOT_UNDERSTAND, sop_uid) from None
    return Prepared(facts, encoded, guarded(lambda: source_identity(ds), sop_uid), thumb, decode_error,
                    descriptive(ds))


def guarded(fn, sop_uid: str):
    """pydicom failing on a value it reads or writes back is malformed input, not a kit fault."""
    try:
        return fn()
    except Exception as exc:
        log.warning("object refused, cannot be re-encoded: %s", type(exc).__name__)
        raise parse.InvalidDicom(f"object cannot be re-encoded: {str(exc)[:160]}",
                                 parse.CANNOT_UNDERSTAND, sop_uid) from None


_DESCRIPTIVE = {
    "study_time": "StudyTime", "accession_number": "AccessionNumber", "study_description": "StudyDescription",
    "study_id": "StudyID", "referring_physician": "ReferringPhysicianName", "series_number": "SeriesNumber",
    "series_description": "SeriesDescription", "instance_number": "InstanceNumber",
    "photometric_interpretation": "PhotometricInterpretation", "manufacturer": "Manufacturer",
    "body_part": "BodyPartExamined", "institution_name": "InstitutionName",
}


def descriptive(ds: Dataset) -> dict:
    """Attributes QIDO-RS answers with, copied as text (never interpreted)."""
    out = {}
    for key, keyword in _DESCRIPTIVE.items():
        try:
            value = ds.get(keyword, "")
            out[key] = "" if value is None else str(value)[:256]
        except Exception:
            out[key] = ""
    return out

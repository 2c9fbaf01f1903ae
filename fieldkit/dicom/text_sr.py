"""The Basic Text SR the kit writes for the hospital (status, review and audit documents):
one header for all, the document's root and content items from highdicom, Part-10 bytes.

highdicom has document classes only for Enhanced and Comprehensive SR (other SOP classes,
which a hospital files differently), so the SR document modules are set here; the root
CONTAINER and every content item are highdicom's, as in `inference/sr.py`.
"""

from __future__ import annotations

import io

from highdicom.sr import CodedConcept, ContainerContentItem, ContentItem
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def text_sr(*, sop_uid: str, study_uid: str, series_uid: str, stamp: str, title: CodedConcept,
            items: list[ContentItem], study_description: str, series_description: str, series_number: int,
            instance_number: int, implementation_uid: str, study_id: str = "") -> Dataset:
    """A Basic Text SR holding `items` under a `title` container, dated `stamp` (UTC,
    YYYYMMDDHHMMSS), with its file meta; the caller adds the patient module."""
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "SR"
    ds.StudyDate = ds.ContentDate = stamp[:8]
    ds.StudyTime = ds.ContentTime = stamp[8:]
    ds.TimezoneOffsetFromUTC = "+0000"  # `stamp` is the kit's clock in UTC: said so, not left to guess
    ds.ReferencedPerformedProcedureStepSequence = Sequence()  # type 2 (SR Document Series): empty
    ds.PerformedProcedureCodeSequence = Sequence()  # type 2 (SR Document General): empty
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id
    ds.Manufacturer = "fieldkit"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.update(ContainerContentItem(name=title, is_content_continuous=False))
    ds.ContentSequence = Sequence(items)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names and notes may be in any script
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = implementation_uid
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

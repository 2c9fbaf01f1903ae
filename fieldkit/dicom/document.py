"""A PDF the kit made, as a DICOM Encapsulated PDF (PS3.3 A.45.1) in a patient's study,
carrying the kit's identity of the patient like every object the kit stores or sends.

pydicom builds it (highdicom has no encapsulated-document class); the PDF stays bytes in
memory from the maker to the store.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from . import uids
from .identity import stamp

MANUFACTURER = "fieldkit"


def encapsulated_pdf(pdf: bytes, *, patient_id: str, issuer: str, patient_name: str = "", sex: str = "",
                     birth_date: str = "", study_uid: str, series_uid: str, title: str,
                     uid_root: str = "2.25", when: dt.datetime | None = None) -> Dataset:
    """The Encapsulated PDF dataset (with file meta) for `pdf`, a new instance each call."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    when = (when or dt.datetime.now(dt.timezone.utc)).astimezone()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = uids.ENCAPSULATED_PDF
    ds.SOPInstanceUID = uids.new_uid(uid_root)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date if len(birth_date) == 8 else ""
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    stamp(ds, patient_id, issuer)
    ds.Modality = "DOC"
    ds.ConversionType = "WSD"  # made on the kit's own workstation
    ds.Manufacturer = MANUFACTURER
    ds.StudyDate = ds.ContentDate = ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S%z")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.SeriesNumber = 901
    ds.InstanceNumber = 1
    ds.SeriesDescription = title[:64]
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.BurnedInAnnotation = "YES"  # the sheet names the patient
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB values have even length
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds

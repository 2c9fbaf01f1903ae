"""Patient identity carried by a DICOM object, and stamping the kit's identity onto it.

Every object the kit stores or sends carries the kit patient ID as PatientID with the
kit's IssuerOfPatientID. The probe's own ID is not thrown away: it moves into
OtherPatientIDsSequence, so the hospital can still trace the capture to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

# PatientID values handhelds put in when nobody typed one; never used to link captures.
GENERIC_IDS = frozenset({"", "0", "00000000", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "NA", "N/A", "NOID", "NO ID", "TEST"})


@dataclass(frozen=True)
class SourceIdentity:
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str

    @property
    def is_generic(self) -> bool:
        return self.patient_id.strip().upper() in GENERIC_IDS


def source_identity(ds: Dataset) -> SourceIdentity:
    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    return SourceIdentity(
        patient_id=text("PatientID"),
        issuer=text("IssuerOfPatientID"),
        name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex").upper()[:1] if text("PatientSex") else "",
    )


def stamp(ds: Dataset, patient_id: str, issuer: str, before: SourceIdentity | None = None) -> bool:
    """Set PatientID/IssuerOfPatientID to the kit's; keep a differing source ID in
    OtherPatientIDsSequence. Returns True when anything changed (a coercion). Only these
    three attributes change (encode.STAMPED_TAGS: the stored copy re-encodes just them)."""
    before = before or source_identity(ds)  # the identity as received (callers that read it pass it in)
    if str(ds.get("PatientID", "") or "").strip() == patient_id and \
            str(ds.get("IssuerOfPatientID", "") or "").strip() == issuer:
        return False
    # The source identity is kept when it names someone else: another ID, or the same ID
    # under another issuer (a tag number typed on a probe set up with its vendor's issuer).
    if before.patient_id and (before.patient_id != patient_id or before.issuer not in ("", issuer)):
        others = list(ds.get("OtherPatientIDsSequence", []) or [])
        if not any(str(o.get("PatientID", "")) == before.patient_id
                   and str(o.get("IssuerOfPatientID", "")) == before.issuer for o in others):
            item = Dataset()
            item.PatientID = before.patient_id
            if before.issuer:
                item.IssuerOfPatientID = before.issuer
            item.TypeOfPatientID = "TEXT"
            others.append(item)
            ds.OtherPatientIDsSequence = Sequence(others)
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    return True

"""How a triage or identity change travels to the hospital, in standard DICOMweb terms.

The kit never edits what the hospital already holds (STOW-RS cannot, and PACS differ in
how they handle overwrites). Instead each change becomes a small new object: a Basic Text
SR "Field triage status" in a per-patient kit study, carrying the kit PatientID with the
kit's Issuer of Patient ID, the current name/birth date/sex the kit knows, and the triage
category. The newest such document (ContentDate/Time) is the current state; older ones
are the history. UIDs are derived from the content, so re-sending the same state gives
the same object (harmless) and a new state gives a new one.

Patient documents are read leniently: `triage`, `name` (or `patient_name`),
`birth_date`, `sex`, `tag`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
IMPLEMENTATION_UID = "2.25.301913385263297432245473496787437290147"


def _uid(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


_CODES = {"Triage category": "FK-TRIAGE", "Update": "FK-UPDATE", "Triage tag": "FK-TAG"}


def _text(name: str, value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(_CODES[name], "99FIELDKIT", name)])
    item.TextValue = value[:1024]
    return item


def patient_state(doc: dict) -> dict:
    return {"triage": str(doc.get("triage") or "none"),
            "name": str(doc.get("name") or doc.get("patient_name") or ""),
            "birth_date": str(doc.get("birth_date") or ""),
            "sex": str(doc.get("sex") or "")[:1].upper(),
            "tag": str(doc.get("tag") or doc.get("triage_tag") or "")}


def build_update(patient_id: str, issuer: str, patient_doc: dict, kit_id: str,
                 what: str, when: dt.datetime | None = None) -> tuple[bytes, str]:
    """-> (Part-10 bytes, SOP Instance UID) of the status document for this patient."""
    state = patient_state(patient_doc)
    fingerprint = json.dumps(state, sort_keys=True)
    sop_uid = _uid("fieldkit-update", kit_id, issuer, patient_id, fingerprint)
    study_uid = _uid("fieldkit-status-study", kit_id, issuer, patient_id)
    series_uid = _uid("fieldkit-status-series", kit_id, issuer, patient_id)
    # `when` is the time the change was queued, so a re-send is byte-identical
    stamp = (when or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d%H%M%S")

    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "SR"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientName = "^".join(p.strip() for p in state["name"].split(",", 1)) if state["name"] else ""
    ds.PatientBirthDate = state["birth_date"] if len(state["birth_date"]) == 8 else ""
    ds.PatientSex = state["sex"] if state["sex"] in ("M", "F", "O") else ""
    ds.StudyDate = ds.ContentDate = stamp[:8]
    ds.StudyTime = ds.ContentTime = stamp[8:]
    ds.StudyDescription = "Field kit triage and identity"
    ds.SeriesDescription = "Triage status"
    ds.SeriesNumber = 9000
    ds.InstanceNumber = int(sop_uid[-8:]) or 1
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.Manufacturer = "fieldkit"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("FK-STATUS", "99FIELDKIT", "Field triage status")])
    items = [_text("Triage category", state["triage"]),
             _text("Update", what)]
    if state["tag"]:
        items.append(_text("Triage tag", state["tag"]))
    ds.ContentSequence = Sequence(items)
    ds.SpecificCharacterSet = "ISO_IR 192"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), sop_uid

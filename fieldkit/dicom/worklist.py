"""Modality Worklist items for the kit's patients, and C-FIND matching (PS3.4 K.6, C.2.2.2).

The kit is the only "RIS" in the field: every patient on the board is one scheduled
procedure step that a probe can pick, so its captures carry the kit's PatientID, issuer,
AccessionNumber and StudyInstanceUID and file themselves. The encounter's accession and
study UID are derived from the kit's issuer and the patient ID, so they are stable without
being stored, and the same on every query. Pure: no store, no network.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .uids import derived_uid

SPS = "ScheduledProcedureStepSequence"
# What each triage category is called on a worklist (the probe shows it to the sonographer).
CATEGORY_TEXT = {"red": "RED - Immediate", "yellow": "YELLOW - Delayed", "green": "GREEN - Minor",
                 "grey": "GREY - Expectant", "none": "Not triaged"}
# Most urgent first; black (deceased) patients are not scheduled at all.
URGENCY = {"red": 0, "yellow": 1, "none": 2, "green": 3, "grey": 4}
PROCEDURE_CODE = ("POCUS", "99FIELDKIT")


class QueryError(ValueError):
    """A C-FIND identifier the kit cannot answer (named element, reason)."""


def encounter(issuer: str, patient_id: str, uid_root: str = "2.25") -> tuple[str, str]:
    """(AccessionNumber, StudyInstanceUID) of a patient's encounter: stable, kit-unique."""
    digest = hashlib.sha256(f"{issuer}\\{patient_id}".encode()).digest()
    accession = "FK" + base64.b32encode(digest).decode()[:14]  # SH: at most 16 characters
    return accession, derived_uid(uid_root, "worklist-study", issuer, patient_id)


def person_name(patient: dict) -> str:
    name = (patient.get("name") or "").strip()
    if name:
        return name
    if patient.get("tag"):
        return f"TAG^{patient['tag']}"
    return f"UNIDENTIFIED^{patient['id']}"


def scheduled(patient: dict) -> bool:
    return not patient.get("merged_into") and (patient.get("triage") or "none") in URGENCY


def item_for(patient: dict, *, issuer: str, uid_root: str = "2.25", procedure: str = "POCUS eFAST / lung",
             station_ae: str = "") -> Dataset:
    """The worklist item (a full C-FIND identifier) for one board patient."""
    category = patient.get("triage") or "none"
    accession, study_uid = encounter(issuer, patient["id"], uid_root)
    when = datetime.fromtimestamp(float(patient.get("created") or 0))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient["id"]
    ds.IssuerOfPatientID = issuer
    ds.PatientName = person_name(patient)
    ds.PatientBirthDate = patient.get("birth_date") or ""
    ds.PatientSex = patient.get("sex") or ""
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = study_uid
    ds.RequestedProcedureID = accession
    ds.RequestedProcedureDescription = procedure
    ds.ReferringPhysicianName = ""
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = station_ae
    step.ScheduledProcedureStepStartDate = when.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = when.strftime("%H%M%S")
    step.ScheduledProcedureStepID = accession
    step.ScheduledProcedureStepDescription = f"{CATEGORY_TEXT[category]}: {procedure}"
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepStatus = "SCHEDULED"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = PROCEDURE_CODE
    code.CodeMeaning = procedure[:64]
    step.ScheduledProtocolCodeSequence = Sequence([code])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def urgency(patient: dict) -> tuple:
    return URGENCY.get(patient.get("triage") or "none", 9), float(patient.get("created") or 0)


# ---- matching (PS3.4 C.2.2.2) ---------------------------------------------------------
_RANGE_VRS = ("DA", "TM", "DT")
_NO_WILDCARD_VRS = ("UI", "DA", "TM", "DT", "SQ", "US", "UL", "SS", "SL", "FL", "FD")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _wildcard(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S | (re.I if fold else 0)) is not None


def _range(pattern: str, value: str) -> bool:
    low, _, high = pattern.partition("-")
    if not value:
        return False
    width = max(len(low), len(high))
    value = value[:width] if width else value
    return (not low or value >= low) and (not high or value <= high)


def _element_matches(vr: str, pattern: str, value: str) -> bool:
    if pattern == "" or pattern == "*":
        return True  # universal matching
    if vr == "UI":  # list of UID matching
        return value in pattern.split("\\")
    if vr in _RANGE_VRS and "-" in pattern:
        return _range(pattern, value)
    fold = vr == "PN"  # names match case-insensitively, like most worklist providers
    if vr not in _NO_WILDCARD_VRS and ("*" in pattern or "?" in pattern):
        return _wildcard(pattern, value, fold)
    return value.casefold() == pattern.casefold() if fold else value == pattern


def matches(item: Dataset, query: Dataset) -> bool:
    """True when `item` matches every key of `query` (sequence keys: any item matches all)."""
    for elem in query:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.element == 0:
            continue  # not a key: the character set, group lengths
        if elem.VR == "SQ":
            keys = list(elem.value or [])
            if not keys:
                continue  # universal sequence matching
            if len(keys) > 1:
                raise QueryError(f"{elem.keyword or elem.tag}: one item only")
            have = item.get(elem.tag)
            if have is None or not any(matches(sub, keys[0]) for sub in have.value or []):
                return False
            continue
        have = item.get(elem.tag)
        value = _text(have.value if have is not None else "")
        if not _element_matches(elem.VR, _text(elem.value).strip(), value.strip()):
            return False
    return True


def response(item: Dataset, query: Dataset) -> Dataset:
    """The identifier returned for a match: exactly the query's keys, with the item's values."""
    out = Dataset()
    for elem in query:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.element == 0:
            continue
        have = item.get(elem.tag)
        if elem.VR == "SQ":
            keys = list(elem.value or [])
            subs = list(have.value or []) if have is not None else []
            out_items = []
            for sub in subs:
                if keys and not matches(sub, keys[0]):
                    continue
                out_items.append(response(sub, keys[0]) if keys and len(keys[0]) else sub)
            out.add_new(elem.tag, "SQ", Sequence(out_items))
        else:
            out.add_new(elem.tag, elem.VR, have.value if have is not None else None)
    out.SpecificCharacterSet = item.get("SpecificCharacterSet", "ISO_IR 192")
    return out

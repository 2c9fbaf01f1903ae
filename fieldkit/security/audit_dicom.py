"""The audit trail as a DICOM document, so it travels to the hospital by the same STOW-RS
link as the studies.

Each export (the events after the last one the hospital confirmed) becomes one Basic Text
SR: patient "<kit id>-AUDIT" (with the kit's Issuer of Patient ID), one study and one
series per kit, and a single TEXT content item holding the JSON export
(`fieldkit-audit/1`, see fieldkit.store.accounts.audit_export). The SOP Instance UID is
derived from the kit and the range of events, so re-sending the same export is harmless.
The hospital checks that each export continues the previous one (its "start" link is the
previous "head"), which `read_audit_sr` + `verify_chain(start=...)` make one call each.
"""

from __future__ import annotations

import datetime as _dt
import json

from highdicom.sr import CodedConcept, RelationshipTypeValues, TextContentItem
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, PYDICOM_ROOT_UID

from ..dicom.text_sr import text_sr, to_bytes
from ..dicom.uids import derived_uid

__all__ = ["audit_sr", "read_audit_head", "read_audit_sr", "to_bytes"]

SCHEME = "99FIELDKIT"  # private coding scheme for the two concepts below
TITLE = ("AUDIT", "Audit trail export")
EVENTS = ("AUDITJSON", "Audit events (fieldkit-audit/1 JSON)")
HEAD = ("AUDITHEAD", "Audit chain head (seq and keyed hash of the last event)")


def _code(value: tuple[str, str]) -> CodedConcept:
    return CodedConcept(value[0], SCHEME, value[1])


def _uid(*parts) -> str:
    # under pydicom's root since the first export: a re-sent export keeps its UIDs
    return derived_uid(PYDICOM_ROOT_UID, "fieldkit-audit", *parts)


def audit_sr(export: dict, *, kit_id: str, issuer: str) -> Dataset:
    """A Basic Text SR carrying `export` (a fieldkit-audit/1 document)."""
    if export.get("format") != "fieldkit-audit/1" or not export.get("events"):
        raise ValueError("an audit SR needs a fieldkit-audit/1 export with at least one event")
    first, last = export["events"][0]["seq"], export["events"][-1]["seq"]
    item = TextContentItem(name=_code(EVENTS), value=json.dumps(export, separators=(",", ":"), ensure_ascii=False),
                           relationship_type=RelationshipTypeValues.CONTAINS)
    # The head of the chain this document ends at, on its own: the hospital keeps it as the
    # anchor a later export must continue (a rewrite on the kit, even with its key, shows).
    head = TextContentItem(name=_code(HEAD), relationship_type=RelationshipTypeValues.CONTAINS,
                           value=f"{last} {export['events'][-1]['hash']} {export['events'][-1].get('alg') or 'sha256'}")
    description = f"fieldkit {kit_id} audit trail"
    ds = text_sr(sop_uid=_uid(kit_id, first, last, export["events"][-1]["hash"]),
                 study_uid=_uid(kit_id, "study"), series_uid=_uid(kit_id, "series"),
                 stamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S"), title=_code(TITLE),
                 items=[item, head], study_description=description, series_description=description,
                 series_number=1, instance_number=int(last), study_id="AUDIT",
                 implementation_uid=PYDICOM_IMPLEMENTATION_UID)
    ds.PatientName = f"{kit_id}^AUDIT TRAIL"
    ds.PatientID = f"{kit_id}-AUDIT"
    ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    return ds


def read_audit_head(ds: Dataset) -> tuple[int, str]:
    """The (seq, hash) anchor an audit SR ends at."""
    for item in ds.get("ContentSequence", []):
        code = item.ConceptNameCodeSequence[0]
        if code.CodeValue == HEAD[0] and code.CodingSchemeDesignator == SCHEME:
            seq, hash_, _alg = item.TextValue.split(" ")
            return int(seq), hash_
    raise ValueError("not a fieldkit audit SR (no chain head item)")


def read_audit_sr(ds: Dataset) -> dict:
    """The export carried by an audit SR (what the hospital side calls)."""
    for item in ds.get("ContentSequence", []):
        code = item.ConceptNameCodeSequence[0]
        if code.CodeValue == EVENTS[0] and code.CodingSchemeDesignator == SCHEME:
            return json.loads(item.TextValue)
    raise ValueError("not a fieldkit audit SR (no audit events item)")

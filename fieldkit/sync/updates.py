"""How a triage or identity change travels to the hospital, in standard DICOMweb terms.

The kit never edits what the hospital already holds (STOW-RS cannot, and PACS differ in
how they handle overwrites). Instead each change becomes a small new object: a Basic Text
SR "Field triage status" in a per-patient kit study, carrying the kit PatientID with the
kit's Issuer of Patient ID, the current name/birth date/sex the kit knows, and the triage
category. The newest such document (ContentDate/Time) is the current state; older ones
are the history. UIDs are derived from the content and the time the change was queued,
so re-sending one queued change gives the same object (harmless), and every change,
even back to an earlier state (red -> yellow -> red), is a new object.

Merges: the surviving patient's document lists the kit IDs merged into it as Other
Patient IDs; the merged (old) kit ID gets a last document of its own, under its old
PatientID, that names the surviving ID ("Merged into" and Other Patient IDs), so a
hospital that filed images under the old ID finds where they belong.

Captures moved after the hospital confirmed them (assigned to another patient, or a merge
undone after one was sent): the capture is sent again under its current PatientID (same
UIDs), and under the PatientID the hospital had it under, a last status document names the
capture ("Capture filed in error", its SOP Instance UID) and the patient it belongs to
("Belongs to"). The copy already there stays (STOW-RS cannot delete it); that document is
what tells the hospital it is not that patient's.

Reviews: a clinician's accept/reject of a finding travels as a Basic Text SR "Clinician
review of finding" in the finding's study, referencing the finding's SR by UID and
carrying the verdict, the note, who and when.

Patient documents are read leniently: `triage`, `name` (or `patient_name`),
`birth_date`, `sex`, `tag`, `merged_ids`, `merged_into`.
"""

from __future__ import annotations

import datetime as dt
import json

from highdicom.sr import (CodedConcept, CompositeContentItem, DateTimeContentItem, RelationshipTypeValues,
                          TextContentItem)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..dicom.text_sr import text_sr, to_bytes
from ..dicom.uids import derived_uid

CONTAINS = RelationshipTypeValues.CONTAINS
IMPLEMENTATION_UID = "2.25.301913385263297432245473496787437290147"
# status SRs' UIDs stay under 2.25 whatever dicom.uid_root says: those already at the
# hospital keep their meaning (a re-send replaces, never duplicates)
STATUS_UID_ROOT = "2.25"


_CODES = {"Triage category": "FK-TRIAGE", "Update": "FK-UPDATE", "Triage tag": "FK-TAG",
          "Merged kit ID": "FK-MERGED", "Merged into": "FK-MERGED-INTO",
          "Capture filed in error": "FK-MOVED-CAPTURE", "Belongs to": "FK-MOVED-TO",
          "Verdict": "FK-VERDICT", "Note": "FK-NOTE", "Reviewer": "FK-REVIEWER",
          "Reviewed finding": "FK-FINDING-REF", "Finding": "FK-FINDING", "Reviewed at": "FK-REVIEWED-AT"}


def _concept(name: str) -> CodedConcept:
    return CodedConcept(_CODES[name], "99FIELDKIT", name)


def _text(name: str, value: str) -> TextContentItem:
    return TextContentItem(name=_concept(name), value=value[:1024], relationship_type=CONTAINS)


def patient_state(doc: dict) -> dict:
    state = {"triage": str(doc.get("triage") or "none"),
             "name": str(doc.get("name") or doc.get("patient_name") or ""),
             "birth_date": str(doc.get("birth_date") or ""),
             "sex": str(doc.get("sex") or "")[:1].upper(),
             "tag": str(doc.get("tag") or doc.get("triage_tag") or "")}
    # only present when set, so documents of never-merged patients keep their UIDs
    if doc.get("merged_ids"):
        state["merged_ids"] = sorted(str(x) for x in doc["merged_ids"])
    if doc.get("merged_into"):
        state["merged_into"] = str(doc["merged_into"])
    return state


def _patient_module(ds: Dataset, patient_id: str, issuer: str, state: dict) -> None:
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientName = "^".join(p.strip() for p in state["name"].split(",", 1)) if state["name"] else ""
    ds.PatientBirthDate = state["birth_date"] if len(state["birth_date"]) == 8 else ""
    ds.PatientSex = state["sex"] if state["sex"] in ("M", "F", "O") else ""
    others = list(state.get("merged_ids") or [])
    if state.get("merged_into"):
        others.append(state["merged_into"])
    if others:  # the same person under other kit IDs (PS3.3 C.7.1.1)
        seq = []
        for other in others:
            o = Dataset()
            o.PatientID = other
            o.IssuerOfPatientID = issuer
            o.TypeOfPatientID = "TEXT"
            seq.append(o)
        ds.OtherPatientIDsSequence = Sequence(seq)


def _text_sr(sop_uid: str, study_uid: str, series_uid: str, patient_id: str, issuer: str, state: dict,
             stamp: str, title: CodedConcept, items: list, study_description: str, series_description: str,
             series_number: int) -> Dataset:
    """A status or review document: the kit's Basic Text SR with the patient the kit knows."""
    ds = text_sr(sop_uid=sop_uid, study_uid=study_uid, series_uid=series_uid, stamp=stamp, title=title,
                 items=items, study_description=study_description, series_description=series_description,
                 series_number=series_number, instance_number=int(sop_uid[-8:]) or 1,
                 implementation_uid=IMPLEMENTATION_UID)
    _patient_module(ds, patient_id, issuer, state)
    return ds


def build_update(patient_id: str, issuer: str, patient_doc: dict, kit_id: str,
                 what: str, when: dt.datetime | None = None, moved: tuple[str, str] | None = None) -> tuple[bytes, str]:
    """-> (Part-10 bytes, SOP Instance UID) of the status document for this patient;
    `moved` = (SOP Instance UID, kit ID): a capture filed here in error and where it belongs."""
    state = patient_state(patient_doc)
    # `when` is the time the change was queued, so a re-send is byte-identical
    stamp = (when or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d%H%M%S")
    fingerprint = json.dumps(state, sort_keys=True)
    sop_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-update", kit_id, issuer, patient_id, fingerprint, what, stamp)
    study_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-status-study", kit_id, issuer, patient_id)
    series_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-status-series", kit_id, issuer, patient_id)

    items = [_text("Triage category", state["triage"]),
             _text("Update", what)]
    if state["tag"]:
        items.append(_text("Triage tag", state["tag"]))
    for other in state.get("merged_ids") or []:
        items.append(_text("Merged kit ID", other))
    if state.get("merged_into"):
        items.append(_text("Merged into", state["merged_into"]))
    if moved:
        items += [_text("Capture filed in error", moved[0]), _text("Belongs to", moved[1])]
    ds = _text_sr(sop_uid, study_uid, series_uid, patient_id, issuer, state, stamp,
                  CodedConcept("FK-STATUS", "99FIELDKIT", "Field triage status"), items,
                  "Field kit triage and identity", "Triage status", 9000)
    return to_bytes(ds), sop_uid


def build_review(*, patient_id: str, issuer: str, patient_doc: dict, kit_id: str, finding: dict,
                 target: dict, review: dict) -> tuple[bytes, str]:
    """-> (Part-10 bytes, SOP Instance UID) of the document carrying one review of a finding.

    `target` is the catalogue row of the object the review is about (the finding's SR, or
    its source image when the finding has no SR): its UIDs go into the reference.
    `review` is {"decision", "note", "by", "at"}, as kept on the finding row."""
    state = patient_state(patient_doc)
    at = float(review.get("at") or 0.0)
    stamp = dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    decision = str(review.get("decision") or "")
    note, by = str(review.get("note") or ""), str(review.get("by") or "")
    ref_uid, ref_class = str(target["sop_instance_uid"]), str(target.get("sop_class_uid") or "")
    study_uid = str(target.get("study_instance_uid") or finding.get("study_instance_uid") or "")
    if not study_uid:
        study_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-status-study", kit_id, issuer, patient_id)
    sop_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-review", kit_id, str(finding.get("id", "")), ref_uid, decision,
                          note, by, f"{at:.6f}")
    series_uid = derived_uid(STATUS_UID_ROOT, "fieldkit-review-series", kit_id, study_uid)
    ref = CompositeContentItem(name=_concept("Reviewed finding"), referenced_sop_class_uid=ref_class,
                               referenced_sop_instance_uid=ref_uid, relationship_type=CONTAINS)
    items = [ref, _text("Verdict", decision)]
    what = " ".join(x for x in (str(finding.get("task") or ""), str(finding.get("model") or ""),
                                str(finding.get("model_version") or "")) if x)
    if what:
        items.append(_text("Finding", what))
    if note:
        items.append(_text("Note", note))
    if by:
        items.append(_text("Reviewer", by))
    items.append(DateTimeContentItem(name=_concept("Reviewed at"), value=stamp, relationship_type=CONTAINS))
    ds = _text_sr(sop_uid, study_uid, series_uid, patient_id, issuer, state, stamp,
                  CodedConcept("FK-REVIEW", "99FIELDKIT", "Clinician review of finding"), items,
                  "Field kit findings", "Clinician review of findings", 9001)
    if target.get("series_instance_uid"):  # the evidence this document refers to (1C)
        sop = Dataset()
        sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ref_class, ref_uid
        series = Dataset()
        series.SeriesInstanceUID = str(target["series_instance_uid"])
        series.ReferencedSOPSequence = Sequence([sop])
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = Sequence([series])
        ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return to_bytes(ds), sop_uid


def review_row_key(finding_id: str, review: dict) -> str:
    return f"review:{finding_id}:{float(review.get('at') or 0.0):.6f}"


def enqueue_review(store, finding: dict, review: dict) -> str:
    """Queue one saved review of `finding` for the hospital, at the "finding" priority of
    the patient's triage. Called right after the review is stored."""
    from fieldkit.records import KIND_SYNC, sync_priority
    from fieldkit.store.patients import resolve_row

    pid = str(finding.get("patient_id") or "")
    prow = store.read(lambda db: resolve_row(db, pid)) or {}
    entry = {k: review.get(k) for k in ("decision", "note", "by", "at")}
    return store.queue.enqueue(KIND_SYNC, {"patient_id": prow.get("id") or pid, "what": "review",
                                           "finding_id": str(finding.get("id", "")), "review": entry},
                               priority=sync_priority(str(prow.get("triage") or "none"), "finding"),
                               key=review_row_key(str(finding.get("id", "")), entry))


def merged_ids(db, pid: str) -> list[str]:
    """Kit IDs that were merged (directly or through others) into patient `pid`."""
    from fieldkit.store.patients import merged_ids as merged
    return merged(db, pid)


def document_for(store, payload: dict, created: float, issuer: str, kit_id: str) -> tuple[bytes, str]:
    """The document a non-instance sync row stands for -> (Part-10 bytes, SOP Instance UID).

    what = "review": a review of a finding; "merged": the last status of a kit ID that was
    merged into another; anything else ("triage", "merge", "identity"): the patient's
    current status. Raises PermanentError when what it refers to is gone from the kit."""
    from fieldkit.errors import PermanentError
    from fieldkit.store import findings, instances
    from fieldkit.store.patients import get_patient, resolve_row

    pid = str(payload.get("patient_id", ""))
    what = str(payload.get("what") or "triage")
    when = dt.datetime.fromtimestamp(created or 0.0, dt.timezone.utc)

    if what == "review":
        fid = str(payload.get("finding_id", ""))

        def fn(db):
            f = findings.get(store, fid)
            if f is None:
                return None
            uid = f.get("sr_sop_instance_uid") or f.get("sop_instance_uid")
            target = instances.get_instance(store, uid)
            prow = resolve_row(db, str(f.get("patient_id") or pid)) or {}
            return f, (target or {"sop_instance_uid": uid}), prow
        got = store.read(fn)
        if got is None:
            raise PermanentError(f"finding {fid} is no longer on the kit; its review cannot be sent")
        finding, target, prow = got
        if not target.get("sop_instance_uid"):
            raise PermanentError(f"finding {fid} names no object to review")
        return build_review(patient_id=prow.get("id") or pid, issuer=issuer, patient_doc=prow, kit_id=kit_id,
                            finding=finding, target=target, review=dict(payload.get("review") or {}))

    if what == "merged":  # under the old ID: where this patient went
        def fn(db):
            return get_patient(store, pid, follow_merges=False) or {}, resolve_row(db, pid) or {}
        old, new = store.read(fn)
        into = str(payload.get("into") or new.get("id") or old.get("merged_into") or "")
        doc = {**new, "tag": old.get("tag") or "", "merged_into": into}
        doc.pop("merged_ids", None)
        return build_update(pid, issuer, doc, kit_id, f"merged into {into}", when)

    if what == "moved":  # under the ID the hospital had the capture under: where it belongs
        uid = str(payload.get("capture") or "")

        def fn(db):
            row = instances.get_instance(store, uid)
            return row, resolve_row(db, pid) or {}, resolve_row(db, (row or {}).get("patient_id") or "") or {}
        row, old, now = store.read(fn)
        if row is None:
            raise PermanentError(f"capture {uid} is no longer on the kit; its correction cannot be sent")
        doc = dict(old, merged_ids=[])
        to = str(now.get("id") or row.get("patient_id") or "")
        return build_update(pid, issuer, doc, kit_id, f"capture moved to {to}", when, moved=(uid, to))

    def fn(db):
        prow = resolve_row(db, pid) or {}
        return prow, merged_ids(db, prow.get("id") or pid)
    prow, merged = store.read(fn)
    doc = dict(prow, merged_ids=merged)
    return build_update(prow.get("id") or pid, issuer, doc, kit_id, what, when)

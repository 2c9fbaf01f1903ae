"""UIDs the kit derives (reports, worklist studies, status, review and audit documents) stay
what they were, and so do the documents: a re-run or a re-send must name the same object
the hospital already holds, with the same content."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import struct

import pydicom
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from fieldkit.dicom.uids import derived_uid
from fieldkit.security.audit_dicom import audit_sr, read_audit_head, read_audit_sr, to_bytes
from fieldkit.sync.updates import build_review, build_update

# made by the derivations of the release before the one helper, for the same inputs
STATUS_STUDY = "2.25.274587300536443661230026972345155079986"
WORKLIST_STUDY_OWN_ROOT = "1.2.826.0.1.3680043.10.1234.127198766718347009576265228811128458"
AUDIT_SOP = "1.2.826.0.1.3680043.8.498.83631569679124927802024941215468733663"
AUDIT_STUDY = "1.2.826.0.1.3680043.8.498.85621625013837234504592152323283077032"
AUDIT_SERIES = "1.2.826.0.1.3680043.8.498.82601460922109205135639030254412649736"
UPDATE_SOP = "2.25.251844447251333654932993952450526983636"
REVIEW_SOP = "2.25.265869134134315841301427772872504721306"
# SHA-256 of each document's data set (after the file meta group), as the release before
# the one helper and the shared Basic Text SR builder wrote it for the inputs below
UPDATE_BODY = "c3165ea9bdd2f8261bbf024553cfe409b0c94ed0e43858ec10eab168ffeb5ef5"
REVIEW_BODY = "1c7da75122068059677dcce7cdadb48b16b3677eed29d56f176e4936adeded54"
AUDIT_BODY = "fec46b76b0c2109a5263cd1cb1d1e1923232949e6ca59fb5befc8f6c97246220"

WHEN = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
PATIENT = {"id": "T-0042", "name": "Curie^Marie", "birth_date": "19671107", "sex": "F", "triage": "red",
           "tag": "T7", "merged_ids": ["T-0007"], "merged_into": ""}
EXPORT = {"format": "fieldkit-audit/1", "events": [{"seq": 1, "hash": "ab" * 32, "alg": "sha256"},
                                                   {"seq": 2, "hash": "cd" * 32, "alg": "sha256"}]}


def _body_sha256(part10: bytes) -> str:
    """The digest of the data set alone: the file meta group names the pydicom release."""
    assert part10[128:136] == b"DICM\x02\x00\x00\x00"  # (0002,0000) first, explicit VR LE
    (meta_len,) = struct.unpack("<I", part10[140:144])
    return hashlib.sha256(part10[144 + meta_len:]).hexdigest()


def test_derived_uids_are_the_ones_already_stored():
    assert derived_uid("2.25", "fieldkit-status-study", "KIT-1", "ISSUER", "P-0001") == STATUS_STUDY
    assert derived_uid("", "fieldkit-status-study", "KIT-1", "ISSUER", "P-0001") == STATUS_STUDY
    assert derived_uid("1.2.826.0.1.3680043.10.1234", "worklist-study", "ISSUER", "P-0001") == WORKLIST_STUDY_OWN_ROOT
    assert derived_uid("2.25", "a", "b") != derived_uid("2.25", "ab")  # parts are kept apart


def test_a_status_document_lands_in_the_study_it_always_had():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    doc = {"id": "P-0001", "name": "", "triage": "red"}
    first, uid = build_update("P-0001", "ISSUER", doc, "KIT-1", "triage", when=when)
    again, same_uid = build_update("P-0001", "ISSUER", doc, "KIT-1", "triage", when=when)
    ds = pydicom.dcmread(io.BytesIO(first))
    assert ds.StudyInstanceUID == STATUS_STUDY
    assert (same_uid, again) == (uid, first)  # a re-send is the same document


def test_the_audit_uids_stay_those_pydicom_derived_for_the_first_exports():
    ds = audit_sr(EXPORT, kit_id="TEST1", issuer="KIT-ISSUER")
    assert (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (AUDIT_SOP, AUDIT_STUDY, AUDIT_SERIES)
    assert derived_uid(PYDICOM_ROOT_UID, "fieldkit-audit", "TEST1", "study") == AUDIT_STUDY
    # which is pydicom's own derivation, parts joined as it joins them
    assert generate_uid(entropy_srcs=["fieldkit-audit", "TEST1", "study"]) == AUDIT_STUDY


def test_status_review_and_audit_documents_are_byte_for_byte_what_they_were():
    update, uid = build_update("T-0042", "KIT-ISSUER", PATIENT, "TEST1", "triage red", when=WHEN,
                               moved=("1.2.3.9", "T-0050"))
    assert (uid, _body_sha256(update)) == (UPDATE_SOP, UPDATE_BODY)
    target = {"sop_instance_uid": "1.2.3.4", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
              "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.5"}
    review, uid = build_review(patient_id="T-0042", issuer="KIT-ISSUER", patient_doc=PATIENT, kit_id="TEST1",
                               finding={"id": "f1", "task": "lung", "model": "lung-blines", "model_version": "1"},
                               target=target,
                               review={"decision": "agree", "note": "ok", "by": "dr-a", "at": WHEN.timestamp()})
    assert (uid, _body_sha256(review)) == (REVIEW_SOP, REVIEW_BODY)
    audit = audit_sr(EXPORT, kit_id="TEST1", issuer="KIT-ISSUER")
    audit.StudyDate = audit.ContentDate = "20260301"  # the audit document is dated when made
    audit.StudyTime = audit.ContentTime = "123000"
    assert _body_sha256(to_bytes(audit)) == AUDIT_BODY
    back = pydicom.dcmread(io.BytesIO(to_bytes(audit)))
    assert read_audit_sr(back) == EXPORT and read_audit_head(back) == (2, "cd" * 32)

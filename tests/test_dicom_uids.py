"""UIDs the kit derives (reports, worklist studies, status documents) stay what they were:
a re-run or a re-send must name the same object the hospital already holds."""

from __future__ import annotations

import datetime as dt
import io

import pydicom

from fieldkit.dicom.uids import derived_uid
from fieldkit.sync.updates import build_update

# made by the derivations of the release before the one helper, for the same inputs
STATUS_STUDY = "2.25.274587300536443661230026972345155079986"
WORKLIST_STUDY_OWN_ROOT = "1.2.826.0.1.3680043.10.1234.127198766718347009576265228811128458"


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

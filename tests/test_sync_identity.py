"""What the hospital learns besides images, checked in a real Orthanc with QIDO-RS and
WADO-RS metadata: a clinician's review of a finding (saved through the tablet UI's JSON
API) and a patient merge (an unidentified patient folded into an identified one)."""

from __future__ import annotations

import pydicom
import requests
from tinydb import Query

from fieldkit.records import KIND_SYNC, T_FINDINGS, T_INSTANCES, sync_priority
from fieldkit.store import patients as pstore
from fieldkit.sync.updates import document_for
from fieldkit.sync.worker import SyncWorker
from fixtures.sync import ISSUER, add_to_store, corpus, finding_sr, sync_config
from test_ui_api import Tablet, ui  # noqa: F401  (the fixture)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _qido(orthanc, path: str, **params) -> list[dict]:
    r = requests.get(f"{orthanc.base_url}/{path}", params=params, auth=orthanc.auth, timeout=30,
                     headers={"Accept": "application/dicom+json"})
    r.raise_for_status()
    return r.json() if r.content else []


def _uid_of(item: dict) -> str:
    return item["00080018"]["Value"][0]


def _metadata(orthanc, item: dict) -> pydicom.Dataset:
    study, series, uid = (item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
    r = requests.get(f"{orthanc.base_url}/studies/{study}/series/{series}/instances/{uid}/metadata",
                     auth=orthanc.auth, timeout=30, headers={"Accept": "application/dicom+json"})
    r.raise_for_status()
    return pydicom.Dataset.from_json(r.json()[0])


def _content(ds: pydicom.Dataset) -> dict[str, list]:
    out: dict[str, list] = {}
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            out.setdefault(name, []).append(item.TextValue)
        elif item.ValueType == "DATETIME":
            out.setdefault(name, []).append(item.DateTime)
        elif item.ValueType == "COMPOSITE":
            ref = item.ReferencedSOPSequence[0]
            out.setdefault(name, []).append((ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID))
    return out


def _add_finding(kit, patient: str, triage: str = "red"):
    items = corpus(patient)[:1]
    study = str(items[0][1].StudyInstanceUID)
    sr_data, sr = finding_sr(patient, study)
    add_to_store(kit.store, items + [(sr_data, sr)], triage=triage)
    img, sr_uid = str(items[0][1].SOPInstanceUID), str(sr.SOPInstanceUID)
    kit.store.write(lambda db: db.table(T_INSTANCES).update(
        {"series_instance_uid": str(sr.SeriesInstanceUID)}, Query().sop_instance_uid == sr_uid))
    fid = "f-" + sr_uid[-12:]
    kit.store.write(lambda db: db.table(T_FINDINGS).insert({
        "id": fid, "sop_instance_uid": img, "sr_sop_instance_uid": sr_uid, "study_instance_uid": study,
        "patient_id": patient, "task": "fast", "model": "fast-test", "model_version": "1.0",
        "assessable": True, "reason": "", "confidence": 0.9, "result": {"free_fluid": True}}))
    return fid, sr_uid, study


def test_a_review_reaches_the_hospital_as_an_sr_referencing_the_finding(ui, orthanc):  # noqa: F811
    kit, app = ui
    fid, sr_uid, study = _add_finding(kit, "T-0601")
    t = Tablet(app, "clin", "clin password 123")
    r = t.post(f"/api/v1/ui/findings/{fid}/review", {"decision": "accepted", "note": "fluid in <b>RUQ</b>"})
    assert r.status_code == 200, r.data
    rows = [q for q in kit.store.queue.rows(KIND_SYNC) if q.payload.get("what") == "review"]
    assert len(rows) == 1 and rows[0].priority == sync_priority("red", "finding")
    # re-building the same queued review gives the same object: a re-send is harmless
    a = document_for(kit.store, rows[0].payload, rows[0].created, ISSUER, "KIT-T")
    b = document_for(kit.store, rows[0].payload, rows[0].created, ISSUER, "KIT-T")
    assert a == b

    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir)
    st = worker.run_once(timeout=60)
    assert st["counts"]["quarantined"] == 0 and st["counts"]["queued"] == 0

    found = _qido(orthanc, f"studies/{study}/instances", SOPClassUID=BASIC_TEXT_SR)
    reviews = [i for i in found if _uid_of(i) != sr_uid]
    assert len(reviews) == 1
    ds = _metadata(orthanc, reviews[0])
    assert ds.PatientID == "T-0601" and ds.IssuerOfPatientID == kit.config.issuer_of_patient_id
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Clinician review of finding"
    c = _content(ds)
    assert c["Reviewed finding"] == [(BASIC_TEXT_SR, sr_uid)]
    assert c["Verdict"] == ["accepted"] and c["Note"] == ["fluid in <b>RUQ</b>"] and c["Reviewer"] == ["clin"]
    assert len(c["Reviewed at"][0]) == 14
    ev = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ev.ReferencedSOPInstanceUID == sr_uid

    # a second opinion is a second document; the first one stays as history
    r = t.post(f"/api/v1/ui/findings/{fid}/review", {"decision": "rejected", "note": "artefact"})
    assert r.status_code == 200
    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir)
    worker.run_once(timeout=60)
    found = _qido(orthanc, f"studies/{study}/instances", SOPClassUID=BASIC_TEXT_SR)
    verdicts = sorted(_content(_metadata(orthanc, i))["Verdict"][0] for i in found if _uid_of(i) != sr_uid)
    assert verdicts == ["accepted", "rejected"]


def test_a_review_of_a_finding_that_vanished_is_quarantined_with_the_reason(kit, orthanc):
    from fieldkit.sync.updates import enqueue_review
    enqueue_review(kit.store, {"id": "gone", "patient_id": "T-0603"},
                   {"decision": "accepted", "note": "", "by": "clin", "at": 1.0})
    st = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir).run_once(timeout=30)
    assert st["counts"]["quarantined"] == 1
    assert any("finding gone is no longer on the kit" in (i.get("reason") or "") for i in st["items"])
    assert orthanc.instance_count() == 0


def test_a_merge_reaches_the_hospital_as_identity_documents(kit, orthanc):
    unknown = "U-0A0B0C"
    first = corpus(unknown)
    add_to_store(kit.store, first[:2], triage="none")
    known = pstore.create_patient(kit.store, tag="T-0604", name="Doe, Jane", sex="F")
    cfg = sync_config(kit.config, orthanc.base_url)
    SyncWorker(kit.store, cfg, kit.data_dir).run_once(timeout=60)
    assert orthanc.instance_count() == 2
    later = first[2:3]  # captured before the merge, not yet sent
    add_to_store(kit.store, later, triage="none")

    pstore.merge_patients(kit.store, unknown, known["id"])
    live = [q.payload for q in kit.store.queue.rows(KIND_SYNC) if q.state == "ready"]
    assert {p.get("what") for p in live if "what" in p} == {"merge", "merged"}
    # what the hospital already confirmed is not re-sent; the unsent capture is
    assert [p["sop_instance_uid"] for p in live if "sop_instance_uid" in p] == [str(later[0][1].SOPInstanceUID)]

    st = SyncWorker(kit.store, cfg, kit.data_dir).run_once(timeout=60)
    assert st["counts"]["quarantined"] == 0 and st["counts"]["queued"] == 0

    # under the surviving ID: its status document names the merged kit ID, and the
    # capture that was still queued arrives re-stamped
    mine = _qido(orthanc, "instances", PatientID="T-0604")
    uids = {_uid_of(i) for i in mine}
    assert str(later[0][1].SOPInstanceUID) in uids
    docs = [_metadata(orthanc, i) for i in mine if i["00080016"]["Value"][0] == BASIC_TEXT_SR]
    assert len(docs) == 1
    doc = docs[0]
    assert str(doc.PatientName) == "Doe^Jane" and doc.PatientSex == "F"
    assert [(o.PatientID, o.IssuerOfPatientID) for o in doc.OtherPatientIDsSequence] == \
        [(unknown, kit.config.issuer_of_patient_id)]
    assert _content(doc)["Merged kit ID"] == [unknown]

    # under the old ID: the images the hospital already had stay there (it keeps the
    # first copy), next to a last status document that says where the patient went
    old = _qido(orthanc, "instances", PatientID=unknown)
    assert {_uid_of(i) for i in old if i["00080016"]["Value"][0] != BASIC_TEXT_SR} == \
        {str(ds.SOPInstanceUID) for _, ds in first[:2]}
    old_docs = [_metadata(orthanc, i) for i in old if i["00080016"]["Value"][0] == BASIC_TEXT_SR]
    assert len(old_docs) == 1
    assert _content(old_docs[0])["Merged into"] == ["T-0604"]
    assert [o.PatientID for o in old_docs[0].OtherPatientIDsSequence] == ["T-0604"]
    assert str(old_docs[0].PatientName) == "Doe^Jane"
    # nothing twice: 3 images and 2 status documents
    assert orthanc.instance_count() == 5

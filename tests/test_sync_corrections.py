"""A capture the hospital already confirmed under one PatientID, then moved to another
patient (assigned, or a merge undone after it went out): the hospital (a real Orthanc)
gets it again under the right PatientID, and under the old one a status document naming
the capture and where it belongs. Moving it back before anything went out sends nothing."""

from __future__ import annotations

from fieldkit.records import KIND_SYNC
from fieldkit.store import instances, patients
from fieldkit.sync.worker import SyncWorker
from fixtures.sync import sync_config
from test_ingest_identity import capture
from test_sync_identity import BASIC_TEXT_SR, _content, _metadata, _qido, _uid_of


def _sync(kit, orthanc) -> dict:
    st = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir).run_once(timeout=60)
    assert st["counts"]["quarantined"] == 0, st
    return st


def _held_under(orthanc, patient_id: str) -> tuple[set[str], list]:
    """(image SOP UIDs, status documents) Orthanc holds under `patient_id`."""
    found = _qido(orthanc, "instances", PatientID=patient_id)
    images = {_uid_of(i) for i in found if i["00080016"]["Value"][0] != BASIC_TEXT_SR}
    docs = [_metadata(orthanc, i) for i in found if i["00080016"]["Value"][0] == BASIC_TEXT_SR]
    return images, docs


def test_a_confirmed_capture_assigned_elsewhere_reaches_the_hospital_under_the_right_id(kit, orthanc):
    store = kit.store
    wrong = patients.create_patient(store, tag="T-0701", triage="yellow")
    right = patients.create_patient(store, tag="T-0702", triage="red")
    uid = instances.put_instance(store, capture("T-0701"), "dimse")["sop_instance_uid"]  # typed the wrong tag
    _sync(kit, orthanc)
    row = instances.get_instance(store, uid)
    assert (row["sync_state"], row["confirmed_patient_id"]) == ("confirmed", wrong["id"])
    sent = orthanc.instance_count()

    # moved and moved back before the worker ran: nothing goes out
    patients.assign_capture(store, uid, right["id"], by="tri")
    assert instances.get_instance(store, uid)["sync_state"] == "queued"
    patients.assign_capture(store, uid, wrong["id"], by="tri")
    assert instances.get_instance(store, uid)["sync_state"] == "confirmed"
    assert not [q for q in store.queue.rows(kind=KIND_SYNC, state="ready")]
    _sync(kit, orthanc)
    assert orthanc.instance_count() == sent

    # moved for good: sent again under the right ID, and the old ID is told
    patients.assign_capture(store, uid, right["id"], by="tri")
    ready = [q.payload for q in store.queue.rows(kind=KIND_SYNC, state="ready")]
    assert {"patient_id": wrong["id"], "what": "moved", "capture": uid} in ready
    assert {"sop_instance_uid": uid} in ready
    _sync(kit, orthanc)
    row = instances.get_instance(store, uid)
    assert (row["sync_state"], row["confirmed_patient_id"], row.get("correction")) == ("confirmed", right["id"], None)

    images, docs = _held_under(orthanc, right["id"])
    assert images == {uid}
    # (the same UIDs are now under two patients, so read the copy through Orthanc's own API)
    (copy,) = orthanc.rest("/tools/find", "POST", json={"Level": "Instance", "Expand": True,
                                                        "Query": {"PatientID": right["id"], "SOPInstanceUID": uid}})
    tags = orthanc.rest(f"/instances/{copy['ID']}/simplified-tags")
    assert (tags["PatientID"], tags["IssuerOfPatientID"]) == (right["id"], kit.config.issuer_of_patient_id)
    assert wrong["id"] not in [o.get("PatientID") for o in tags.get("OtherPatientIDsSequence", [])]  # not an alias
    # the old copy stays (the kit never deletes from the hospital), next to the document that disowns it
    images, docs = _held_under(orthanc, wrong["id"])
    assert images == {uid}
    (doc,) = docs
    assert _content(doc)["Capture filed in error"] == [uid] and _content(doc)["Belongs to"] == [right["id"]]
    assert orthanc.instance_count() == sent + 2  # the copy and one document, nothing twice


def test_a_merge_undone_after_a_capture_went_out_corrects_it(kit, orthanc):
    store = kit.store
    first = patients.create_patient(store, tag="T-0711", triage="red")
    other = patients.create_patient(store, tag="T-0712", triage="green")
    uid = instances.put_instance(store, capture("T-0711"), "dimse")["sop_instance_uid"]  # not sent yet
    patients.merge_patients(store, first["id"], other["id"], by="clin", undo_seconds=60)
    _sync(kit, orthanc)  # the capture's own send goes during the undo time, under the survivor
    assert instances.get_instance(store, uid)["confirmed_patient_id"] == other["id"]
    assert _held_under(orthanc, other["id"])[0] == {uid}

    patients.unmerge(store, first["id"], by="clin")
    _sync(kit, orthanc)
    assert _held_under(orthanc, first["id"])[0] == {uid}
    images, docs = _held_under(orthanc, other["id"])
    assert images == {uid}  # the copy sent during the undo time stays, disowned:
    assert [_content(d)["Belongs to"] for d in docs] == [[first["id"]]]
    assert instances.get_instance(store, uid)["confirmed_patient_id"] == first["id"]


def test_a_capture_moved_while_on_its_way_is_corrected_when_its_send_is_confirmed(kit):
    """The worker took the capture (under the old patient), a tablet moved it, then the
    hospital confirmed the old copy: the correction is queued right then, not absorbed by
    the row that just finished."""
    from fieldkit.sync.client import Part
    from fieldkit.sync.planner import classify
    from fieldkit.sync.worker import Prepared

    store = kit.store
    wrong = patients.create_patient(store, tag="T-0721", triage="green")
    right = patients.create_patient(store, tag="T-0722", triage="red")
    uid = instances.put_instance(store, capture("T-0721"), "dimse")["sop_instance_uid"]
    row = store.queue.lease(KIND_SYNC)
    assert row.payload == {"sop_instance_uid": uid}
    taken = classify(store, row)  # what the worker sends: the catalogue row as it was
    patients.assign_capture(store, uid, right["id"], by="tri")
    worker = SyncWorker(store, sync_config(kit.config, "http://127.0.0.1:9/dicom-web"), kit.data_dir)
    worker._confirm(Prepared(taken, Part(uid, 0, lambda: []), uid), "http://127.0.0.1:9/dicom-web/x")
    assert store.queue.get(row.id).state == "done"
    doc = instances.get_instance(store, uid)
    assert (doc["sync_state"], doc["correction"]["from"], doc["patient_id"]) == ("queued", wrong["id"], right["id"])
    ready = [q.payload for q in store.queue.rows(kind=KIND_SYNC, state="ready")]
    assert {"sop_instance_uid": uid} in ready
    assert {"patient_id": wrong["id"], "what": "moved", "capture": uid} in ready

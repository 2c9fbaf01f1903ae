"""Identity linking, de-duplication, conflicts and patient merges in the catalogue."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid

from fieldkit.dicom.parse import InvalidDicom
from fieldkit.records import KIND_INFER, KIND_SYNC, sync_priority
from fieldkit.store import instances, patients
from fixtures.dcmtk import pydicom_file


def capture(patient_id="", study=None, issuer=None, name="rgb") -> bytes:
    file = {"rgb": "examples_rgb_color.dcm", "cine": "examples_ybr_color.dcm"}[name]
    ds = pydicom.dcmread(pydicom_file(file))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_triage_tag_number_and_kit_id_link_to_the_patient(store):
    tagged = patients.create_patient(store, tag="T-0042", triage="red")
    assert tagged["id"] == "T-0042"
    r = instances.put_instance(store, capture("T-0042"), "dimse")
    assert r["status"] == "stored" and r["patient_id"] == "T-0042"
    other = patients.create_patient(store, name="Doe^Jane")
    r2 = instances.put_instance(store, capture(other["id"], issuer=store.config.issuer_of_patient_id), "stow")
    assert r2["patient_id"] == other["id"]
    # the red patient's image goes to the hospital first
    rows = {q.payload["sop_instance_uid"]: q for q in store.queue.rows(kind=KIND_SYNC)}
    assert rows[r["sop_instance_uid"]].priority == sync_priority("red", "image")
    assert rows[r["sop_instance_uid"]].priority < rows[r2["sop_instance_uid"]].priority


def test_unknown_ids_make_one_new_patient_per_probe_id_and_study(store):
    study = generate_uid()
    a = instances.put_instance(store, capture("SONO-77", study), "dimse")
    b = instances.put_instance(store, capture("SONO-77", study, name="cine"), "dimse")
    c = instances.put_instance(store, capture("SONO-77"), "dimse")  # same probe id, new study
    assert a["patient_id"].startswith("U-") and a["patient_id"] == b["patient_id"] == c["patient_id"]
    d = instances.put_instance(store, capture("ANONYMOUS"), "dimse")
    e = instances.put_instance(store, capture("ANONYMOUS"), "dimse")
    assert d["patient_id"] != e["patient_id"] != a["patient_id"]  # placeholders never link
    assert len(patients.list_patients(store)) == 3
    assert len(store.queue.rows(kind=KIND_INFER)) == 5


def test_duplicate_is_stored_once_and_conflict_is_kept_aside(store):
    data = capture("P1")
    first = instances.put_instance(store, data, "dimse")
    assert instances.put_instance(store, data, "import")["status"] == "duplicate"
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = bytes(len(ds.PixelData))
    buf = io.BytesIO()
    ds.save_as(buf)
    conflict = instances.put_instance(store, buf.getvalue(), "stow")
    assert conflict["status"] == "conflict"
    row = instances.get_instance(store, first["sop_instance_uid"])
    assert row["conflict"] and row["blob"] == first["instance"]["blob"]
    kept = pydicom.dcmread(io.BytesIO(store.blobs.get_bytes(row["conflicts"][0]["blob"])))
    assert kept.PixelData == ds.PixelData  # the other copy is kept, not dropped
    assert instances.put_instance(store, buf.getvalue(), "stow")["status"] == "duplicate"
    assert len(store.queue.rows(kind=KIND_INFER)) == 1


def test_merge_moves_captures_and_requeues_them(store):
    unknown = instances.put_instance(store, capture("SONO-1"), "dimse")
    known = patients.create_patient(store, tag="T-7", name="Roe^Richard")
    for q in store.queue.rows(kind=KIND_SYNC):
        store.queue.ack(store.queue.lease(KIND_SYNC).id)
    merged = patients.merge_patients(store, unknown["patient_id"], "T-7")
    assert merged["id"] == "T-7"
    assert instances.get_instance(store, unknown["sop_instance_uid"])["patient_id"] == "T-7"
    assert patients.get_patient(store, unknown["patient_id"])["id"] == "T-7"  # follows the merge
    ready = store.queue.rows(kind=KIND_SYNC, state="ready")
    assert [q.payload["sop_instance_uid"] for q in ready if "sop_instance_uid" in q.payload] == \
        [unknown["sop_instance_uid"]]
    # and the identity change itself, under both kit IDs (fieldkit.sync.updates)
    assert sorted(q.payload.get("what", "") for q in ready if "what" in q.payload) == ["merge", "merged"]
    # later captures from the same probe id land on the identified patient
    assert instances.put_instance(store, capture("SONO-1"), "dimse")["patient_id"] == "T-7"
    with pytest.raises(Exception, match="already the same"):
        patients.merge_patients(store, "T-7", unknown["patient_id"])


def test_concurrent_captures_of_one_study_make_one_patient(store):
    study = generate_uid()
    blobs = [capture("SONO-9", study) for _ in range(8)]
    results, errors = [], []

    def send(data):
        try:
            results.append(instances.put_instance(store, data, "dimse"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 8
    assert len({r["patient_id"] for r in results}) == 1
    assert len(patients.list_patients(store)) == 1


def test_refusals_leave_nothing_behind(store):
    with pytest.raises(InvalidDicom):
        instances.put_instance(store, b"not dicom", "upload")
    assert instances.instance_rows(store) == [] and patients.list_patients(store) == []
    assert store.queue.counts()[KIND_INFER]["ready"] == 0


def test_odd_patient_values_never_reach_a_log_or_warning(store, caplog, recwarn):
    import logging

    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = "Secretname^" + "Q" * 80
    ds.PatientBirthDate = "19801332x"
    ds.PatientID = "PID-" + "7" * 70  # longer than LO allows
    buf = io.BytesIO()
    ds.save_as(buf)
    with caplog.at_level(logging.DEBUG):
        result = instances.put_instance(store, buf.getvalue(), "upload")
    assert result["status"] == "stored"
    said = caplog.text + " ".join(str(w.message) for w in recwarn.list)
    assert "Secretname" not in said and "19801332x" not in said and "7777777" not in said
    kept = instances.read_dataset(store, result["sop_instance_uid"])
    assert kept.PatientBirthDate == "19801332x"  # kept as sent


def test_one_batch_makes_one_patient_per_probe_id_and_per_study(store):
    """The parts of one STOW request are linked before any of them is committed: those
    that need the same new patient must still get one."""
    study_a, study_b = generate_uid(), generate_uid()
    batch = instances.Batch(store, "stow")
    for data in (capture("SONO-5", study_a), capture("SONO-5"),           # same probe id
                 capture("ANONYMOUS", study_b), capture("", study_b),      # same study, no usable id
                 capture("ANONYMOUS")):                                    # a patient of its own
        batch.add(data)
    assert instances.instance_rows(store) == []  # nothing visible before the commit
    results = batch.commit()
    assert [r["status"] for r in results] == ["stored"] * 5
    pids = [r["patient_id"] for r in results]
    assert pids[0] == pids[1] and pids[2] == pids[3] and len(set(pids)) == 3
    assert len(patients.list_patients(store)) == 3
    assert len(store.queue.rows(kind=KIND_INFER)) == 5 and len(store.queue.rows(kind=KIND_SYNC)) == 5


def test_batch_after_a_concurrent_writer_took_the_study_relinks(store):
    """Another path stores the same study between a batch's linking and its commit: the
    batch's object is re-linked and re-stamped, not filed under a second new patient."""
    study = generate_uid()
    batch = instances.Batch(store, "stow")
    batch.add(capture("ANONYMOUS", study))
    other = instances.put_instance(store, capture("ANONYMOUS", study), "dimse")
    [result] = batch.commit()
    assert result["status"] == "stored" and result["patient_id"] == other["patient_id"]
    assert len(patients.list_patients(store)) == 1
    stored = instances.read_dataset(store, result["sop_instance_uid"])
    assert stored.PatientID == other["patient_id"]


def test_stored_copy_is_the_received_dataset_but_for_the_stamped_identity(store):
    sent = capture("SONO-1")
    result = instances.put_instance(store, sent, "stow")
    row = instances.get_instance(store, result["sop_instance_uid"])
    kept = store.blobs.get_bytes(row["blob"])
    a, b = pydicom.dcmread(io.BytesIO(sent)), pydicom.dcmread(io.BytesIO(kept))
    assert b.PatientID == result["patient_id"] and b.IssuerOfPatientID == store.config.issuer_of_patient_id
    assert [o.PatientID for o in b.OtherPatientIDsSequence] == ["SONO-1"]
    stamped = {0x00100020, 0x00100021, 0x00101002}
    for elem in a:
        if elem.tag not in stamped:
            assert b[elem.tag].value == elem.value, elem.keyword
    # the pixel data and everything around it are the bytes that were sent
    assert kept.endswith(sent[sent.index(b"\xe0\x7f\x10\x00"):])
    assert b.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID


@pytest.mark.parametrize("damage", ["lost", "truncated"])
def test_a_preview_lost_in_a_power_cut_is_made_again(store, damage):
    """Previews are written without fsync (they can be made again): one that a power cut
    lost or cut short must not break the tablet's list; it is remade from the capture."""
    from PIL import Image

    result = instances.put_instance(store, capture("SONO-9"), "stow")
    row = instances.get_instance(store, result["sop_instance_uid"])
    first = instances.thumbnail_bytes(store, row)
    path = store.blobs.path(row["thumbnail"])
    if damage == "lost":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:40])
    again = instances.thumbnail_bytes(store, instances.get_instance(store, row["sop_instance_uid"]))
    assert Image.open(io.BytesIO(again)).size == Image.open(io.BytesIO(first)).size
    assert store.blobs.get_bytes(instances.get_instance(store, row["sop_instance_uid"])["thumbnail"]) == again

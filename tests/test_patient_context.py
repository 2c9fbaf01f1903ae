"""Patient context below the tablet (a real store): why a capture is on its patient, the
tray's items on the board card, and a probe's name kept apart until a person confirms it."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fieldkit.dicom import worklist
from fieldkit.errors import BadInput, NotFound
from fieldkit.store import instances, patients
from fieldkit.store.board import rows_for


def probe_capture(patient_id: str, name: str, **tags) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = patient_id, name
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_capture_stamped_from_the_worklist_says_so(store):
    patients.create_patient(store, tag="T-5", triage="red")
    patients.create_patient(store, tag="T-6", triage="green")
    accession, _ = worklist.encounter(store.config.issuer_of_patient_id, "T-5", store.config["kit.uid_root"])
    by_worklist = instances.put_instance(store, probe_capture("T-5", "TAG^T-5", AccessionNumber=accession), "dimse",
                                         calling_ae="LUMIFY1")
    by_id = instances.put_instance(store, probe_capture("T-5", "TAG^T-5"), "dimse")
    # another patient's accession with this patient's ID: the ID decides, and it is not "worklist"
    mixed = instances.put_instance(store, probe_capture("T-6", "", AccessionNumber=accession), "dimse")
    row = {k: instances.get_instance(store, r["sop_instance_uid"]) for k, r in
           (("worklist", by_worklist), ("id", by_id), ("mixed", mixed))}
    assert (row["worklist"]["patient_id"], row["worklist"]["linked_by"], row["worklist"]["calling_ae"]) == \
        ("T-5", "worklist", "LUMIFY1")
    assert (row["id"]["patient_id"], row["id"]["linked_by"]) == ("T-5", "patient id")
    assert (row["mixed"]["patient_id"], row["mixed"]["linked_by"]) == ("T-6", "patient id")


def test_unassigned_captures_are_tray_items_not_a_counted_patient(store):
    patients.create_patient(store, tag="T-1", triage="red")
    lost = instances.put_instance(store, probe_capture("ANONYMOUS", "OB^^^^"), "dimse", calling_ae="CLARIUS9")
    board = rows_for(store).board()
    holder = next(c for c in board["patients"] if c["id"] == lost["patient_id"])
    assert holder["unassigned"] and holder["display_name"] == "OB"
    assert [(t["uid"], t["probe"]) for t in holder["tray"]] == [(lost["sop_instance_uid"], "CLARIUS9")]
    assert board["unassigned"] == 1 and board["counts"]["none"] == 0 and board["counts"]["red"] == 1
    patients.assign_capture(store, lost["sop_instance_uid"], "T-1", expected_from=holder["id"])
    board = rows_for(store).board()
    assert board["unassigned"] == 0 and next(c for c in board["patients"] if c["id"] == "T-1")["captures"] == 1


def test_a_probe_name_is_the_probes_until_a_person_confirms_it(store):
    made = instances.put_instance(store, probe_capture("PROBE-1", "CompressedSamples^US1"), "dimse")
    row = patients.get_patient(store, made["patient_id"])
    assert patients.name_from_probe(row)
    card = rows_for(store).row(row["id"])
    assert (card["display_name"], card["name_from_probe"]) == ("CompressedSamples, US1", True)
    # merged into a tag-only patient, the name that fills the survivor is still the probe's
    patients.create_patient(store, tag="T-1", triage="red")
    survivor = patients.merge_patients(store, row["id"], "T-1")
    assert survivor["name"] == "CompressedSamples^US1" and patients.name_from_probe(survivor)
    assert rows_for(store).row("T-1")["name_from_probe"] is True
    confirmed = patients.confirm_name(store, "T-1", by="clin")
    assert not patients.name_from_probe(confirmed) and confirmed["name_confirmed"]["by"] == "clin"
    assert rows_for(store).row("T-1")["name_from_probe"] is False
    # a name a person typed is theirs
    other = instances.put_instance(store, probe_capture("PROBE-2", "OB^^^^"), "dimse")
    assert patients.name_from_probe(patients.get_patient(store, other["patient_id"]))
    typed = patients.update_details(store, other["patient_id"], name="Jane Roe", actor="clin")
    assert not patients.name_from_probe(typed)
    with pytest.raises(BadInput, match="no name"):
        patients.confirm_name(store, patients.create_patient(store, tag="T-2")["id"])
    with pytest.raises(NotFound):
        patients.confirm_name(store, "nobody")


def test_confirm_name_through_the_tablet_api(kit, role_clients):
    made = instances.put_instance(kit.store, probe_capture("PROBE-3", "PLA"), "dimse")
    pid = made["patient_id"]
    assert role_clients["triage"].open("POST", f"/api/v1/ui/patients/{pid}/confirm-name").status_code == 403
    r = role_clients["clinician"].open("POST", f"/api/v1/ui/patients/{pid}/confirm-name")
    assert r.status_code == 200 and r.json["name_from_probe"] is False and r.json["display_name"] == "PLA"
    page = role_clients["clinician"].open("GET", f"/api/v1/ui/patients/{pid}").json
    assert page["name_from_probe"] is False and page["captures"][0]["linked_by"] == "new patient"
    assert role_clients["clinician"].open("POST", "/api/v1/ui/patients/nobody/confirm-name").status_code == 404

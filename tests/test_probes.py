"""Registered probes and probe sessions, with dcmtk's storescu as the probes over real sockets:
a registered probe may send at once, a refused one is shown and audited, and during a probe
session captures without a usable identity land on the patient being scanned."""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fieldkit.ingest import dimse
from fieldkit.store import accounts, instances, patients
from fixtures.dcmtk import storescu, store_responses
from kitproc import KitProcess, run_cli, set_config


def _capture(tmp_path, n: int, patient_id: str = "ANONYMOUS"):
    """A capture as a probe that knows nothing of the patient writes it."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = patient_id, "PLA"
    path = tmp_path / f"cap{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def _send(port, path, aet):
    return store_responses(storescu(port, [path], "-xe", aet=aet))


@pytest.fixture
def closed_kit(kit):
    """A kit whose receiver lets in nobody but registered probes."""
    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=False,
                                           dicom__allowed_ae_titles=[], worklist__session_minutes=20)
    kit.services["dicom"] = receiver = dimse.start(kit)
    yield kit
    receiver.stop()
    kit.services.pop("dicom", None)


def test_a_registered_probe_may_send_at_once_and_a_refused_one_is_shown(closed_kit, tmp_path):
    kit = closed_kit
    port = kit.services["dicom"].port
    path, sop = _capture(tmp_path, 1)
    assert _send(port, path, "LUMIFY1") == []  # refused: not registered
    assert _send(port, path, "LUMIFY1") == []
    refused = kit.services["dicom"].refused.list()
    assert [(r["ae"], r["count"]) for r in refused] == [("LUMIFY1", 2)]
    audited = [e for e in accounts.audit_events(kit.store) if e["action"] == "dicom.association.refused"]
    assert len(audited) == 1 and audited[0]["actor"] == "dicom:LUMIFY1"  # the first is audited, repeats counted
    dimse.register_probe(kit, "LUMIFY1", name="Lumify, tent B", actor="admin")
    assert _send(port, path, "LUMIFY1") == ["Success"]
    assert instances.get_instance(kit.store, sop) is not None
    dimse.unregister_probe(kit, "LUMIFY1", actor="admin")
    assert _send(port, _capture(tmp_path, 2)[0], "LUMIFY1") == []


def test_probe_sessions_file_interleaved_captures_on_the_right_patients(closed_kit, role_clients, tmp_path):
    kit = closed_kit
    port = kit.services["dicom"].port
    triage = role_clients["triage"]
    for ae in ("PROBE_A", "PROBE_B"):
        dimse.register_probe(kit, ae, actor="admin")
    red = patients.create_patient(kit.store, tag="T-1005", triage="red")
    yellow = patients.create_patient(kit.store, tag="T-1006", triage="yellow")
    r = triage.open("POST", f"/api/v1/ui/patients/{red['id']}/probe-session", json={"probe": "PROBE_A"})
    assert r.status_code == 201, r.text
    assert triage.open("POST", f"/api/v1/ui/patients/{yellow['id']}/probe-session",
                       json={"probe": "PROBE_B"}).status_code == 201
    expected = {}
    for n, ae in enumerate(("PROBE_A", "PROBE_B", "PROBE_A", "PROBE_B", "PROBE_B")):
        path, sop = _capture(tmp_path, n)
        assert _send(port, path, ae) == ["Success"]
        expected[sop] = red["id"] if ae == "PROBE_A" else yellow["id"]
    for sop, pid in expected.items():
        row = instances.get_instance(kit.store, sop)
        assert (row["patient_id"], row["linked_by"]) == (pid, "probe session")
        assert instances.read_dataset(kit.store, sop, stop_before_pixels=True).PatientID == pid
    # a capture that names a kit patient still goes to that patient, session or not
    path, sop = _capture(tmp_path, 10, patient_id=yellow["id"])
    assert _send(port, path, "PROBE_A") == ["Success"]
    assert instances.get_instance(kit.store, sop)["patient_id"] == yellow["id"]
    # the session ends: the next capture from that probe is no longer filed to the red patient
    r = triage.open("DELETE", f"/api/v1/ui/patients/{red['id']}/probe-session", json={"probe": "PROBE_A"})
    assert r.status_code == 200 and r.json["ended"] is True
    path, sop = _capture(tmp_path, 11)
    assert _send(port, path, "PROBE_A") == ["Success"]
    assert instances.get_instance(kit.store, sop)["patient_id"] not in (red["id"], yellow["id"])


def test_a_probe_session_runs_out_after_its_window(closed_kit, role_clients, tmp_path):
    kit = closed_kit
    kit.config = kit.config.with_overrides(worklist__session_minutes=1 / 60)  # one second
    port = kit.services["dicom"].port
    dimse.register_probe(kit, "PROBE_A", actor="admin")
    red = patients.create_patient(kit.store, tag="T-7", triage="red")
    assert role_clients["clinician"].open("POST", f"/api/v1/ui/patients/{red['id']}/probe-session",
                                          json={"probe": "PROBE_A"}).status_code == 201
    path, sop = _capture(tmp_path, 1)
    assert _send(port, path, "PROBE_A") == ["Success"]
    assert instances.get_instance(kit.store, sop)["patient_id"] == red["id"]
    time.sleep(1.2)  # the window itself is what is tested: nothing to wait on but the clock
    path, sop = _capture(tmp_path, 2)
    assert _send(port, path, "PROBE_A") == ["Success"]
    assert instances.get_instance(kit.store, sop)["patient_id"] != red["id"]


def test_probe_session_bad_input_is_refused_and_changes_nothing(closed_kit, role_clients):
    kit = closed_kit
    triage, admin = role_clients["triage"], role_clients["admin"]
    dimse.register_probe(kit, "PROBE_A", actor="admin")
    red = patients.create_patient(kit.store, tag="T-9", triage="red")
    dead = patients.create_patient(kit.store, tag="T-10", triage="black")
    cases = [(f"/api/v1/ui/patients/{red['id']}/probe-session", {"probe": "UNKNOWN_AE"}, 400, "not registered"),
             (f"/api/v1/ui/patients/{dead['id']}/probe-session", {"probe": "PROBE_A"}, 400, "deceased"),
             ("/api/v1/ui/patients/T-404/probe-session", {"probe": "PROBE_A"}, 404, "no patient"),
             (f"/api/v1/ui/patients/{red['id']}/probe-session", {"probe": "BAD\\AE"}, 400, "not usable"),
             (f"/api/v1/ui/patients/{red['id']}/probe-session", {"probe": 7}, 400, "AE title")]
    for path, body, status, words in cases:
        r = triage.open("POST", path, json=body)
        assert r.status_code == status and words in r.text, (body, r.status_code, r.text)
    assert all(p.get("session") is None for p in admin.open("GET", "/api/v1/probes").json["probes"])
    # an admin registers from the device page; a triage officer may not
    assert triage.open("POST", "/api/v1/probes", json={"probe": "CLARIUS"}).status_code == 403
    r = admin.open("POST", "/api/v1/probes", json={"probe": "CLARIUS", "name": "Clarius L7"})
    assert r.status_code == 201 and r.json["ae"] == "CLARIUS"
    assert admin.open("POST", "/api/v1/probes", json={"probe": "CLARIUS"}).status_code == 400  # twice


def test_probes_command_while_the_kit_runs(data_dir, tmp_path):
    set_config(data_dir, dicom__allow_any_ae=False, dicom__allowed_ae_titles=[])
    kit = KitProcess(data_dir).start()
    try:
        path, _ = _capture(tmp_path, 1)
        assert _send(kit.dicom_port, path, "LUMIFY2") == []
        out = run_cli("probes", "add", "LUMIFY2", "--name", "Lumify 2", "--data-dir", data_dir).stdout
        assert "probe LUMIFY2 registered (Lumify 2)" in out
        assert _send(kit.dicom_port, path, "LUMIFY2") == ["Success"]  # no restart, no TOML edit
        assert "LUMIFY2" in run_cli("probes", "list", "--data-dir", data_dir).stdout
        bad = run_cli("probes", "add", "WAY_TOO_LONG_AE_TITLE", "--data-dir", data_dir, check=False)
        assert bad.returncode == 2 and "not usable" in bad.stderr
        run_cli("probes", "remove", "LUMIFY2", "--data-dir", data_dir)
        assert _send(kit.dicom_port, _capture(tmp_path, 2)[0], "LUMIFY2") == []
    finally:
        kit.stop()

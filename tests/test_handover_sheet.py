"""The per-patient handover sheet, in process (Flask test client on a real store), and its
Encapsulated PDF reaching a real Orthanc through the kit's sync:

- the PDF's text holds what the board shows of the patient (tag, category, who triaged,
  name, zone, disposition, an intervention with its time, a note, a finding);
- the same PDF is stored as a DICOM Encapsulated PDF in the patient's study with the kit's
  identity, queued for the hospital, and never written in clear under the data dir;
- the sync sends it to Orthanc, which holds it under the patient's ID with the PDF inside;
- the triage role (no `export`) is refused both, each export is audited; an unknown
  patient is a 404.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import requests
from pypdf import PdfReader

from fieldkit.dicom.uids import ENCAPSULATED_PDF
from fieldkit.store import accounts, care
from fieldkit.store import instances as catalogue
from fieldkit.store import patients as pstore
from fieldkit.sync.worker import SyncWorker
from fixtures.board import grow
from fixtures.sync import sync_config
from test_board import add_finding
from test_ui_api import Tablet, ui  # noqa: F401  (ui: a fixture)

PDF_URL = "/api/v1/export/patients/{}/handover.pdf"


def _patient_with_a_story(store, pid="P-1"):
    grow(store, [pid], 1)
    pstore.set_triage(store, pid, "red", by="medic-a")
    pstore.update_details(store, pid, name="Ada Example", age=41, sex="F", note="conscious, GCS 14", actor="medic-a")
    care.add_intervention(store, pid, "tourniquet", "left thigh", at=time.time() - 300, by="medic-a")
    care.set_zone(store, pid, "Red area", ["Red area"], by="medic-a")
    care.set_disposition(store, pid, "awaiting_transport", by="medic-a")
    uid = catalogue.instance_rows(store, patient_id=pid)[0]["sop_instance_uid"]
    add_finding(store, uid, pid)
    return uid


def _text(pdf: bytes) -> str:
    return " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def _make_pdf(app, pid="P-1"):
    clin = Tablet(app, "clin", "clin password 123")
    r = clin.c.post(PDF_URL.format(pid), base_url="https://localhost", headers={"X-CSRF-Token": clin.csrf})
    assert r.status_code == 200, r.data[:300]
    return r


def test_the_pdf_holds_the_board_and_is_kept_as_an_encapsulated_pdf(ui):
    kit, app = ui
    capture = _patient_with_a_story(kit.store)
    r = _make_pdf(app)
    assert r.mimetype == "application/pdf" and r.headers["Cache-Control"] == "no-store"
    text = _text(r.data)
    for words in ("P-1", "Immediate", "medic-a", "Ada", "Red area", "awaiting transport", "Tourniquet: left thigh",
                  "conscious, GCS 14", "b-lines"):
        assert words in text, (words, text)

    uid = r.headers["X-Fieldkit-Stored-Instance"]
    row = catalogue.get_instance(kit.store, uid)
    assert row["patient_id"] == "P-1" and row["sop_class_uid"] == ENCAPSULATED_PDF
    assert row["study_instance_uid"] == catalogue.get_instance(kit.store, capture)["study_instance_uid"]
    ds = catalogue.read_dataset(kit.store, uid)
    assert ds.PatientID == "P-1" and ds.IssuerOfPatientID == kit.config.issuer_of_patient_id
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(ds.EncapsulatedDocument)[:ds.EncapsulatedDocumentLength] == r.data
    assert [j for j in kit.store.queue.rows(kind="sync") if j.payload.get("sop_instance_uid") == uid]
    # never in clear on disk: no file under the data dir holds a PDF
    for path in Path(kit.data_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 64 << 20:
            assert b"%PDF-" not in path.read_bytes(), path
    # the board still counts one capture (the sheet is no capture)
    from fieldkit.store.board import rows_for
    assert rows_for(kit.store).row("P-1")["captures"] == 1


def test_the_print_view_and_refusals_and_audit(ui):
    kit, app = ui
    _patient_with_a_story(kit.store, "Q-1")
    tri = Tablet(app, "tri", "tri password 123")
    assert tri.get("/patients/Q-1/handover").status_code == 403
    r = tri.c.post(PDF_URL.format("Q-1"), base_url="https://localhost", headers={"X-CSRF-Token": tri.csrf})
    assert r.status_code == 403 and b"%PDF" not in r.data
    clin = Tablet(app, "clin", "clin password 123")
    page = clin.get("/patients/Q-1/handover")
    assert page.status_code == 200
    for words in (b"Q-1", b"Immediate", b"Red area", b"Tourniquet: left thigh", b"conscious, GCS 14"):
        assert words in page.data, words
    assert clin.get("/patients/NOPE/handover").status_code == 404
    _make_pdf(app, "Q-1")
    events = [e for e in accounts.audit_events(kit.store) if e["action"] == "patients.export" and e["object"] == "Q-1"]
    assert [e["detail"]["format"] for e in events] == ["print-patient", "pdf"] and events[1]["detail"]["stored"]


def test_the_encapsulated_pdf_reaches_orthanc_with_the_patients_id(ui, orthanc):
    kit, app = ui
    _patient_with_a_story(kit.store, "S-7")
    r = _make_pdf(app, "S-7")
    uid = r.headers["X-Fieldkit-Stored-Instance"]
    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir)
    st = worker.run_once(timeout=60)
    assert st["counts"]["quarantined"] == 0
    found = [i for i in orthanc.rest("/instances")
             if orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == uid]
    assert found, "the handover PDF did not reach Orthanc"
    tags = orthanc.rest(f"/instances/{found[0]}/simplified-tags")
    assert tags["PatientID"] == "S-7" and tags["SOPClassUID"] == ENCAPSULATED_PDF
    raw = requests.get(f"{orthanc.rest_url}/instances/{found[0]}/file", auth=orthanc.auth, timeout=30).content
    got = pydicom.dcmread(io.BytesIO(raw))
    assert bytes(got.EncapsulatedDocument)[:got.EncapsulatedDocumentLength] == r.data
    assert "Tourniquet: left thigh" in _text(r.data)
    assert catalogue.get_instance(kit.store, uid)["sync_state"] == "confirmed"

"""Every combination of the PatientID and IssuerOfPatientID a probe may send, checked on the
stored copy and at a real hospital (Orthanc): the kit's PatientID and the kit's issuer always,
and the probe's own identity kept in OtherPatientIDsSequence whenever it was a different one.

The expected links are written out by hand below (the oracle), not computed by the kit's rules.
"""

from __future__ import annotations

import io
import itertools

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fieldkit.store import instances, patients
from fieldkit.sync.worker import SyncWorker
from fixtures.orthanc import orthanc  # noqa: F401  (fixture)
from fixtures.sync import sync_config

FOREIGN_ISSUER = "PROBE-VENDOR-ISSUER"
PIDS = ("kit", "tag", "foreign", "empty")
ISSUERS = ("kit", "foreign", "none")


def _capture(patient_id: str, issuer: str | None) -> tuple[bytes, str]:
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    if issuer is None:
        ds.pop("IssuerOfPatientID", None)
    else:
        ds.IssuerOfPatientID = issuer
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), str(ds.SOPInstanceUID)


def _others(ds) -> set[tuple[str, str]]:
    return {(str(o.get("PatientID", "")), str(o.get("IssuerOfPatientID", "")))
            for o in ds.get("OtherPatientIDsSequence", []) or []}


def test_every_patient_id_and_issuer_combination_reaches_store_and_hospital_as_the_kits(kit, orthanc):  # noqa: F811
    store = kit.store
    kit_issuer = store.config.issuer_of_patient_id
    assert kit_issuer and kit_issuer != FOREIGN_ISSUER
    known = patients.create_patient(store, name="Known^Patient")  # a kit ID (U-…), no tag
    tagged = patients.create_patient(store, tag="T-0042", triage="red")
    sent_pid = {"kit": known["id"], "tag": "T-0042", "foreign": "SONO-77", "empty": ""}
    sent_issuer = {"kit": kit_issuer, "foreign": FOREIGN_ISSUER, "none": None}

    cases = {}
    for p, i in itertools.product(PIDS, ISSUERS):
        data, sop = _capture(sent_pid[p], sent_issuer[i])
        result = instances.put_instance(store, data, "dimse")
        assert result["status"] == "stored", (p, i, result)
        cases[(p, i)] = (sop, result["patient_id"])

    # The links, by hand: a kit ID counts only under the kit's issuer (or none); a triage tag
    # number is on the patient's wrist whatever the probe's issuer says; anything else is new.
    for (p, i), (sop, linked) in cases.items():
        if p == "kit" and i in ("kit", "none"):
            assert linked == known["id"], (p, i)
        elif p == "tag":
            assert linked == tagged["id"], (p, i)
        else:
            assert linked not in (known["id"], tagged["id"]), (p, i)

    def expected_others(p: str, i: str, linked: str) -> set[tuple[str, str]]:
        pid, issuer = sent_pid[p], sent_issuer[i] or ""
        if not pid or (pid == linked and issuer in ("", kit_issuer)):
            return set()
        return {(pid, issuer)}

    for (p, i), (sop, linked) in cases.items():
        ds = instances.read_dataset(store, sop)
        assert (ds.PatientID, ds.IssuerOfPatientID) == (linked, kit_issuer), (p, i)
        assert _others(ds) == expected_others(p, i, linked), (p, i, _others(ds))

    worker = SyncWorker(store, sync_config(kit.config, orthanc.base_url), kit.data_dir)
    status = worker.run_once(timeout=120)
    assert status["counts"]["quarantined"] == 0
    at_hospital = {}
    for oid in orthanc.rest("/instances"):
        raw = requests.get(f"{orthanc.rest_url}/instances/{oid}/file", timeout=10).content
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        at_hospital[str(ds.SOPInstanceUID)] = ds
    for (p, i), (sop, linked) in cases.items():
        ds = at_hospital[sop]
        assert (ds.PatientID, ds.IssuerOfPatientID) == (linked, kit_issuer), (p, i)
        assert _others(ds) == expected_others(p, i, linked), (p, i, _others(ds))

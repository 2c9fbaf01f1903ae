"""The kit's Modality Worklist, asked by dcmtk's `findscu -W` (a probe's worklist client) over
a real socket, and captures that file themselves by what the worklist gave the probe."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from fieldkit.dicom import worklist as wl
from fieldkit.store import instances, patients
from fixtures.dcmtk import storescu, store_responses


def findscu(port: int, *keys: str, out: Path, aet: str = "PROBE") -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    """findscu -W with -k keys; the answers it wrote (-X) read back, in arrival order."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-v", "-W", "-aet", aet, "-aec", "FIELDKIT", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return proc, answers


# The keys a probe's worklist client asks for (Butterfly, Lumify and Clarius ask about these).
PROBE_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
              "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
              "ScheduledProcedureStepSequence[0].Modality=US",
              "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription")


@pytest.fixture
def board(dimse_kit):
    """30 patients: 6 of each category the board schedules, plus 3 deceased and 1 merged away."""
    store = dimse_kit.store
    made = {}
    categories = ("red", "yellow", "green", "grey", "none")
    for n in range(30):
        cat = categories[n % 5]
        made[f"T-{1000 + n}"] = patients.create_patient(store, tag=f"T-{1000 + n}", triage=cat)
    named = patients.create_patient(store, tag="T-2000", name="Doe^Jane", triage="yellow", sex="F",
                                    birth_date="19800101")
    made[named["id"]] = named
    for n in range(3):
        dead = patients.create_patient(store, tag=f"T-3{n:03d}", triage="black")
        made[dead["id"]] = dead
    gone = patients.create_patient(store, tag="T-4000", triage="red")
    patients.merge_patients(store, gone["id"], made["T-1000"]["id"])
    return dimse_kit, made


def test_every_board_patient_is_one_scheduled_step_red_first(board, tmp_path):
    kit, made = board
    proc, answers = findscu(kit.receiver.port, *PROBE_KEYS, out=tmp_path / "all")
    assert proc.returncode == 0, proc.stderr
    ids = [str(a.PatientID) for a in answers]
    scheduled = [p for p in made.values() if p["triage"] != "black" and p["id"] != "T-4000"]
    assert sorted(ids) == sorted(p["id"] for p in scheduled)  # no deceased, no merged-away patient
    order = {"red": 0, "yellow": 1, "none": 2, "green": 3, "grey": 4}
    ranks = [order[made[i]["triage"]] for i in ids]
    assert ranks == sorted(ranks), "most urgent first"
    issuer = kit.config.issuer_of_patient_id
    accessions = set()
    for a in answers:
        p = made[str(a.PatientID)]
        assert a.IssuerOfPatientID == issuer
        assert str(a.PatientName) == (p["name"] or f"TAG^{p['tag']}")
        step = a.ScheduledProcedureStepSequence[0]
        assert step.Modality == "US" and step.ScheduledStationAETitle == ""
        assert step.ScheduledProcedureStepStartDate == time.strftime("%Y%m%d", time.localtime(p["created"]))
        assert wl.CATEGORY_TEXT[p["triage"]] in step.ScheduledProcedureStepDescription
        assert pydicom.uid.UID(a.StudyInstanceUID).is_valid and len(a.AccessionNumber) <= 16
        accessions.add(a.AccessionNumber)
    assert len(accessions) == len(answers)  # one encounter each
    jane = next(a for a in answers if a.PatientID == "T-2000")
    assert (jane.PatientSex, jane.PatientBirthDate) == ("F", "19800101")
    # the same patient gets the same encounter on every query
    _, again = findscu(kit.receiver.port, *PROBE_KEYS, out=tmp_path / "again")
    assert {(a.PatientID, a.AccessionNumber, a.StudyInstanceUID) for a in again} == \
        {(a.PatientID, a.AccessionNumber, a.StudyInstanceUID) for a in answers}


def test_wildcard_date_range_and_sequence_matching(board, tmp_path):
    kit, made = board
    port = kit.receiver.port
    _, tagged = findscu(port, "PatientName=TAG^T-100*", "PatientID", out=tmp_path / "w")
    assert sorted(a.PatientID for a in tagged) == sorted(i for i in made if i.startswith("T-100")
                                                        and made[i]["triage"] != "black")
    _, one = findscu(port, "PatientName=doe^jan?", "PatientID", out=tmp_path / "ci")
    assert [a.PatientID for a in one] == ["T-2000"]  # names match case-insensitively
    today = time.strftime("%Y%m%d")
    _, dated = findscu(port, "PatientID", f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}-",
                       out=tmp_path / "d1")
    assert len(dated) == 31
    _, before = findscu(port, "PatientID", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=-19991231",
                        out=tmp_path / "d2")
    assert before == []
    _, ct = findscu(port, "PatientID", "ScheduledProcedureStepSequence[0].Modality=CT", out=tmp_path / "ct")
    assert ct == []
    _, exact = findscu(port, "PatientID=T-1003", "AccessionNumber", out=tmp_path / "x")
    assert [a.PatientID for a in exact] == ["T-1003"]
    assert exact[0].AccessionNumber == wl.encounter(kit.config.issuer_of_patient_id, "T-1003",
                                                    kit.config["kit.uid_root"])[0]


def test_the_answer_is_capped_and_says_how_many_more(board, tmp_path):
    kit, _ = board
    kit.config = kit.config.with_overrides(worklist__max_items=5)
    proc, answers = findscu(kit.receiver.port, "PatientID", out=tmp_path / "cap")
    assert len(answers) == 5 and "Final Find Response (Success)" in proc.stdout + proc.stderr
    statuses = [s for s, _ in _pynetdicom_find(kit.receiver.port, "PatientID")]
    assert [int(s.Status) for s in statuses] == [0xFF00] * 5 + [0x0000]
    assert statuses[-1].ErrorComment == "26 more items not sent; narrow the query"


def _pynetdicom_find(port: int, *keys: str):
    """A C-FIND the way a probe app built on pynetdicom sends it."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
    assert assoc.is_established
    query = Dataset()
    for k in keys:
        setattr(query, k, "")
    try:
        return list(assoc.send_c_find(query, ModalityWorklistInformationFind))
    finally:
        assoc.release()


def test_an_unknown_ae_title_gets_no_worklist(kit, tmp_path):
    from fieldkit.ingest import dimse

    patients.create_patient(kit.store, tag="T-1", triage="red")
    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=False,
                                           dicom__allowed_ae_titles=["LUMIFY1"])
    receiver = dimse.start(kit)
    try:
        refused, none = findscu(receiver.port, "PatientID", out=tmp_path / "no", aet="INTRUDER")
        assert none == [] and "Association Rejected" in refused.stdout + refused.stderr
        ok, answers = findscu(receiver.port, "PatientID", out=tmp_path / "yes", aet="LUMIFY1")
        assert [a.PatientID for a in answers] == ["T-1"]
    finally:
        receiver.stop()


def test_a_capture_stamped_from_the_worklist_files_itself(board, tmp_path):
    """The probe journey: pick the red patient from the worklist, capture, send."""
    kit, made = board
    _, picked = findscu(kit.receiver.port, *PROBE_KEYS, out=tmp_path / "pick")
    red = next(a for a in picked if made[str(a.PatientID)]["triage"] == "red")
    files = []
    # one capture as a worklist-aware probe writes it; one from a probe that kept its own
    # PatientID and name but copied the accession; one that kept only the study UID
    for n, (pid, name, accession, study) in enumerate((
            (red.PatientID, red.PatientName, red.AccessionNumber, red.StudyInstanceUID),
            ("PLA", "OB^^^^", red.AccessionNumber, generate_uid()),
            ("CompressedSamples^US1", "PLA", "", red.StudyInstanceUID))):
        ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.StudyInstanceUID = pid, name, accession, study
        if n == 0:
            ds.IssuerOfPatientID = red.IssuerOfPatientID
        path = tmp_path / f"cap{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append((path, str(ds.SOPInstanceUID)))
    proc = storescu(kit.receiver.port, [p for p, _ in files], "-xy")
    assert store_responses(proc) == ["Success"] * 3, proc.stdout + proc.stderr
    for _, sop in files:
        row = instances.get_instance(kit.store, sop)
        assert row["patient_id"] == red.PatientID
        stored = instances.read_dataset(kit.store, sop, stop_before_pixels=True)
        assert (stored.PatientID, stored.IssuerOfPatientID) == (red.PatientID, kit.config.issuer_of_patient_id)
    # nobody new on the board: the captures went to the triaged patient
    assert len(patients.list_patients(kit.store)) == len([p for p in made.values() if p["id"] != "T-4000"])


def test_matching_rules_by_hand():
    item = wl.item_for({"id": "T-7", "tag": "T-7", "name": "Müller^Anna", "triage": "red",
                        "created": time.mktime((2026, 12, 4, 9, 30, 0, 0, 0, -1))}, issuer="FIELDKIT-K1")

    def q(**keys) -> Dataset:
        ds = Dataset()
        for k, v in keys.items():
            if k == "SPS":
                step = Dataset()
                for sk, sv in v.items():
                    setattr(step, sk, sv)
                ds.ScheduledProcedureStepSequence = Sequence([step])
            else:
                setattr(ds, k, v)
        return ds

    assert wl.matches(item, q(PatientName=""))                      # universal
    assert wl.matches(item, q(PatientName="MÜLLER^*"))              # wildcard, case folded
    assert wl.matches(item, q(PatientName="M?ller^Anna"))
    assert not wl.matches(item, q(PatientName="Muller*"))
    assert wl.matches(item, q(PatientID="T-7"))
    assert not wl.matches(item, q(PatientID="t-7"))                 # IDs are exact
    assert not wl.matches(item, q(PatientID="T-*7x"))
    assert wl.matches(item, q(SPS={"ScheduledProcedureStepStartDate": "20261201-20261231"}))
    assert wl.matches(item, q(SPS={"ScheduledProcedureStepStartDate": "20261204"}))
    assert not wl.matches(item, q(SPS={"ScheduledProcedureStepStartDate": "-20261203"}))
    assert wl.matches(item, q(SPS={"ScheduledProcedureStepStartTime": "0900-1000"}))
    assert not wl.matches(item, q(SPS={"ScheduledProcedureStepStartTime": "1000-"}))
    assert wl.matches(item, q(SPS={"Modality": "US", "ScheduledStationAETitle": ""}))
    assert not wl.matches(item, q(SPS={"Modality": "US", "ScheduledProcedureStepStatus": "STARTED"}))
    assert wl.matches(item, q(StudyInstanceUID="1.2.3\\" + item.StudyInstanceUID))  # UID list
    two = q(PatientID="")
    two.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
    two.ScheduledProcedureStepSequence[0].Modality = "US"
    two.ScheduledProcedureStepSequence[1].Modality = "CT"
    with pytest.raises(wl.QueryError, match="one item"):
        wl.matches(item, two)
    answer = wl.response(item, q(PatientName="", SPS={"Modality": "US", "ScheduledProcedureStepDescription": ""}))
    assert set(answer.dir()) == {"PatientName", "ScheduledProcedureStepSequence", "SpecificCharacterSet"}
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription.startswith("RED - Immediate")
    assert "PatientID" not in answer  # only what was asked


def test_a_malformed_query_gets_a_failure_status_not_a_crash(dimse_kit):
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    patients.create_patient(dimse_kit.store, tag="T-1", triage="red")
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", dimse_kit.receiver.port, ae_title="FIELDKIT")
    assert assoc.is_established
    try:
        bad = Dataset()
        bad.PatientID = ""
        bad.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
        bad.ScheduledProcedureStepSequence[0].Modality = "US"
        bad.ScheduledProcedureStepSequence[1].Modality = "CT"
        statuses = [s for s, _ in assoc.send_c_find(bad, ModalityWorklistInformationFind)]
        assert [int(s.Status) for s in statuses] == [0xA900]
        assert "one item" in statuses[0].ErrorComment
        good = Dataset()
        good.PatientID = ""
        answers = [(int(s.Status), i) for s, i in assoc.send_c_find(good, ModalityWorklistInformationFind)]
        assert [code for code, _ in answers] == [0xFF00, 0x0000] and answers[0][1].PatientID == "T-1"
    finally:
        assoc.release()


def test_a_repeated_query_sees_every_change_since_the_last_one(board, tmp_path):
    """Answers are kept encoded between queries: a renamed, re-triaged, new or deceased
    patient must still show at once, and in both transfer syntaxes the same way."""
    kit, made = board
    port = kit.receiver.port
    _, first = findscu(port, *PROBE_KEYS, out=tmp_path / "1")
    _, second = findscu(port, *PROBE_KEYS, out=tmp_path / "2")
    assert [(a.PatientID, a.PatientName, a.AccessionNumber) for a in second] == \
        [(a.PatientID, a.PatientName, a.AccessionNumber) for a in first]
    grey = next(p for p in made.values() if p["triage"] == "grey")
    patients.update_details(kit.store, grey["id"], name="Roe^Rick")
    patients.set_triage(kit.store, grey["id"], "red")
    patients.set_triage(kit.store, "T-1001", "black")
    newcomer = patients.create_patient(kit.store, tag="T-5000", triage="red")
    _, third = findscu(port, *PROBE_KEYS, out=tmp_path / "3")
    ids = [str(a.PatientID) for a in third]
    assert "T-1001" not in ids and newcomer["id"] in ids and len(ids) == len(first)
    moved = next(a for a in third if a.PatientID == grey["id"])
    assert str(moved.PatientName) == "Roe^Rick"
    assert moved.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription.startswith("RED")
    assert ids.index(grey["id"]) < ids.index("T-1006")  # now red: ahead of the yellow ones
    # pynetdicom proposing implicit VR only: the same answers, encoded for that syntax
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(ModalityWorklistInformationFind, ["1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
    assert assoc.is_established
    query = Dataset()
    query.PatientID, query.PatientName = "", ""
    try:
        got = [(str(i.PatientID), str(i.PatientName)) for s, i in
               assoc.send_c_find(query, ModalityWorklistInformationFind) if int(s.Status) == 0xFF00]
    finally:
        assoc.release()
    assert got == [(str(a.PatientID), str(a.PatientName)) for a in third]

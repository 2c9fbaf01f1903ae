"""The drill as a workflow: 50 captures from 3 registered probes for 20 triaged patients,
sent over real associations (pynetdicom as each probe), and where each one ended up.

- LUMIFY1 asks the kit's worklist (C-FIND) and stamps the chosen patient's PatientID,
  issuer, AccessionNumber and StudyInstanceUID into its captures;
- BFLY1 asks the worklist too but keeps its own PatientID and name ("PLA", "OB^^^^"):
  only the AccessionNumber it copied says whose capture it is;
- CLARIUS1 has no worklist: a probe session binds it to one patient after another, and
  its captures carry only its own generic ID;
- each probe also sends one capture nobody can link (its own ID, no accession, a new study):
  those must wait in the unassigned tray, never on a guessed patient.

`run_drill(work_dir)` is also the workflow figure of tests/bench/bench_worklist.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, UltrasoundImageStorage

from fixtures.board import tiny_capture
from kitproc import init_kit

N_PATIENTS = 20
CATEGORIES = ("red", "yellow", "green", "red", "yellow")
# probe -> (how it knows the patient, the patients it scans, captures per patient)
PLAN = {"LUMIFY1": ("worklist", range(0, 10), 2),        # 20 captures
        "BFLY1": ("accession only", range(10, 15), 3),   # 15
        "CLARIUS1": ("probe session", range(15, 20), 0)}  # 12: 3, 3, 2, 2, 2
SESSION_COUNTS = {15: 3, 16: 3, 17: 2, 18: 2, 19: 2}


def _capture(seed: int, **fields) -> bytes:
    """A small ultrasound capture as a probe writes it, with the given patient/study fields."""
    ds = pydicom.dcmread(io.BytesIO(tiny_capture("PROBE-OWN-ID", generate_uid(), seed=seed)))
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Probe:
    """One handheld probe: its own association to the kit, a worklist query, C-STOREs."""

    def __init__(self, ae_title: str, port: int):
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(UltrasoundImageStorage, ["1.2.840.10008.1.2.1"])
        self.ae.add_requested_context(ModalityWorklistInformationFind)
        self.assoc = self.ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
        if not self.assoc.is_established:
            raise AssertionError(f"the kit refused probe {ae_title}")

    def worklist(self) -> list[Dataset]:
        query = Dataset()
        for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyInstanceUID"):
            setattr(query, keyword, "")
        step = Dataset()
        step.Modality = "US"
        query.ScheduledProcedureStepSequence = [step]
        return [ident for status, ident in self.assoc.send_c_find(query, ModalityWorklistInformationFind)
                if int(status.Status) == 0xFF00]

    def send(self, data: bytes) -> str:
        ds = pydicom.dcmread(io.BytesIO(data))
        status = self.assoc.send_c_store(ds)
        if int(getattr(status, "Status", -1)) != 0:
            raise AssertionError(f"C-STORE answered {status}")
        return str(ds.SOPInstanceUID)

    def close(self) -> None:
        self.assoc.release()


def run_drill(work_dir: Path) -> dict:
    """Run the drill on a fresh kit in `work_dir`; returns the outcome counts."""
    from fieldkit.ingest import dimse
    from fieldkit.kit import open_kit
    from fieldkit.store import instances, patients, probes

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    kit = open_kit(init_kit(Path(work_dir) / "kit"))
    receiver = None
    probes_open: list[Probe] = []
    try:
        kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1", dicom__allow_any_ae=False,
                                               dicom__allowed_ae_titles=[])
        board = [patients.create_patient(kit.store, tag=f"T-{7000 + n}", triage=CATEGORIES[n % len(CATEGORIES)])
                 for n in range(N_PATIENTS)]
        for ae in PLAN:
            probes.add_probe(kit.store, ae, name=f"drill {ae}")
        receiver = dimse.start(kit)
        meant: dict[str, str | None] = {}  # SOP UID -> the patient it belongs to (None: nobody knows)
        seed = 0

        def capture(**fields) -> bytes:
            nonlocal seed
            seed += 1
            return _capture(seed, **fields)

        lumify, bfly, clarius = (Probe(ae, receiver.port) for ae in PLAN)
        probes_open += [lumify, bfly, clarius]
        # the two worklist probes pick their patients by the tag the worklist shows
        for probe, (how, scanned, per) in ((lumify, PLAN["LUMIFY1"]), (bfly, PLAN["BFLY1"])):
            listed = {str(item.PatientName): item for item in probe.worklist()}
            for n in scanned:
                item = listed[f"TAG^{board[n]['tag']}"]
                for _ in range(per):
                    if how == "worklist":
                        data = capture(PatientID=item.PatientID, IssuerOfPatientID=item.IssuerOfPatientID,
                                       PatientName=item.PatientName, AccessionNumber=item.AccessionNumber,
                                       StudyInstanceUID=item.StudyInstanceUID)
                    else:
                        data = capture(PatientID="PLA", PatientName="OB^^^^", AccessionNumber=item.AccessionNumber)
                    meant[probe.send(data)] = board[n]["id"]
        # the probe without a worklist: one session after another, its generic ID on every capture
        minutes = float(kit.config["worklist.session_minutes"])
        for n, count in SESSION_COUNTS.items():
            probes.start_session(kit.store, "CLARIUS1", board[n]["id"], minutes=minutes, by="drill")
            for _ in range(count):
                meant[clarius.send(capture(PatientID="CompressedSamples^US1", PatientName="PLA"))] = board[n]["id"]
        probes.end_session(kit.store, "CLARIUS1")
        # one capture per probe that nothing links: its own ID, no accession, a new study
        for probe, own in ((lumify, "LUM-0001"), (bfly, "PLA"), (clarius, "CompressedSamples^US1")):
            meant[probe.send(capture(PatientID=own, PatientName="OB^^^^"))] = None
        for probe in probes_open:
            probe.close()
        probes_open.clear()

        board_ids = {p["id"] for p in board}
        filed_right = misfiled = in_tray = 0
        for sop, patient_id in meant.items():
            row = instances.get_instance(kit.store, sop)
            holder = patients.get_patient(kit.store, row["patient_id"])
            if patient_id is None:
                in_tray += patients.is_unassigned(holder)
                misfiled += holder["id"] in board_ids
            elif holder["id"] == patient_id:
                filed_right += 1
            else:
                misfiled += 1
        linked = sum(1 for p in meant.values() if p is not None)
        return {"captures": len(meant), "probes": len(PLAN), "patients": N_PATIENTS, "linked": linked,
                "filed_right": filed_right, "share": filed_right / linked, "misfiled": misfiled,
                "unlinked": len(meant) - linked, "in_tray": in_tray,
                "board_after": sorted(p["id"] for p in patients.list_patients(kit.store)
                                      if not patients.is_unassigned(p))}
    finally:
        for probe in probes_open:
            probe.close()
        if receiver is not None:
            receiver.stop()
        kit.close()


def test_the_drill_files_every_capture_to_its_patient_and_the_rest_to_the_tray(tmp_path):
    outcome = run_drill(tmp_path)
    assert (outcome["captures"], outcome["probes"], outcome["patients"]) == (50, 3, 20)
    assert outcome["share"] >= 0.95, outcome
    assert outcome["misfiled"] == 0, outcome
    assert (outcome["unlinked"], outcome["in_tray"]) == (3, 3), outcome
    # no new card on the board: unlinked captures are in the tray, not patients
    assert outcome["board_after"] == sorted(f"T-{7000 + n}" for n in range(N_PATIENTS))

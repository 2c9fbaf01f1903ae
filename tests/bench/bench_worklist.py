"""Modality Worklist benchmark (measured, never asserted), and the drill as a workflow figure.

1. Worklist C-FIND: one kit (`fieldkit serve`) with N board patients (default 2 000), and
   Orthanc's ModalityWorklists sample plugin serving the same N items as `.wl` files
   (written with pydicom from the kit's own items). The same C-FIND identifier (the keys a
   probe's worklist client asks for) is sent by pynetdicom to each, alternately, one
   association per query; per query we time association to final status and count the
   answers. Printed: medians, answers per second, and the kit/Orthanc answer-rate ratio.
2. The drill (tests/test_worklist_drill.py, run here once on a fresh kit): 50 captures from
   3 probes for 20 patients, and the share filed to the right patient without a human step.

    python tests/bench/bench_worklist.py [--patients 2000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import ModalityWorklistInformationFind  # noqa: E402

from fixtures.orthanc import start_orthanc  # noqa: E402
from kitproc import KitProcess, init_kit, set_config  # noqa: E402

WORKLIST_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"
CATEGORIES = ("red", "yellow", "green", "grey", "none")


def probe_query() -> Dataset:
    """What a probe's worklist client asks: all ultrasound steps, these keys returned."""
    q = Dataset()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID",
                    "RequestedProcedureDescription"):
        setattr(q, keyword, "")
    step = Dataset()
    step.Modality = "US"
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepDescription"):
        setattr(step, keyword, "")
    q.ScheduledProcedureStepSequence = [step]
    return q


def find(port: int, called: str, query: Dataset) -> tuple[float, int, int]:
    """(seconds, answers, final status) of one C-FIND on its own association."""
    ae = AE(ae_title="PROBE1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(ModalityWorklistInformationFind)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"{called} refused the association")
    answers, final = 0, -1
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            code = int(getattr(status, "Status", -1))
            if code in (0xFF00, 0xFF01):
                answers += 1
            else:
                final = code
    finally:
        assoc.release()
    return time.perf_counter() - t0, answers, final


def board(data_dir: Path, n: int) -> list[Dataset]:
    """N tagged patients in the kit's store; their worklist items as the kit makes them."""
    from fieldkit.dicom import worklist as wl
    from fieldkit.runtime import open_kit
    from fieldkit.store import patients

    kit = open_kit(data_dir)
    try:
        for i in range(n):
            patients.create_patient(kit.store, tag=f"T-{10000 + i}", triage=CATEGORIES[i % len(CATEGORIES)])
        cfg = kit.config
        return [wl.item_for(p, issuer=cfg.issuer_of_patient_id, uid_root=cfg["kit.uid_root"],
                            procedure=cfg["worklist.procedure"]) for p in patients.list_patients(kit.store)]
    finally:
        kit.store.close()


def write_wl(items: list[Dataset], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        ds = Dataset()
        ds.update(item)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"item{i:05d}.wl", enforce_file_format=True)


def bench_worklist(work: Path, n: int, repeats: int) -> None:
    data_dir = init_kit(work / "kit")
    set_config(data_dir, worklist__max_items=n, dicom__allowed_ae_titles=["PROBE1"])
    t0 = time.perf_counter()
    items = board(data_dir, n)
    print(f"board: {n} patients created in {time.perf_counter() - t0:.1f}s")
    write_wl(items, work / "worklists")
    kit = orthanc = None
    try:
        kit = KitProcess(data_dir).start()
        orthanc = start_orthanc(work / "orthanc", extra={
            "Plugins": [str(Path(p)) for p in (WORKLIST_PLUGIN,)] + [
                "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "Worklists": {"Enable": True, "Database": str(work / "worklists")},
            "DicomAlwaysAllowFindWorklist": True, "DicomCheckCalledAet": False})
        query = probe_query()
        kit_times, orthanc_times = [], []
        for run in range(repeats + 1):  # the first of each warms up (not counted)
            for label, port, called, times in (("kit", kit.dicom_port, "FIELDKIT", kit_times),
                                                ("Orthanc", orthanc.dicom_port, "HOSPITAL", orthanc_times)):
                seconds, answers, final = find(port, called, query)
                if answers != n or final != 0:
                    raise RuntimeError(f"{label}: {answers} answers, final status {final:#06x} (expected {n}, 0)")
                if run:
                    times.append(seconds)
        k, o = statistics.median(kit_times), statistics.median(orthanc_times)
        print(f"worklist C-FIND, {n} items, median of {repeats}: kit {k * 1000:.0f} ms "
              f"({n / k:.0f} answers/s), Orthanc {o * 1000:.0f} ms ({n / o:.0f} answers/s)")
        print(f"ratio worklist answer rate kit/orthanc = {o / k:.2f} (target >= 1.0)")
    finally:
        if kit is not None:
            kit.stop()
        if orthanc is not None:
            orthanc.stop()


def bench_drill(work: Path) -> None:
    from test_worklist_drill import run_drill

    outcome = run_drill(work / "drill")
    print(f"drill: {outcome['captures']} captures from {outcome['probes']} probes for {outcome['patients']} "
          f"patients: {outcome['filed_right']} filed to the right patient without a human step "
          f"({outcome['share']:.0%} of those meant for a patient), {outcome['misfiled']} misfiled, "
          f"{outcome['in_tray']} of {outcome['unlinked']} unlinked ones in the tray")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        bench_worklist(Path(tmp), args.patients, args.repeats)
        bench_drill(Path(tmp))


if __name__ == "__main__":
    main()

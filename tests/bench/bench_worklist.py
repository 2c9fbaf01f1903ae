"""Modality Worklist benchmark (measured, never asserted), and the drill as a workflow figure.

1. Worklist C-FIND: one kit (`fieldkit serve`) with N board patients (default 2 000), and
   Orthanc's ModalityWorklists sample plugin serving the same N items as `.wl` files
   (written with pydicom from the kit's own items). The same C-FIND identifier (the keys a
   probe's worklist client asks for) is sent by pynetdicom to each, alternately, one
   association per query; per query we time association to final status and count the
   answers. Printed: the first query of each, then medians, answers per second, and the
   kit/Orthanc answer-rate ratio. A third server, pynetdicom alone answering the same
   items from memory (no store, no matching), shows pynetdicom's own per-message cost;
   a second kit with `worklist.lean_answers = false` shows the kit's normal path. The
   same query is then asked by dcmtk's `findscu` too (a C++ client: with pynetdicom as the
   client, its own per-PDU cost is part of every figure).
2. The drill (tests/test_worklist_drill.py, run here once on a fresh kit): 50 captures from
   3 probes for 20 patients, and the share filed to the right patient without a human step.

    python tests/bench/bench_worklist.py [--patients 2000] [--repeats 9] [--no-drill]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
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

from fixtures.orthanc import dicomweb_plugin, free_port, start_orthanc  # noqa: E402
from kitproc import KitProcess, init_kit, set_config  # noqa: E402

WORKLIST_PLUGINS = ("/usr/share/orthanc/plugins/libModalityWorklists.so",  # Debian's orthanc package
                    "/usr/lib/orthanc/libModalityWorklists.so")


def worklist_plugin() -> str | None:
    return next((p for p in WORKLIST_PLUGINS if Path(p).exists()), None)
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


def find(port: int, called: str, query: Dataset, sop_class=ModalityWorklistInformationFind,
         calling: str = "PROBE1") -> tuple[float, int, int]:
    """(seconds, answers, final status) of one C-FIND on its own association."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(sop_class)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"{called} refused the association")
    answers, final = 0, -1
    try:
        for status, identifier in assoc.send_c_find(query, sop_class):
            code = int(getattr(status, "Status", -1))
            if code in (0xFF00, 0xFF01):
                answers += 1
            else:
                final = code
    finally:
        assoc.release()
    return time.perf_counter() - t0, answers, final


FINDSCU_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
                "ScheduledProcedureStepSequence[0].Modality=US",
                "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription")


def find_dcmtk(port: int, called: str) -> tuple[float, int, int]:
    """The same C-FIND from dcmtk's findscu (a C++ client, so the servers' own speed shows):
    (seconds including the process start, answers, 0 if the final status was Success)."""
    args = ["findscu", "-v", "-W", "-aet", "PROBE1", "-aec", called]
    for key in FINDSCU_KEYS:
        args += ["-k", key]
    t0 = time.perf_counter()
    proc = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    answers = sum(1 for line in log.splitlines() if "Find Response" in line and "(Pending)" in line)
    return seconds, answers, 0 if proc.returncode == 0 and "Final Find Response (Success)" in log else -1


def board(data_dir: Path, n: int) -> list[Dataset]:
    """N tagged patients in the kit's store; their worklist items as the kit makes them."""
    from fieldkit.dicom import worklist as wl
    from fieldkit.kit import open_kit
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


def serve_bare(port: int, folder: Path) -> None:
    """pynetdicom alone: every .wl item in `folder`, encoded once, answered to any C-FIND."""
    from io import BytesIO

    import pydicom
    from pynetdicom import _config, evt
    from pynetdicom.dsutils import decode, encode

    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    items = []
    for path in sorted(folder.glob("*.wl")):
        ds = pydicom.dcmread(path)
        del ds.file_meta
        items.append(decode(BytesIO(encode(ds, True, True)), True, True))

    def on_find(event):
        for item in items:
            yield 0xFF00, item
        yield 0x0000, None

    ae = AE(ae_title="BARE")
    ae.add_supported_context(ModalityWorklistInformationFind, ["1.2.840.10008.1.2"])
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_FIND, on_find)])


def start_bare(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the bare pynetdicom server did not start")


def bench_worklist(work: Path, n: int, repeats: int) -> None:
    if not worklist_plugin() or not dicomweb_plugin():
        print("worklist: Orthanc's ModalityWorklists plugin is not installed (Debian: orthanc); no comparison")
        return
    data_dir = init_kit(work / "kit")
    set_config(data_dir, worklist__max_items=n, dicom__allowed_ae_titles=["PROBE1"])
    t0 = time.perf_counter()
    items = board(data_dir, n)
    print(f"board: {n} patients created in {time.perf_counter() - t0:.1f}s")
    write_wl(items, work / "worklists")
    # a second kit, the same board size, answering through pynetdicom's normal path
    normal_dir = init_kit(work / "kit-normal")
    set_config(normal_dir, worklist__max_items=n, dicom__allowed_ae_titles=["PROBE1"], worklist__lean_answers=False)
    board(normal_dir, n)
    kit = normal = orthanc = bare = None
    try:
        bare_port = free_port()
        bare = start_bare(bare_port, work / "worklists")
        kit = KitProcess(data_dir).start()
        normal = KitProcess(normal_dir).start()
        orthanc = start_orthanc(work / "orthanc", extra={
            "Plugins": [dicomweb_plugin(), worklist_plugin()],
            "Worklists": {"Enable": True, "Database": str(work / "worklists")},
            "DicomAlwaysAllowFindWorklist": True, "DicomCheckCalledAet": False})
        query = probe_query()
        servers = (("kit", kit.dicom_port, "FIELDKIT"), ("Orthanc", orthanc.dicom_port, "HOSPITAL"),
                   ("pynetdicom alone", bare_port, "BARE"), ("kit, normal path", normal.dicom_port, "FIELDKIT"))
        clients = [("pynetdicom", lambda port, called: find(port, called, query))]
        if shutil.which("findscu"):
            clients.append(("findscu", find_dcmtk))
        times: dict[tuple[str, str], list[float]] = {(c, s): [] for c, _ in clients for s, _, _ in servers}
        for run in range(repeats + 1):  # the first of each is printed, not counted
            for client, ask in clients:
                for label, port, called in servers:
                    seconds, answers, final = ask(port, called)
                    if answers != n or final != 0:
                        raise RuntimeError(f"{label} ({client}): {answers} answers, final status {final:#06x} "
                                           f"(expected {n}, 0)")
                    if run:
                        times[(client, label)].append(seconds)
                    else:
                        print(f"first query ({client}): {label} {seconds * 1000:.0f} ms")
        for client, _ in clients:
            med = {label: statistics.median(times[(client, label)]) for label, _, _ in servers}
            print(f"worklist C-FIND from {client}, {n} items, median of {repeats}: "
                  + ", ".join(f"{label} {m * 1000:.0f} ms ({n / m:.0f} answers/s)" for label, m in med.items()))
            print(f"ratio worklist answer rate ({client}) kit/orthanc = {med['Orthanc'] / med['kit']:.2f} "
                  f"(target >= 1.0)")
            print(f"ratio worklist answer rate ({client}) pynetdicom-alone/orthanc = "
                  f"{med['Orthanc'] / med['pynetdicom alone']:.2f}, "
                  f"kit/pynetdicom-alone = {med['pynetdicom alone'] / med['kit']:.2f}, "
                  f"kit lean/normal path = {med['kit, normal path'] / med['kit']:.2f}")
    finally:
        for proc in (kit, normal):
            if proc is not None:
                proc.stop()
        if orthanc is not None:
            orthanc.stop()
        if bare is not None:
            bare.kill()
            bare.wait(10)


def bench_drill(work: Path) -> None:
    from test_worklist_drill import run_drill

    outcome = run_drill(work / "drill")
    print(f"drill: {outcome['captures']} captures from {outcome['probes']} probes for {outcome['patients']} "
          f"patients: {outcome['filed_right']} filed to the right patient without a human step "
          f"({outcome['share']:.0%} of those meant for a patient), {outcome['misfiled']} misfiled, "
          f"{outcome['in_tray']} of {outcome['unlinked']} unlinked ones in the tray")


def main() -> None:
    if sys.argv[1:2] == ["--bare-scp"]:
        return serve_bare(int(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-drill", action="store_true", help="the worklist figures only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        bench_worklist(Path(tmp), args.patients, args.repeats)
        if not args.no_drill:
            bench_drill(Path(tmp))


if __name__ == "__main__":
    main()

"""Query/Retrieve benchmark (measured, never asserted): the kit (`fieldkit serve`) and
Orthanc holding the same instances, asked by the same pynetdicom SCU, alternately.

- N small ultrasound instances (default 10 000: 1 000 studies of 10, 200 patients) plus
  pydicom's 30-frame SonoSite cine (JPEG baseline) are loaded into both (the kit through
  its catalogue, Orthanc through its REST API, the same Part-10 bytes); the kit's analysis
  and sync jobs are then marked done, as on a kit that kept up.
- C-FIND, Study Root, STUDY level: every study (1 000 answers) and a filtered query
  (PatientName wildcard and a StudyDate range); one association per query, timed from
  association to the final status.
- C-MOVE of the cine (one SOP instance) into dcmtk's storescp (`--ignore`: it receives and
  drops), so the time is the sender's: association, the move, its sub-association, the
  C-STORE, the final status.
Printed: medians, and the kit/Orthanc ratio of rates (Orthanc's median time / the kit's;
>= 1.0 means the kit is as fast or faster). Orthanc knows the SCU and the destination as
DicomModalities.

    python tests/bench/bench_qr.py [--instances 10000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import requests  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind as FIND, StudyRootQueryRetrieveInformationModelMove as MOVE)

from fixtures.orthanc import dicomweb_plugin, free_port, orthanc_binary, start_orthanc  # noqa: E402
from kitproc import KitProcess, init_kit, set_config  # noqa: E402
from bench_reads import drain  # noqa: E402  (beside this script)
from bench_worklist import find as c_find  # noqa: E402

SCU = "BENCHSCU"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def small_instances(n: int, per_study: int = 10, patients: int = 200):
    """n Part-10 US images, 16x16 grey (synthetic, no patient data), per_study to a study."""
    rng = np.random.default_rng(1)
    for i in range(n):
        if i % per_study == 0:
            study, series = generate_uid(), generate_uid()
            p = (i // per_study) % patients
            date = f"2024{1 + (i // per_study) % 12:02d}{1 + (i // per_study) % 28:02d}"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = f"BENCH^P{p:03d}", f"B{p:03d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyDate, ds.StudyTime = study, series, date, "101500"
        ds.Modality, ds.AccessionNumber, ds.StudyID = "US", f"A{i // per_study}", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, i % per_study + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 16, 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rng.integers(0, 255, (16, 16), dtype=np.uint8).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield buf.getvalue()


def load_kit(data_dir: Path, objects: list[bytes]) -> None:
    from fieldkit.kit import open_kit
    from fieldkit.store import instances

    kit = open_kit(data_dir)
    try:
        for at in range(0, len(objects), 250):
            batch = instances.Batch(kit.store, "import")
            for data in objects[at:at + 250]:
                batch.add(data)
            batch.commit()
        # a kit that kept up: no analysis or sync work left to compete with the queries
        for kind in ("infer", "sync"):
            drain(kit.store, kind)
    finally:
        kit.close()


def load_orthanc(orthanc, objects: list[bytes]) -> None:
    def post(chunk):
        with requests.Session() as s:
            s.auth = orthanc.auth
            for data in chunk:
                s.post(f"{orthanc.rest_url}/instances", data=data, timeout=60).raise_for_status()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, [objects[i::4] for i in range(4)]))


def find(port: int, called: str, query: Dataset) -> tuple[float, int, int]:
    return c_find(port, called, query, FIND, calling=SCU)


def move(port: int, called: str, study: str, sop: str) -> tuple[float, int, int]:
    ae = AE(ae_title=SCU)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(MOVE)
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyInstanceUID, q.SOPInstanceUID = "IMAGE", study, sop
    q.SeriesInstanceUID = ""
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError(f"{called} refused the association")
    done, final = 0, -1
    try:
        for status, _ in assoc.send_c_move(q, "DEST", MOVE):
            final = int(getattr(status, "Status", -1))
            done = int(getattr(status, "NumberOfCompletedSuboperations", done) or done)
    finally:
        assoc.release()
    return time.perf_counter() - t0, done, final


def study_query(**keys) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    for k in ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientName", "PatientID", "AccessionNumber",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        setattr(q, k, keys.get(k, ""))
    return q


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def bench(work: Path, n: int, repeats: int) -> None:
    if not orthanc_binary() or not dicomweb_plugin():
        print("qr: Orthanc is not installed; no comparison")
        return
    t0 = time.perf_counter()
    objects = list(small_instances(n))
    cine = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    cine.PatientName, cine.PatientID = "BENCH^CINE", "BCINE"
    buf = io.BytesIO()
    cine.save_as(buf, enforce_file_format=True)
    objects.append(buf.getvalue())
    dest_port = free_port()
    data_dir = init_kit(work / "kit")
    set_config(data_dir, dicom__qr_ae_titles=[SCU], dicom__move_destinations=[f"DEST@127.0.0.1:{dest_port}"])
    load_kit(data_dir, objects)
    print(f"qr: {len(objects)} instances ({n} small, 1 cine of {int(cine.NumberOfFrames)} frames) "
          f"into the kit in {time.perf_counter() - t0:.0f}s")
    kit = orthanc = dest = None
    try:
        dest = subprocess.Popen(["storescp", "--ignore", "+xa", "-aet", "DEST", str(dest_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(dest_port)
        orthanc = start_orthanc(work / "orthanc", extra={
            "DicomModalities": {"bench": [SCU, "127.0.0.1", free_port()], "dest": ["DEST", "127.0.0.1", dest_port]},
            "DicomCheckCalledAet": False})
        t0 = time.perf_counter()
        load_orthanc(orthanc, objects)
        print(f"qr: the same into Orthanc in {time.perf_counter() - t0:.0f}s")
        kit = KitProcess(data_dir).start()
        servers = (("kit", kit.dicom_port, "FIELDKIT"), ("Orthanc", orthanc.dicom_port, "HOSPITAL"))
        studies = n // 10 + 1
        filtered = study_query(PatientName="BENCH^P01*", StudyDate="20240301-20240630")
        cases = {
            f"C-FIND study level, all {studies} studies": (lambda p, c: find(p, c, study_query()), studies),
            "C-FIND study level, PatientName=BENCH^P01* and a date range": (lambda p, c: find(p, c, filtered), None),
            f"C-MOVE of the {int(cine.NumberOfFrames)}-frame cine": (
                lambda p, c: move(p, c, cine.StudyInstanceUID, cine.SOPInstanceUID), 1),
        }
        for label, (run, expect) in cases.items():
            times: dict[str, list[float]] = {s: [] for s, _, _ in servers}
            counts = {}
            for i in range(repeats + 1):  # the first of each warms up, not counted
                for server, port, called in servers:
                    seconds, count, final = run(port, called)
                    if final != 0:
                        raise RuntimeError(f"{label}: {server} ended with status {final:#06x}")
                    counts[server] = count
                    if i:
                        times[server].append(seconds)
            if len(set(counts.values())) != 1 or (expect is not None and counts["kit"] != expect):
                raise RuntimeError(f"{label}: answers differ {counts} (expected {expect})")
            med = {s: statistics.median(t) for s, t in times.items()}
            print(f"{label} ({counts['kit']} answers), median of {repeats}: "
                  + ", ".join(f"{s} {m * 1000:.1f} ms" for s, m in med.items()))
            print(f"ratio {label} rate kit/orthanc = {med['Orthanc'] / med['kit']:.2f} (target >= 1.0)")
    finally:
        for proc in (kit, orthanc):
            if proc is not None:
                proc.stop()
        if dest is not None:
            dest.terminate()
            dest.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qr-") as tmp:
        bench(Path(tmp), args.instances, args.repeats)


if __name__ == "__main__":
    main()

"""Frames benchmark (measured, never asserted): WADO-RS frames of the SonoSite JPEG cine
(30 frames, 640x480 YBR) from a running kit, as OHIF asks for them
(`transfer-syntax=*`: the stored JPEG frames, untouched) against the decoded pixels
(`transfer-syntax=1.2.840.10008.1.2.1`: what every such request got before). Printed:
median ms per one-frame request and bytes per frame for both, and their ratios, measured
side by side in the same run. Then, in process on a generated 40-frame cine of about 6 MiB
(six sealed chunks), one frame read through the frame index against the whole instance
decrypted and split (what every frames request did before the index).

    python tests/bench/bench_frames.py [--runs 30]
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

import pydicom  # noqa: E402
import requests  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from fixtures.dcmtk import pydicom_file  # noqa: E402
from kitproc import KitProcess, dataset_bytes, init_kit  # noqa: E402

ACCEPTS = {
    "stored (transfer-syntax=*)": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "decoded (explicit VR LE)": 'multipart/related; type="application/octet-stream"; '
                                'transfer-syntax=1.2.840.10008.1.2.1',
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kit = KitProcess(init_kit(Path(tmp) / "kit")).start()
        try:
            ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            http = requests.Session()
            http.verify, http.trust_env = kit.ca, False
            http.headers["Authorization"] = f"Bearer {kit.token('dicomweb-client')}"
            boundary = "bench"
            body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(ds)
                    + f"\r\n--{boundary}--\r\n".encode())
            r = http.post(f"{kit.url}/dicom-web/studies", data=body, timeout=60, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
            assert r.status_code == 200, r.text[:200]
            base = (f"{kit.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}/frames/")
            ms = {k: [] for k in ACCEPTS}
            size = {k: [] for k in ACCEPTS}
            for run in range(args.runs):
                frame = run % 30 + 1
                for label, accept in (ACCEPTS.items() if run % 2 else reversed(ACCEPTS.items())):  # interleaved, alternating first
                    t0 = time.perf_counter()
                    r = http.get(base + str(frame), headers={"Accept": accept}, timeout=60)
                    ms[label].append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                    size[label].append(len(r.content))
            med = {k: statistics.median(v) for k, v in ms.items()}
            by = {k: statistics.median(v) for k, v in size.items()}
            for label in ACCEPTS:
                print(f"{label:28s} {med[label]:7.1f} ms/frame  {by[label] / 1024:7.1f} KiB/frame")
            stored, decoded = ACCEPTS
            print(f"decoded/stored: {med[decoded] / med[stored]:.1f}x the time, {by[decoded] / by[stored]:.1f}x the bytes")
        finally:
            kit.stop()
        index_bench(Path(tmp) / "index", args.runs)


def index_bench(data_dir: Path, runs: int) -> None:
    import io
    import os

    from pydicom.encaps import encapsulate, generate_frames

    from fieldkit.dicom.frame_index import frame_spans
    from fieldkit.kit import open_kit
    from kitproc import init_kit as init

    kit = open_kit(init(data_dir))
    try:
        ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
        frames = [b"\xff\xd8" + os.urandom(150_000) + b"\xff\xd9" for _ in range(40)]
        ds.NumberOfFrames, ds.PixelData = 40, encapsulate(frames)
        data = dataset_bytes(ds)
        ref = kit.store.blobs.put_bytes(data)
        with kit.store.blobs.open(ref.addr, ref.size) as fh:
            spans = frame_spans(fh, 40)
        whole, indexed = [], []
        for run in range(runs):
            k = run % 40
            t0 = time.perf_counter()
            got = list(generate_frames(pydicom.dcmread(io.BytesIO(kit.store.blobs.get_bytes(ref.addr))).PixelData,
                                       number_of_frames=40))[k]
            whole.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            with kit.store.blobs.open(ref.addr, ref.size) as fh:
                fh.seek(spans[k][0][0])
                one = fh.read(spans[k][0][1])
            indexed.append((time.perf_counter() - t0) * 1000)
            assert one == got
        w, i = statistics.median(whole), statistics.median(indexed)
        print(f"one frame of a {len(data) / 2**20:.1f} MiB cine: whole instance {w:.1f} ms, "
              f"frame index {i:.1f} ms (whole/index {w / i:.1f}x)")
    finally:
        kit.close()


if __name__ == "__main__":
    main()

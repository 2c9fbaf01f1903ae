"""DICOMweb viewer-session benchmark (measured, never asserted): the requests an OHIF-style
viewer makes (study list, each study's series and series metadata, then every frame of
every image with OHIF's `Accept: multipart/related; type="application/octet-stream";
transfer-syntax=*`), replayed against a running kit and a real Orthanc (DICOMweb plugin,
HTTP compression on) holding the same instances, both asked with `Accept-Encoding: gzip`.
Printed: bytes on the wire per kind of request and in all, session time, and frames/s of
the 30-frame SonoSite cine, each as kit/Orthanc, measured side by side in the same run
(sessions alternate which server goes first).

    python tests/bench/bench_web.py [--sessions 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
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
from fixtures.orthanc import start_orthanc  # noqa: E402
from kitproc import KitProcess, dataset_bytes, init_kit, set_config  # noqa: E402

FILES = ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm")
JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


def _stow(http: requests.Session, root: str, datasets) -> None:
    boundary = "bench-web"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(d) + b"\r\n"
                    for d in datasets) + f"--{boundary}--\r\n".encode()
    r = http.post(f"{root}/studies", data=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text[:300]


def _get(http, url, headers, tally, kind) -> bytes:
    r = http.get(url, headers={**headers, "Accept-Encoding": "gzip"}, timeout=120, stream=True)
    assert r.status_code == 200, (url, r.status_code)
    wire = r.raw.read(decode_content=False)
    tally[kind] = tally.get(kind, 0) + len(wire)
    return gzip.decompress(wire) if r.headers.get("Content-Encoding") == "gzip" else wire


def session(http, root, studies) -> tuple[dict, float, float]:
    """One viewer session: (bytes per kind, seconds in all, seconds for the cine's frames)."""
    tally: dict = {}
    t0 = time.perf_counter()
    _get(http, f"{root}/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060",
         JSON, tally, "study list")
    cine_s = 0.0
    for study in studies:
        series = json.loads(_get(http, f"{root}/studies/{study}/series?includefield=0008103E,00080021",
                                 JSON, tally, "series list"))
        for s in series:
            uid = s["0020000E"]["Value"][0]
            meta = json.loads(_get(http, f"{root}/studies/{study}/series/{uid}/metadata", JSON, tally, "metadata"))
            for item in meta:
                sop = item["00080018"]["Value"][0]
                if "00280010" not in item:  # not an image: a viewer asks for no frames
                    continue
                n = int((item.get("00280008") or {}).get("Value", [1])[0])
                t1 = time.perf_counter()
                for frame in range(1, n + 1):
                    _get(http, f"{root}/studies/{study}/series/{uid}/instances/{sop}/frames/{frame}",
                         FRAMES, tally, "frames")
                if n > 1:
                    cine_s += time.perf_counter() - t1
    return tally, time.perf_counter() - t0, cine_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=5)
    args = ap.parse_args()
    datasets = []
    for name in FILES:
        ds = pydicom.dcmread(pydicom_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    studies = [d.StudyInstanceUID for d in datasets]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = init_kit(Path(tmp) / "kit")
        # both servers hold the same three instances: no AI report added to the kit's studies
        set_config(data_dir, **{"inference.enabled": False})
        kit = KitProcess(data_dir).start()
        orthanc = start_orthanc(Path(tmp) / "orthanc")
        try:
            kit_http = requests.Session()
            kit_http.verify, kit_http.trust_env = kit.ca, False
            kit_http.headers["Authorization"] = f"Bearer {kit.token('dicomweb-client')}"
            orthanc_http = requests.Session()
            orthanc_http.trust_env = False
            servers = {"kit": (kit_http, f"{kit.url}/dicom-web"), "orthanc": (orthanc_http, orthanc.base_url)}
            for http, root in servers.values():
                _stow(http, root, datasets)
            results = {name: [] for name in servers}
            for run in range(args.sessions):
                order = list(servers) if run % 2 else list(reversed(servers))
                for name in order:
                    results[name].append(session(*servers[name], studies))
            kinds = ["study list", "series list", "metadata", "frames"]
            print(f"{'bytes on the wire':18s} {'kit':>10s} {'orthanc':>10s} {'kit/orthanc':>12s}")
            tallies = {n: v[0][0] for n, v in results.items()}  # the same bytes every session
            for kind in kinds + ["all"]:
                got = {n: (sum(t.values()) if kind == "all" else t.get(kind, 0)) for n, t in tallies.items()}
                print(f"{kind:18s} {got['kit']:10d} {got['orthanc']:10d} {got['kit'] / max(1, got['orthanc']):12.2f}")
            secs = {n: statistics.median(r[1] for r in v) for n, v in results.items()}
            cine = {n: statistics.median(r[2] for r in v) for n, v in results.items()}
            fps = {n: 30 / cine[n] for n in cine}
            print(f"session time (median of {args.sessions}): kit {secs['kit'] * 1000:.0f} ms, "
                  f"orthanc {secs['orthanc'] * 1000:.0f} ms, kit/orthanc {secs['kit'] / secs['orthanc']:.2f}")
            print(f"cine frames/s (OHIF Accept, one frame a request): kit {fps['kit']:.0f}, "
                  f"orthanc {fps['orthanc']:.0f}, kit/orthanc {fps['kit'] / fps['orthanc']:.2f}")
        finally:
            orthanc.stop()
            kit.stop()


if __name__ == "__main__":
    main()

"""DICOMweb viewer-session benchmark (measured, never asserted): the request sequence OHIF v3
makes, recorded in `tests/data/ohif_session.json` (study lists with filters, each study's
series, series metadata and thumbnail, the palette LUT's bulk data, then every frame of
every image with OHIF's `Accept: multipart/related; type=application/octet-stream;
transfer-syntax=*`), replayed by `tests/ohif_session.py` against a running kit and a real
Orthanc (DICOMweb plugin, HTTP compression on) holding the same instances, both asked with
a browser's `Accept-Encoding: gzip, deflate`. Printed: bytes on the wire per kind of
request and in all, session time, and frames/s of the 30-frame SonoSite cine, each as
kit/Orthanc, measured side by side in the same run (sessions alternate which server goes
first). A request one server does not answer with 200 is counted apart, not in the bytes.

    python tests/bench/bench_web.py [--sessions 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pydicom  # noqa: E402
import requests  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from fixtures.dcmtk import pydicom_file  # noqa: E402
from fixtures.orthanc import start_orthanc  # noqa: E402
from kitproc import KitProcess, dataset_bytes, init_kit, set_config  # noqa: E402
from ohif_session import replay, requests_of_session  # noqa: E402

FILES = ("examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm")


def _stow(http: requests.Session, root: str, datasets) -> None:
    boundary = "bench-web"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset_bytes(d) + b"\r\n"
                    for d in datasets) + f"--{boundary}--\r\n".encode()
    r = http.post(f"{root}/studies", data=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text[:300]


def session(http, root, studies, filters) -> tuple[dict, dict, float, float]:
    """One viewer session: (bytes per kind, requests not answered 200 per kind, seconds in
    all, seconds for the cine's frames)."""
    exchanges = replay(http, root, studies, filters)
    tally, failed = {}, {}
    for ex in exchanges:
        kind = ex.request["kind"]
        if ex.reply.status == 200:
            tally[kind] = tally.get(kind, 0) + len(ex.reply.wire)
        else:
            failed[kind] = failed.get(kind, 0) + 1
    cine = [ex for ex in exchanges if ex.request["kind"] == "frames" and ex.about["study"] == studies[0]]
    return tally, failed, sum(ex.seconds for ex in exchanges), sum(ex.seconds for ex in cine)


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
    first = datasets[0]
    filters = {"patient_name": str(first.PatientName).split("^")[0], "study_date": first.StudyDate,
               "modality": first.Modality}
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
                    results[name].append(session(*servers[name], studies, filters))
            kinds = list(dict.fromkeys(r["kind"] for r in requests_of_session()))
            tallies = {n: v[-1][0] for n, v in results.items()}  # the same bytes every session
            print(f"{'bytes on the wire':18s} {'kit':>10s} {'orthanc':>10s} {'kit/orthanc':>12s}")
            both = [k for k in kinds if all(k in t for t in tallies.values())]
            for kind in kinds + ["all", "all both answer"]:
                got = {n: (sum(t.values()) if kind == "all" else sum(t.get(k, 0) for k in both)
                           if kind == "all both answer" else t.get(kind, 0)) for n, t in tallies.items()}
                print(f"{kind:18s} {got['kit']:10d} {got['orthanc']:10d} {got['kit'] / max(1, got['orthanc']):12.2f}")
            for name, v in results.items():
                if v[-1][1]:
                    print(f"not answered 200 by {name}: {v[-1][1]}")
            secs = {n: statistics.median(r[2] for r in v) for n, v in results.items()}
            cine = {n: statistics.median(r[3] for r in v) for n, v in results.items()}
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

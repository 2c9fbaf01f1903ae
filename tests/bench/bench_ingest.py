"""Ingest benchmark: the kit against a real Orthanc (with DICOMweb), side by side.

- storescu of a 300-instance ultrasound corpus (mostly single-frame RGB, some 30-frame
  JPEG cines, fresh UIDs) into a running `fieldkit serve` and into Orthanc: instances/s;
- STOW-RS of a second copy of the corpus (fresh UIDs) with dicomweb-client, in requests of
  10 instances: instances/s, and where a kit request's time goes (the kit's Server-Timing
  header: storing the parts, reading the body, the durable commit; the rest is the client
  and the HTTP exchange);
- the ceiling: the same client against the kit's server stack (TLS included) with a route
  that only reads the body, and what a 1.5x ratio would leave per instance for the kit;
- the kit's peak RSS during the run (VmHWM).

Run: python tests/bench/bench_ingest.py [--instances N]. Prints ratio lines; asserts nothing.
The corpus is synthetic test data written to a temp dir.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pydicom  # noqa: E402
import requests  # noqa: E402
from dicomweb_client.api import DICOMwebClient  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from fixtures.orthanc import start_orthanc  # noqa: E402
from kitproc import KitProcess, init_kit  # noqa: E402


def make_corpus(directory: Path, n: int, cine_every: int = 10) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rgb = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    cine = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    paths = []
    study = None
    for i in range(n):
        ds = cine if i % cine_every == cine_every - 1 else rgb
        if i % 20 == 0:  # 20 captures per study, a new patient each
            study, series, pid = generate_uid(), generate_uid(), f"BENCH{i // 20:03d}"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, pid
        ds.InstanceNumber = i + 1
        path = directory / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, aec: str, paths: list[Path]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["storescu", "-xy", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr[-2000:]}")
    return elapsed


def stow(client: DICOMwebClient, paths: list[Path], batch: int = 10, session: requests.Session | None = None,
         spent: list | None = None) -> float:
    """STOW-RS the files in requests of `batch`; with the client's `session` and `spent`,
    one dict per request: its wall time and the kit's Server-Timing entries (ms)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    timings: list[dict] = []
    if spent is not None:
        session.hooks["response"].append(lambda r, *a, **k: timings.append(
            {k: float(v) for k, v in (i.split(";dur=") for i in r.headers.get("Server-Timing", "").split(", ") if i)}))
    start = time.perf_counter()
    for i in range(0, len(datasets), batch):
        begun = time.perf_counter()
        client.store_instances(datasets[i:i + batch])
        if spent is not None and timings:
            spent.append({**timings[-1], "wall": (time.perf_counter() - begun) * 1000})
    return time.perf_counter() - start


def stow_breakdown(spent: list[dict]) -> str:
    med = {k: statistics.median(s[k] for s in spent) for k in ("wall", "parts", "body", "commit")}
    outside = med["wall"] - med["parts"] - med["body"] - med["commit"]
    return (f"kit STOW request (median of {len(spent)}): {med['wall']:.1f} ms = parts {med['parts']:.1f} + "
            f"body {med['body']:.1f} + commit {med['commit']:.1f} + outside the kit's handler {outside:.1f}")


def ceiling_stow(data_dir: Path, ca: str, paths: list[Path]) -> float:
    """The same client against a server that does nothing but read the body: the kit's
    server stack (cheroot, Flask, the kit's TLS adapter and certificate) with one route
    that reads the request and answers `{}`. What is left of Orthanc's time after this is
    the budget for everything the kit does with the parts."""
    import socket
    import threading

    from cheroot import wsgi
    from flask import Flask, Response, request

    from fieldkit.kit import unlock_data_key
    from fieldkit.kit.serve import _tls_adapter
    from fieldkit.security.secrets import SecretBox
    from fieldkit.security.tls import SERVER_CERT, TLS_DIR, server_key_path

    app = Flask("ceiling")

    @app.post("/dicom-web/studies")
    def studies():
        for _ in iter(lambda: request.stream.read(1 << 20), b""):
            pass
        return Response("{}", content_type="application/dicom+json")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = wsgi.Server(("127.0.0.1", port), app, numthreads=4)
    tls = data_dir / TLS_DIR
    with server_key_path(data_dir, SecretBox(unlock_data_key(data_dir))) as key:  # sealed by the data key
        server.ssl_adapter = _tls_adapter(str(tls / SERVER_CERT), key)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        session = requests.Session()
        session.verify, session.trust_env = ca, False
        return stow(DICOMwebClient(f"https://127.0.0.1:{port}/dicom-web", session=session), paths)
    finally:
        server.stop()
        thread.join(10)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--no-workers", action="store_true",
                    help="turn the inference and sync workers off (ingest alone)")
    args = ap.parse_args()
    n = args.instances
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    kit = orthanc = None
    try:
        dimse_corpus = make_corpus(work / "dimse", n)
        stow_kit = make_corpus(work / "stow-kit", n)
        stow_orthanc = make_corpus(work / "stow-orthanc", n)
        size_mb = sum(p.stat().st_size for p in dimse_corpus) / 1e6
        print(f"corpus: {n} instances, {size_mb:.0f} MB ({n // 10} 30-frame JPEG cines)")

        data_dir = init_kit(work / "kit")
        if args.no_workers:  # ingest alone: no inference or sync competing for the 2 cores
            toml = data_dir / "fieldkit.toml"
            text = toml.read_text().replace("enabled = true", "enabled = false")
            toml.write_text(text)
        kit = KitProcess(data_dir).start()
        orthanc = start_orthanc(work / "orthanc", extra={"DicomAlwaysAllowStore": True,
                                                         "DicomAlwaysAllowEcho": True,
                                                         "DicomCheckCalledAet": False})

        t_kit = storescu(kit.dicom_port, "FIELDKIT", dimse_corpus)
        t_orthanc = storescu(orthanc.dicom_port, "HOSPITAL", dimse_corpus)
        assert orthanc.instance_count() == n
        print(f"storescu: kit {n / t_kit:.1f} inst/s, Orthanc {n / t_orthanc:.1f} inst/s")
        print(f"ratio storescu kit/orthanc = {t_orthanc / t_kit:.2f} (target >= 2.0)")

        session = requests.Session()
        session.verify, session.trust_env = kit.ca, False
        token = kit.token("dicomweb-client")
        kit_client = DICOMwebClient(f"{kit.url}/dicom-web", session=session,
                                    headers={"Authorization": f"Bearer {token}"})
        plain = requests.Session()
        plain.trust_env = False
        orthanc_client = DICOMwebClient(orthanc.base_url, session=plain)
        spent: list[dict] = []
        t_kit_stow = stow(kit_client, stow_kit, session=session, spent=spent)
        t_orthanc_stow = stow(orthanc_client, stow_orthanc)
        print(f"STOW-RS: kit {n / t_kit_stow:.1f} inst/s, Orthanc {n / t_orthanc_stow:.1f} inst/s")
        print(stow_breakdown(spent))
        print(f"Orthanc STOW request: {t_orthanc_stow / (n / 10) * 1000:.1f} ms")
        print(f"ratio stow kit/orthanc = {t_orthanc_stow / t_kit_stow:.2f} (target >= 1.5)")
        t_ceiling = ceiling_stow(data_dir, kit.ca, stow_kit)
        print(f"ceiling: a TLS server of the kit's stack that only reads the body: "
              f"{t_ceiling / (n / 10) * 1000:.1f} ms/request, {t_orthanc_stow / t_ceiling:.2f}x Orthanc; "
              f"a 1.5x kit has {(t_orthanc_stow / 1.5 - t_ceiling) / n * 1000:.2f} ms per instance for its work")
        rss = peak_rss_mb(kit.proc.pid)
        print(f"kit peak RSS = {rss:.0f} MB (target <= 300)")
    finally:
        if kit is not None:
            kit.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Read benchmark (measured, never asserted): what reads cost as the catalogue grows.

A kit is grown to 1 000, 10 000 and 100 000 instance rows (10 captures per patient, one
study each). Up to --real rows are small generated images stored through the catalogue
API (instances.Batch: parse, preview, encrypted blobs, one journal record per patient);
beyond that, rows are copies of those real rows under new UIDs and new patients, written
through store.write with their infer and sync jobs (storing 90 000 more images one by one
would take most of an hour on the reference box; the copies share the real rows' blobs,
which no read below opens). Then, in-process through the Flask app (a bearer token, no
socket): QIDO one study's instances, a study search with a filter (PatientID, answered by
the index; and StudyDate, which is not indexed), /api/v1/status, and
instances.instance_rows(patient_id=...). Printed: p50/p95 per size, the 100 000 / 1 000
ratio, and the RSS of a fresh process that opened the store (`--rss`).

With --orthanc, the same QIDO queries against a real Orthanc holding the same real
instances (only the real ones: up to --real), as kit / Orthanc.

    python tests/bench/bench_reads.py [--sizes 1000,10000,100000] [--real 10000] [--orthanc]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BASE = "https://localhost"
RUNS = 40


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def copy_rows(store, templates: list[dict], count: int, start: int) -> None:
    """`count` more rows, copies of real ones under new UIDs, 10 per new patient."""
    from pydicom.uid import generate_uid

    from fieldkit.records import KIND_INFER, KIND_SYNC, PRIORITY_NORMAL, T_INSTANCES, T_PATIENTS, sync_priority
    from fieldkit.store import patients

    def chunk(n0: int, n: int):
        def fn(db):
            for p in range(n0, n0 + n, 10):
                pid = f"C-{start + p:06d}"
                db.table(T_PATIENTS).insert(patients.make_row(pid, name=f"Copy^{pid}"))
                study, series = generate_uid(), generate_uid()
                for i in range(10):
                    row = dict(templates[(p + i) % len(templates)], sop_instance_uid=generate_uid(),
                               study_instance_uid=study, series_instance_uid=series, patient_id=pid,
                               instance_number=str(i + 1), received_at=time.time(), conflicts=[])
                    db.table(T_INSTANCES).insert(row)
                    uid = row["sop_instance_uid"]
                    store.queue.enqueue(KIND_INFER, {"sop_instance_uid": uid}, priority=PRIORITY_NORMAL, key=uid)
                    store.queue.enqueue(KIND_SYNC, {"sop_instance_uid": uid},
                                        priority=sync_priority("none", "image"), key=uid)
        store.write(fn)

    for n0 in range(0, count, 1000):
        chunk(n0, min(1000, count - n0))


def drain(store, kind: str) -> None:
    """Lease and acknowledge every row of `kind` (a kit that kept up), 500 per record."""
    while True:
        def fn(db):
            n = 0
            while n < 500:
                row = store.queue.lease(kind)
                if row is None:
                    break
                store.queue.ack(row.id)
                n += 1
            return n
        if not store.write(fn):
            return


def timed(fn, runs: int = RUNS) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(kit, tokens: dict[str, str], rng: random.Random) -> dict[str, list[float]]:
    from fieldkit.store import instances
    from fieldkit.web import create_app

    app = create_app(kit, testing=True)
    client = app.test_client()
    studies = kit.store.read(lambda db: db.storage.values("instances", "study_instance_uid"))
    pids = kit.store.read(lambda db: db.storage.values("instances", "patient_id"))

    def get(path):
        token = tokens["sync" if path.startswith("/api/") else "dicomweb-client"]  # (status.read)
        r = client.get(path, base_url=BASE, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, (path, r.status_code, r.data[:200])
        return r

    return {
        "QIDO one study (instances)": timed(lambda: get(f"/dicom-web/studies/{rng.choice(studies)}/instances")),
        "QIDO studies?PatientID=": timed(lambda: get(f"/dicom-web/studies?PatientID={rng.choice(pids)}")),
        "QIDO studies?StudyDate=&limit=20": timed(lambda: get("/dicom-web/studies?StudyDate=20261204&limit=20")),
        "/api/v1/status": timed(lambda: get("/api/v1/status")),
        "instance_rows(patient_id)": timed(lambda: instances.instance_rows(kit.store, patient_id=rng.choice(pids))),
    }


def orthanc_times(orthanc, kit, rng: random.Random) -> dict[str, list[float]]:
    import requests
    s = requests.Session()
    s.auth = orthanc.auth
    studies = kit.store.read(lambda db: db.storage.values("instances", "study_instance_uid"))
    pids = kit.store.read(lambda db: db.storage.values("instances", "patient_id"))
    real = [u for u in studies if s.get(f"{orthanc.base_url}/studies", params={"StudyInstanceUID": u}).json()]
    real_pids = list({r["patient_id"] for u in real[:200] for r in
                      __import__("fieldkit.store.instances", fromlist=["x"]).instance_rows(kit.store, study_uid=u)})
    assert real and real_pids and pids

    def get(path, **params):
        r = s.get(orthanc.base_url + path, params=params, headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200, (path, r.status_code)

    return {
        "QIDO one study (instances)": timed(lambda: get(f"/studies/{rng.choice(real)}/instances")),
        "QIDO studies?PatientID=": timed(lambda: get("/studies", PatientID=rng.choice(real_pids))),
        "QIDO studies?StudyDate=&limit=20": timed(lambda: get("/studies", StudyDate="20261204", limit=20)),
    }


def load_orthanc(orthanc, kit, have: set) -> None:
    """Send the kit's real instances (as stored, kit identity stamped) to Orthanc."""
    import requests

    from fieldkit.store import instances
    s = requests.Session()
    s.auth = orthanc.auth
    rows = instances.instance_rows(kit.store, match=lambda r, p: not r["patient_id"].startswith("C-"))
    for r in rows:
        if r["sop_instance_uid"] in have:
            continue
        data = kit.store.blobs.get_bytes(r["blob"])
        s.post(f"{orthanc.rest_url}/instances", data=data).raise_for_status()
        have.add(r["sop_instance_uid"])


def child_rss(data_dir: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss", str(data_dir)], capture_output=True, text=True,
                         timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--real", type=int, default=10000)
    ap.add_argument("--orthanc", action="store_true")
    ap.add_argument("--drain", action="store_true", help="acknowledge every job before measuring")
    ap.add_argument("--rss")
    args = ap.parse_args()
    if args.rss:  # child: RSS of a process that opened the store and answered one status
        from fieldkit.kit import open_kit
        before = rss_mb()
        kit = open_kit(Path(args.rss))
        kit.status()
        print(f"{before:.0f}")
        print(f"{rss_mb():.0f}")
        kit.close()
        return

    from fieldkit.kit import open_kit
    from fieldkit.store import accounts, instances
    from fixtures.catalogue import grow
    from kitproc import init_kit

    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(1)
    results: dict[int, dict[str, list[float]]] = {}
    orthanc_results: dict[int, dict[str, list[float]]] = {}
    rss: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        tmp = Path(tmp)
        data_dir = init_kit(tmp / "kit")
        kit = open_kit(data_dir)
        tokens = {role: accounts.create_token(kit.store, role) for role in ("sync", "dicomweb-client")}
        orthanc = None
        if args.orthanc:
            from fixtures.orthanc import start_orthanc
            orthanc = start_orthanc(tmp / "orthanc")
        sent: set = set()
        templates: list[dict] = []
        have = 0
        try:
            for size in sizes:
                t0 = time.perf_counter()
                real = min(size, args.real) - min(have, args.real)
                if real > 0:
                    grow(kit.store, real // 10, prefix=f"R{have}-")
                    have += real
                if size > have:
                    if not templates:
                        templates = instances.instance_rows(kit.store, limit=1000)
                    copy_rows(kit.store, templates, size - have, have)
                    have = size
                if args.drain:
                    drain(kit.store, "infer")
                    drain(kit.store, "sync")
                print(f"grown to {have} instance rows in {time.perf_counter() - t0:.0f} s", flush=True)
                results[size] = measure(kit, tokens, rng)
                if orthanc is not None and size <= args.real:
                    load_orthanc(orthanc, kit, sent)
                    orthanc_results[size] = orthanc_times(orthanc, kit, rng)
                kit.close()
                rss[size] = child_rss(data_dir)
                kit = open_kit(data_dir)
                for name, values in results[size].items():
                    print(f"  {size:>6}  {name:34} p50 {statistics.median(values) * 1000:8.2f} ms"
                          f"  p95 {pct(values, 0.95) * 1000:8.2f} ms", flush=True)
                print(f"  {size:>6}  RSS of a process that opened the store: {rss[size]:.0f} MB", flush=True)
        finally:
            kit.close()
            if orthanc is not None:
                orthanc.stop()

    lo, hi = sizes[0], sizes[-1]
    print(f"\nratios {hi} / {lo} rows (p50, p95):")
    for name in results[lo]:
        a, b = results[lo][name], results[hi][name]
        print(f"  {name:34} p50 x{statistics.median(b) / statistics.median(a):6.2f}   p95 x{pct(b, 0.95) / pct(a, 0.95):6.2f}")
    for size, times in orthanc_results.items():
        print(f"\nkit / Orthanc at {size} instances (p50, p95; below 1.0 the kit is faster):")
        for name, values in times.items():
            kit_values = results[size][name]
            print(f"  {name:34} p50 {statistics.median(kit_values) / statistics.median(values):6.2f}"
                  f"   p95 {pct(kit_values, 0.95) / pct(values, 0.95):6.2f}")
    print("\nRSS (MB): " + ", ".join(f"{s}: {rss[s]:.0f}" for s in sizes))


if __name__ == "__main__":
    main()

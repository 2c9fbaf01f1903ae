"""Tablet UI benchmark (measured, never asserted): twenty simulated tablets on one kit.

Each tablet signs in, holds the live-update stream open and browses for the run: the
board page and its JSON, a patient page and its JSON, a thumbnail, and /healthz, in a
loop with a short think time. Meanwhile dcmtk's storescu pushes cines (the 30-frame
SonoSite clip) to patients on the board, so the inference worker and the receiver are
busy too. Printed: p50/p95 latency of pages and API calls as a ratio to /healthz measured
by the same tablets in the same run, errors, and live events each tablet saw.

    python tests/bench/bench_ui.py [--tablets 20] [--seconds 30] [--pushes 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import requests  # noqa: E402

from fixtures.ui import capture_file, push, start_ui_kit  # noqa: E402
from test_ui_live import Stream, _signed_in  # noqa: E402


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tablets", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--pushes", type=int, default=6)
    args = ap.parse_args()

    def config(data_dir):
        from fieldkit.cli.sync import _load_values, _save_values
        values = _load_values(data_dir)
        # every tablet holds a stream (one server thread each) and still needs threads to browse
        values.update({"http.threads": args.tablets + 12,
                       # the simulated tablets all connect from one loopback address
                       "http.max_connections_per_address": 4 * args.tablets + 32})
        _save_values(data_dir, values)

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        tmp = Path(tmp)
        kit = start_ui_kit(tmp, before_serve=config)
        try:
            run(kit, tmp, args)
        finally:
            kit.stop()


def run(kit, tmp: Path, args) -> None:
    admin = _signed_in(kit)
    tags = [f"B-{i:03d}" for i in range(12)]
    for i, tag in enumerate(tags):
        r = admin.post(kit.url + "/api/v1/ui/patients", json={"tag": tag, "triage": ("red", "yellow", "green")[i % 3]},
                       timeout=30)
        r.raise_for_status()
    push(kit, capture_file(tmp, patient_id=tags[0], name="warm.dcm"))  # one capture before the run

    lat: dict[str, list[float]] = {"page": [], "api": [], "healthz": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    streams: list[Stream] = []
    thumb_uid: list[str] = []
    deadline_wait = time.monotonic() + 30
    while not thumb_uid and time.monotonic() < deadline_wait:
        caps = admin.get(kit.url + f"/api/v1/ui/patients/{tags[0]}", timeout=30).json()["captures"]
        thumb_uid = [c["uid"] for c in caps if c["has_thumbnail"]]
        time.sleep(0.2)

    def tablet(n: int) -> None:
        try:
            s = _signed_in(kit)
        except Exception as exc:
            with lock:
                errors.append(f"tablet {n} sign-in: {exc}")
            return
        st = Stream(s, kit.url)
        with lock:
            streams.append(st)
            if st.resp.status_code != 200:
                errors.append(f"tablet {n} live stream: HTTP {st.resp.status_code}")
        i = n
        while not stop.is_set():
            tag = tags[i % len(tags)]
            i += 1
            plan = [("page", "/"), ("api", "/api/v1/ui/board"), ("healthz", "/healthz"),
                    ("page", f"/patients/{tag}"), ("api", f"/api/v1/ui/patients/{tag}"), ("healthz", "/healthz")]
            if thumb_uid:
                plan.append(("api", f"/api/v1/ui/instances/{thumb_uid[0]}/thumbnail.jpg"))
            for kind, path in plan:
                if stop.is_set():
                    break
                t0 = time.perf_counter()
                try:
                    r = s.get(kit.url + path, timeout=30, headers={"Accept": "text/html" if kind == "page" else "*/*"})
                    ok = r.status_code == 200
                    detail = f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    ok, detail = False, type(exc).__name__
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat[kind].append(dt)
                    else:
                        errors.append(f"{path}: {detail}")
                stop.wait(0.2)  # think time
        st.resp.close()

    def pusher() -> None:
        gap = args.seconds / (args.pushes + 1)
        for k in range(args.pushes):
            if stop.wait(gap):
                return
            try:
                push(kit, capture_file(tmp, patient_id=tags[(k + 1) % len(tags)], name=f"p{k}.dcm"))
            except AssertionError as exc:
                with lock:
                    errors.append(f"storescu: {str(exc)[:200]}")

    threads = [threading.Thread(target=tablet, args=(n,), daemon=True) for n in range(args.tablets)]
    threads.append(threading.Thread(target=pusher, daemon=True))
    t_start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(60)
    wall = time.monotonic() - t_start

    held = sum(1 for st in streams if st.resp.status_code == 200)
    seen = [sum(1 for e, _ in st.events if e in ("instance.stored", "finding.stored")) for st in streams
            if st.resp.status_code == 200]
    h50, h95 = pct(lat["healthz"], 0.5), pct(lat["healthz"], 0.95)
    print(f"ui bench: {args.tablets} tablets, {wall:.0f} s, {args.pushes} cines pushed by storescu during the run")
    print(f"live streams held: {held}/{args.tablets}; capture/finding events seen per tablet: "
          f"min {min(seen) if seen else 0}, median {statistics.median(seen) if seen else 0}")
    print(f"healthz: n={len(lat['healthz'])} p50 {h50 * 1000:.1f} ms p95 {h95 * 1000:.1f} ms")
    for kind in ("page", "api"):
        v = lat[kind]
        p50, p95 = pct(v, 0.5), pct(v, 0.95)
        print(f"{kind}: n={len(v)} p50 {p50 * 1000:.1f} ms p95 {p95 * 1000:.1f} ms; "
              f"ratio to healthz p50 {p50 / h50:.2f} p95 {p95 / h95:.2f}")
    print(f"errors: {len(errors)}" + (f" (first: {errors[:3]})" if errors else ""))


if __name__ == "__main__":
    main()

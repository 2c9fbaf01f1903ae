"""Board and patient page benchmark (measured, never asserted).

Grows one kit through the store API (small generated images, 10 captures per patient) to
each size in turn, and at each size measures, through the Flask app in process (no TLS,
no network: what the kit itself spends):
- the board JSON: its size, the first fetch after the kit opened (every row computed),
  then p50/p95 of fetches with rows cached, and of a fetch right after one patient changed;
- one changed row (what the live stream computes per event), p50/p95;
- the patient page JSON, p50/p95;
- for comparison, the board made the way it was before (every patient, instance and
  finding row read on every fetch), p50.
Ratios are printed between sizes (largest ÷ smallest) and against the whole-table board.

    python tests/bench/bench_board.py [--sizes 1000,10000] [--repeats 30]
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

from fixtures.board import grow  # noqa: E402
from kitproc import init_kit, run_cli  # noqa: E402
from test_ui_api import Tablet  # noqa: E402

PER_PATIENT = 10


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def whole_table_board(store) -> dict:
    """The board as it was made before (the earlier ui_api.board_data): every row of three
    tables read under the store lock on every fetch."""
    from fieldkit.records import T_FINDINGS, T_INSTANCES, T_PATIENTS, TRIAGE_CATEGORIES
    from fieldkit.store.board import public_patient, sort_key, sync_badge

    def fn(db):
        pats = [dict(p) for p in db.table(T_PATIENTS).all() if not p.get("merged_into")]
        return pats, db.table(T_INSTANCES).all(), db.table(T_FINDINGS).all()
    pats, insts, fnds = store.read(fn)
    captures, states, last, findings = {}, {}, {}, {}
    for r in insts:
        pid = r.get("patient_id")
        if str(r.get("modality") or "") != "SR":
            captures[pid] = captures.get(pid, 0) + 1
        states.setdefault(pid, []).append(str(r.get("sync_state") or "queued"))
        last[pid] = max(last.get(pid, 0.0), float(r.get("received_at") or 0))
    for f in fnds:
        if f.get("assessable"):
            findings[f.get("patient_id")] = findings.get(f.get("patient_id"), 0) + 1
    cards = []
    for p in pats:
        card = public_patient(p)
        card.update(triage=p.get("triage") if p.get("triage") in TRIAGE_CATEGORIES else "none",
                    captures=captures.get(p["id"], 0), findings=findings.get(p["id"], 0),
                    sync=sync_badge(states.get(p["id"], [])), last_capture=last.get(p["id"], 0.0),
                    identified=bool(p.get("name")))
        cards.append(card)
    cards.sort(key=sort_key)
    return {"patients": cards}


def measure(kit, app, pids: list[str], repeats: int) -> dict:
    from fieldkit.store import patients as pstore
    from fieldkit.store.board import rows_for

    t = Tablet(app, "bench", "bench password 123")
    rows_for(kit.store).__init__(kit.store)  # as after a restart: nothing cached
    t0 = time.perf_counter()
    first = t.get("/api/v1/ui/board")
    cold = (time.perf_counter() - t0) * 1000
    assert first.status_code == 200
    warm = timed(lambda: t.get("/api/v1/ui/board"), repeats)
    rows_only = timed(lambda: rows_for(kit.store).board(), repeats)  # the same, without HTTP, auth, JSON
    cats = ("red", "yellow", "green")
    n = iter(range(10 ** 9))

    def change_then_board():
        pstore.set_triage(kit.store, pids[len(pids) // 2], cats[next(n) % 3])
        t0 = time.perf_counter()
        t.get("/api/v1/ui/board")
        return (time.perf_counter() - t0) * 1000

    after_change = [change_then_board() for _ in range(repeats)]

    def change_then_row():
        pid = pids[next(n) % len(pids)]
        pstore.set_triage(kit.store, pid, cats[next(n) % 3])
        t0 = time.perf_counter()
        rows_for(kit.store).row(pid)
        return (time.perf_counter() - t0) * 1000

    one_row = [change_then_row() for _ in range(repeats)]
    patient = timed(lambda: t.get(f"/api/v1/ui/patients/{pids[next(n) % len(pids)]}"), repeats)
    before = timed(lambda: whole_table_board(kit.store), max(3, repeats // 3))
    return {"bytes": len(first.data), "cold": cold, "warm": warm, "rows_only": rows_only, "after_change": after_change, "row": one_row,
            "patient": patient, "before": before}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    from fieldkit.kit import open_kit
    from fieldkit.web import create_app

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-board-") as tmp:
        data_dir = init_kit(Path(tmp) / "kit")
        secret = Path(tmp) / ".bench"
        secret.write_text("bench password 123\n")
        run_cli("users", "add", "bench", "--data-dir", data_dir, "--role", "clinician", "--password-file", secret)
        kit = open_kit(data_dir)
        try:
            app = create_app(kit, testing=True)
            pids: list[str] = []
            for size in sizes:
                t0 = time.perf_counter()
                new = [f"B-{i:06d}" for i in range(len(pids), size // PER_PATIENT)]
                grow(kit.store, new, PER_PATIENT)
                pids += new
                print(f"grew to {size} instance rows ({len(pids)} patients) in {time.perf_counter() - t0:.0f} s",
                      flush=True)
                r = results[size] = measure(kit, app, pids, args.repeats)
                print(f"{size:>7} rows: board {r['bytes'] / 1024:.0f} KiB, first fetch {r['cold']:.0f} ms, "
                      f"p50/p95 {statistics.median(r['warm']):.1f}/{pct(r['warm'], .95):.1f} ms "
                      f"(rows alone {statistics.median(r['rows_only']):.1f}/{pct(r['rows_only'], .95):.1f}), "
                      f"after one change {statistics.median(r['after_change']):.1f}/{pct(r['after_change'], .95):.1f}"
                      f" ms; one row {statistics.median(r['row']):.2f}/{pct(r['row'], .95):.2f} ms; "
                      f"patient page {statistics.median(r['patient']):.1f}/{pct(r['patient'], .95):.1f} ms; "
                      f"whole-table board (before) {statistics.median(r['before']):.1f} ms", flush=True)
        finally:
            kit.close()

    lo, hi = sizes[0], sizes[-1]
    a, b = results[lo], results[hi]
    print(f"\nratios, {hi} rows / {lo} rows (p95 unless said):")
    for key, label in (("warm", "board"), ("rows_only", "board rows alone"), ("after_change", "board after one change"), ("row", "one changed row"),
                       ("patient", "patient page")):
        print(f"  {label:<24} {pct(b[key], .95) / pct(a[key], .95):6.2f}")
    print(f"  {'board bytes':<24} {b['bytes'] / a['bytes']:6.2f}")
    for size in sizes:
        r = results[size]
        print(f"at {size} rows: whole-table board / cached board (p50) = "
              f"{statistics.median(r['before']) / statistics.median(r['rows_only']):.1f} (rows alone), "
              f"{statistics.median(r['before']) / statistics.median(r['warm']):.2f} (HTTP fetch); "
              f"whole board / one row (p50) = {statistics.median(r['after_change']) / statistics.median(r['row']):.0f}")


if __name__ == "__main__":
    main()

"""Board under load, and offline replay (measured, never asserted).

One real `fieldkit serve` with 500 patients on the board and 20 tablets, each holding a live
board stream (`/api/v1/live?board=1`) and, for 30 s, loading in turn (1 s think time):
- /healthz: the anchor;
- the board: GET /api/v1/ui/board (all 500 cards);
- a re-triage of one of its patients: the POST answered and the new card seen on another
  tablet's live stream.
p50/p95 of each over all tablets, printed as ratios to /healthz (target: p95 at most 3.0).
Then offline replay: 100 re-triages sent as a tablet replays its queue (POST
/api/v1/offline/replay, one request) against the same 100 made online one by one (100
POSTs), alternated; medians and the ratio (target: at most 1.5).

    python tests/bench/bench_board_live.py [--patients 500] [--tablets 20] [--seconds 30] [--think 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kitproc import set_config  # noqa: E402
from fixtures.ui import start_ui_kit  # noqa: E402
from test_ui_live import _signed_in  # noqa: E402

CATS = ("red", "yellow", "green")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class BoardStream:
    """One tablet's live board stream; wait_row(pid, triage) waits for that card."""

    def __init__(self, session, url: str):
        self.resp = session.get(url + "/api/v1/live?board=1", stream=True, timeout=(10, 120))
        self.rows: dict[str, str] = {}
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.resp.status_code == 200:
            self.thread.start()

    def _read(self):
        event = None
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "board.row":
                    data = json.loads(line[6:])
                    with self.cond:
                        self.rows[data.get("id")] = ((data.get("row") or {}).get("triage"))
                        self.cond.notify_all()
                    event = None
        except Exception:
            pass

    def wait_row(self, pid: str, triage: str, timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.rows.get(pid) == triage, timeout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--tablets", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--think", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    def config(data_dir):
        set_config(data_dir, http__threads=args.tablets + 12,
                   http__max_connections_per_address=4 * args.tablets + 32, ui__live_max_streams=args.tablets + 4)

    with tempfile.TemporaryDirectory(prefix="bench-board-live-") as tmp:
        kit = start_ui_kit(Path(tmp), before_serve=config)
        try:
            run(kit, args)
        finally:
            kit.stop()


def replay_post(s, url: str, changes: list[dict]) -> None:
    r = s.post(url + "/api/v1/offline/replay", json={"changes": changes}, timeout=120)
    r.raise_for_status()
    assert all(x["status"] == "applied" for x in r.json()["results"]), r.json()


def run(kit, args) -> None:
    url = kit.url
    me = _signed_in(kit)
    pids = [f"L-{i:04d}" for i in range(args.patients)]
    now = time.time()
    for i in range(0, len(pids), 200):  # registered as a tablet replays (200 per request: the most it takes)
        replay_post(me, url, [{"id": uuid.uuid4().hex, "kind": "register", "at": now, "tag": pid,
                               "triage": CATS[k % 3]} for k, pid in enumerate(pids[i:i + 200], start=i)])
    assert me.get(url + "/api/v1/ui/board", timeout=60).json()["total"] == args.patients

    tablets = [_signed_in(kit) for _ in range(args.tablets)]
    streams = [BoardStream(s, url) for s in tablets]
    held = sum(1 for st in streams if st.resp.status_code == 200)
    watcher = next(st for st in streams if st.resp.status_code == 200)

    lat: dict[str, list[float]] = {"healthz": [], "board": [], "retriage": []}
    current = {pid: CATS[k % 3] for k, pid in enumerate(pids)}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def tablet(n: int, s) -> None:
        # each tablet: /healthz, the board, a re-triage of one of its own patients; think time
        mine = pids[n::args.tablets]
        k = 0
        while not stop.is_set():
            pid = mine[k % len(mine)]
            k += 1
            with lock:
                to = CATS[(CATS.index(current[pid]) + 1) % 3]
            for name in ("healthz", "board", "retriage"):
                t0 = time.perf_counter()
                try:
                    if name == "healthz":
                        ok = s.get(url + "/healthz", timeout=30).status_code == 200
                    elif name == "board":
                        ok = s.get(url + "/api/v1/ui/board", timeout=30).status_code == 200
                    else:  # answered, and the new card seen on another tablet's live stream
                        ok = s.post(url + f"/api/v1/ui/patients/{pid}/triage", json={"triage": to},
                                    timeout=30).status_code == 200 and watcher.wait_row(pid, to)
                except Exception as exc:
                    ok = False
                    with lock:
                        errors.append(f"{name}: {type(exc).__name__}")
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat[name].append(dt)
                        if name == "retriage":
                            current[pid] = to
                    else:
                        errors.append(name)
            stop.wait(args.think)

    threads = [threading.Thread(target=tablet, args=(n, s), daemon=True) for n, s in enumerate(tablets)]
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(60)

    h50, h95 = pct(lat["healthz"], 0.5), pct(lat["healthz"], 0.95)
    print(f"board live bench: {args.patients} patients, {held}/{args.tablets} tablets holding a live board stream "
          f"and each loading /healthz, the board and re-triaging for {args.seconds:.0f} s ({args.think} s think time); "
          f"errors: {len(errors)}")
    print(f"  /healthz p50 {h50 * 1000:.1f} ms, p95 {h95 * 1000:.1f} ms, n={len(lat['healthz'])} (anchor)")
    for name, label in (("board", f"board load ({args.patients} cards)"),
                        ("retriage", "re-triage round trip (POST answered and card seen live)")):
        v = lat[name]
        print(f"  {label}: p50 {pct(v, 0.5) * 1000:.1f} ms, p95 {pct(v, 0.95) * 1000:.1f} ms, n={len(v)}; "
              f"ratio to /healthz: p50 {pct(v, 0.5) / h50:.2f}, p95 {pct(v, 0.95) / h95:.2f} (target p95 <= 3.0)")

    batch = pids[:100]
    online, replayed = [], []
    for rnd in range(args.rounds):
        targets = {pid: CATS[(CATS.index(current[pid]) + 1) % 3] for pid in batch}
        t0 = time.perf_counter()
        for pid, to in targets.items():
            r = me.post(url + f"/api/v1/ui/patients/{pid}/triage", json={"triage": to}, timeout=30)
            assert r.status_code == 200, r.text
        online.append(time.perf_counter() - t0)
        current.update(targets)
        targets = {pid: CATS[(CATS.index(current[pid]) + 1) % 3] for pid in batch}
        changes = [{"id": uuid.uuid4().hex, "kind": "triage", "at": time.time(), "patient": pid, "triage": to,
                    "expected": current[pid]} for pid, to in targets.items()]
        t0 = time.perf_counter()
        replay_post(me, url, changes)
        replayed.append(time.perf_counter() - t0)
        current.update(targets)
    on, off = statistics.median(online), statistics.median(replayed)
    print(f"  100 re-triages online (100 requests): median {on * 1000:.0f} ms; replayed from an offline queue "
          f"(1 request): median {off * 1000:.0f} ms; ratio replay/online {off / on:.2f} (target <= 1.5), "
          f"{args.rounds} rounds")
    for st in streams:
        st.resp.close()


if __name__ == "__main__":
    main()

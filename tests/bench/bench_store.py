"""Queue benchmark: enqueue → lease → ack cycles through the kit's store versus stdlib
sqlite3 in WAL mode with synchronous=FULL (the same durability), with 1 000, 10 000 and
100 000 rows already present; plus the open time of a 100 000-row store and peak RSS.

Run: python tests/bench/bench_store.py   (part of `make bench`)
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fieldkit.config import Config  # noqa: E402
from fieldkit.security.crypto import random_key  # noqa: E402
from fieldkit.store import Store, write_format  # noqa: E402

SIZES = tuple(int(s) for s in __import__("os").environ.get("BENCH_SIZES", "1000,10000,100000").split(","))
CYCLES = 60
REPEATS = 7


def _row(i: int) -> dict:
    now = time.time()
    return {"id": uuid.uuid4().hex, "kind": "sync", "priority": 50, "state": "done", "attempts": 1,
            "next_at": now, "payload": {"sop_instance_uid": f"1.2.826.0.1.{i}"}, "last_error": "",
            "key": "", "created": now, "updated": now, "lease_until": 0.0}


def kit_store(root: Path, size: int, key: bytes) -> Store:
    root.mkdir()
    write_format(root)
    store = Store.open(root, key, Config())
    rows = [_row(i) for i in range(size)]
    store.write(lambda db: db.table("queue").insert_multiple(rows))
    store.compact()  # as a store that grew over days looks: snapshot records of 2 000 rows
    store.close()
    return Store.open(root, key, Config())


def kit_cycles(store: Store, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        store.queue.enqueue("infer", {"sop_instance_uid": f"9.{i}"}, priority=50)
        row = store.queue.lease("infer")
        store.queue.ack(row.id)
    return (time.perf_counter() - t0) / n


def sqlite_db(path: Path, size: int) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE queue (id TEXT PRIMARY KEY, kind TEXT, priority INT, state TEXT, attempts INT,"
                " next_at REAL, payload TEXT, last_error TEXT, created REAL, updated REAL, lease_until REAL)")
    con.execute("CREATE INDEX ready ON queue(kind, state, priority, next_at)")
    con.execute("BEGIN")
    con.executemany("INSERT INTO queue VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [(r["id"], r["kind"], r["priority"], r["state"], r["attempts"], r["next_at"],
                      json.dumps(r["payload"]), "", r["created"], r["updated"], 0.0)
                     for r in map(_row, range(size))])
    con.execute("COMMIT")
    return con


def sqlite_cycles(con: sqlite3.Connection, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        now = time.time()
        rid = uuid.uuid4().hex
        con.execute("INSERT INTO queue VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (rid, "infer", 50, "ready", 0, now, json.dumps({"sop_instance_uid": f"9.{i}"}), "", now, now, 0.0))
        con.execute("BEGIN IMMEDIATE")
        got = con.execute("SELECT id, attempts FROM queue WHERE kind='infer' AND state='ready' AND next_at<=? "
                          "ORDER BY priority, next_at LIMIT 1", (now,)).fetchone()
        con.execute("UPDATE queue SET state='leased', attempts=?, lease_until=?, updated=? WHERE id=?",
                    (got[1] + 1, now + 300, now, got[0]))
        con.execute("COMMIT")
        con.execute("UPDATE queue SET state='done', updated=? WHERE id=?", (time.time(), got[0]))
    return (time.perf_counter() - t0) / n


def concurrent(fn, threads: int, n: int) -> float:
    """Cycles/s with several writers at once (group commit shares fsyncs)."""
    t0 = time.perf_counter()
    workers = [threading.Thread(target=fn, args=(n,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * n / (time.perf_counter() - t0)


def open_in_child(path: Path, key: bytes) -> tuple[float, float]:
    """Open time and peak RSS of a fresh process that opens the store (nothing else in it)."""
    import subprocess
    code = ("import sys,time,resource;from pathlib import Path;from fieldkit.config import Config;"
            "from fieldkit.store import Store;t=time.perf_counter();"
            "s=Store.open(Path(sys.argv[1]),bytes.fromhex(sys.argv[2]),Config());"
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path), key.hex()], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    key = random_key()
    per_cycle = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in SIZES:
            store = kit_store(tmp / f"kit{size}", size, key)
            con = sqlite_db(tmp / f"q{size}.sqlite", size)
            kit_t, sql_t = [], []
            for _ in range(REPEATS):  # interleaved, so both see the same machine load
                kit_t.append(kit_cycles(store, CYCLES))
                sql_t.append(sqlite_cycles(con, CYCLES))
            k, s = statistics.median(kit_t), statistics.median(sql_t)
            per_cycle[size] = k
            print(f"queue cycle @ {size:>7} rows: kit {k * 1e3:7.3f} ms  sqlite3(WAL,FULL) {s * 1e3:7.3f} ms  "
                  f"kit/sqlite speed ratio {s / k:5.2f}")
            if size == SIZES[-1]:
                kit_conc = concurrent(lambda n: kit_cycles(store, n), 4, CYCLES // 2)
                lock = threading.Lock()

                def sql_locked(n):
                    with lock:  # one sqlite connection is not shared across threads unlocked
                        sqlite_cycles(con, n)
                sql_conc = concurrent(sql_locked, 4, CYCLES // 2)
                print(f"4 writers @ {size} rows: kit {kit_conc:7.1f} cycles/s  sqlite3 {sql_conc:7.1f} cycles/s  "
                      f"ratio {kit_conc / sql_conc:5.2f}")
                store.close()
                open_s, rss = open_in_child(tmp / f"kit{size}", key)
                print(f"open time of a {size}-row store: {open_s:.2f} s; kit process peak RSS after open: {rss:.0f} MB")
            else:
                store.close()
            con.close()
    growth = per_cycle[SIZES[-1]] / per_cycle[SIZES[0]]
    print(f"kit cost per cycle at {SIZES[-1]} rows / at {SIZES[0]} rows: {growth:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()

"""SIGKILL a writer at random instants; every acknowledged record and blob must survive,
and the leases it held come back as ready rows.

A SIGKILL keeps the page cache, so this proves the process side (nothing acknowledged
before it was written, leases resumed at open), not the disk side: test_powercut.py
simulates power cuts. `make test` runs 50 SIGKILL rounds; `make soak` runs 500 (CRASH_ROUNDS).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fieldkit.kit import open_kit
from kitproc import readable

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "50"))
WRITER = Path(__file__).with_name("crash_writer.py")


def _run_and_kill(data_dir: Path, prefix: str, rng: random.Random) -> tuple[list[tuple[str, str, str]], set[str]]:
    proc = subprocess.Popen([sys.executable, str(WRITER), str(data_dir), prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    acked, leased, buf = [], set(), b""
    kill_after = rng.uniform(0.02, 0.6)
    started = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if started is not None and time.monotonic() - started >= kill_after:
            break
        if readable(proc.stdout, 0.01):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            if started is None and b"READY" in buf:
                started = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=30)
    buf += rest
    assert b"Traceback" not in err, err.decode()
    lines = buf.decode().splitlines()
    assert not lines or lines[0] == "READY", lines[:2]
    for line in lines:
        if line.startswith("ACK "):
            _, rid, addr, sha = line.split()
            acked.append((rid, addr, sha))
        elif line.startswith("LEASE "):
            leased.add(line.split()[1])
    return acked, leased


def test_sigkill_at_random_instants_loses_nothing_acknowledged(data_dir):
    rng = random.Random(1234)
    all_acked: list[tuple[str, str, str]] = []
    total_rounds_with_acks = total_leased = 0
    for round_no in range(ROUNDS):
        acked, leased = _run_and_kill(data_dir, f"r{round_no}", rng)
        total_leased += len(leased)
        total_rounds_with_acks += bool(acked)
        all_acked += acked
        kit = open_kit(data_dir)  # the store must open after every kill
        try:
            rows = kit.store.read(lambda db: {d["id"]: d for d in db.table("crash").all()})
            for rid, addr, sha in all_acked:
                assert rid in rows, f"acknowledged record {rid} lost after kill {round_no}"
                assert rows[rid]["blob"] == addr and rows[rid]["sha"] == sha
            # blobs of this round are byte-identical (earlier rounds were checked before)
            for rid, addr, sha in acked:
                assert hashlib.sha256(kit.store.blobs.get_bytes(addr)).hexdigest() == sha
            # the leases the killed writer held are back: ready for the next worker
            assert kit.store.queue.counts()["infer"]["leased"] == 0
            assert kit.store.resumed_leases >= len(leased)
            assert all(kit.store.queue.get(row_id).state == "ready" for row_id in leased)
        finally:
            kit.close()
    assert total_rounds_with_acks >= ROUNDS // 2, "the writer was killed before acknowledging anything too often"
    assert len(all_acked) > ROUNDS
    assert total_leased > 0, "the writer never held a lease when it was killed"

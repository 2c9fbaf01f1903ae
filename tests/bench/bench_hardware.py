"""Hardware, doctor and provisioning benchmarks (measured, never asserted). Prints:

1. the cost of a worker asking for the power policy before a job: a fresh sensor read +
   decision (power.probe_interval_seconds = 0) versus the cached policy, per call;
2. `fieldkit doctor` wall time on a fresh kit (no hospital configured) versus
   `fieldkit status` (the cheapest command: interpreter start and imports);
3. `fieldkit provision --root` first run versus the second (idempotent) run.

    python tests/bench/bench_hardware.py
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fieldkit.config import Config  # noqa: E402
from fieldkit.hardware import PowerMonitor, SystemProbe  # noqa: E402

FIELDKIT = str(Path(sys.executable).parent / "fieldkit")


def per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = SystemProbe(tmp)
        fresh = PowerMonitor(probe, Config({"power.probe_interval_seconds": 0.0}))
        cached = PowerMonitor(probe, Config({"power.probe_interval_seconds": 3600.0}))
        cached.policy()
        f = statistics.median(per_call(fresh.policy, 200) for _ in range(5))
        c = statistics.median(per_call(cached.policy, 20000) for _ in range(5))
        print(f"policy lookup: fresh read {f * 1e6:.0f} us, cached {c * 1e6:.2f} us, ratio fresh/cached = {f / c:.0f}")

        # a kit to examine
        (tmp / "pp").write_text("correct horse battery staple\n")
        subprocess.run([FIELDKIT, "init", "--data-dir", str(tmp / "kit"), "--passphrase-file",
                        str(tmp / "pp"), "--kit-id", "BENCH"], check=True, capture_output=True)
        d = statistics.median(wall([FIELDKIT, "doctor", "--data-dir", str(tmp / "kit")]) for _ in range(3))
        s = statistics.median(wall([FIELDKIT, "status", "--data-dir", str(tmp / "kit")]) for _ in range(3))
        print(f"doctor wall time {d:.2f} s vs status {s:.2f} s: ratio doctor/status = {d / s:.2f}")

        # provisioning into a root, twice
        answers = tmp / "answers"
        answers.mkdir()
        for name, secret in (("kit-passphrase.txt", "correct horse battery staple"),
                             ("admin-password.txt", "admin password 123"),
                             ("wifi-passphrase.txt", "wifi secret 42"), ("hospital-password.txt", "x")):
            (answers / name).write_text(secret + "\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        text = (ROOT / "provisioning/answers.example.toml").read_text().replace(
            "https://pacs.hospital.example/dicom-web", f"http://127.0.0.1:{port}/dicom-web")
        (answers / "kit.toml").write_text(text)
        root = tmp / "root"
        root.mkdir()
        venv = str(Path(sys.executable).parent.parent)
        cmd = [FIELDKIT, "provision", "--answers", str(answers / "kit.toml"), "--root", str(root), "--use-venv", venv]
        first = wall(cmd)
        second = statistics.median(wall(cmd) for _ in range(3))
        print(f"provision --root: first run {first:.2f} s, re-run {second:.2f} s: ratio first/re-run = {first / second:.2f}")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

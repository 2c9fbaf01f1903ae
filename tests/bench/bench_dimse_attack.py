"""DICOM receiver under attack: probe C-STORE rate with 50 idle TCP connections held open
against the DICOM port (re-opened as soon as the kit closes them, from 10 loopback
addresses) against the rate without them, rounds alternating in one run; and how much the
kit's RSS grows while it refuses an object over dicom.max_object_mb.

Run: python tests/bench/bench_dimse_attack.py [--rounds N] [--files N]. Prints medians and
ratios; asserts nothing. The captures are synthetic test data written to a temp dir.
"""

from __future__ import annotations

import argparse
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from fixtures.dcmtk import captures  # noqa: E402
from kitproc import KitProcess, init_kit, set_config  # noqa: E402

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


class IdleAttack:
    """Keeps `n` silent TCP connections open against the port until stopped."""

    def __init__(self, port: int, n: int = 50):
        self.port, self.n = port, n
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % 10}", 0))
        s.settimeout(2)
        s.connect(("127.0.0.1", self.port))
        s.setblocking(False)
        self.opened += 1
        return s

    def _run(self):
        # asleep until the kit closes one (then re-opened), so the attacker's own CPU use
        # does not weigh on the probe's rate
        with selectors.DefaultSelector() as sel:
            for i in range(self.n):
                sel.register(self._open(i), selectors.EVENT_READ, i)
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    try:
                        closed = key.fileobj.recv(1) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        try:
                            sel.register(self._open(key.data), selectors.EVENT_READ, key.data)
                        except OSError:
                            pass
            for key in list(sel.get_map().values()):
                key.fileobj.close()

    def __enter__(self):
        self._thread.start()
        time.sleep(0.5)  # all 50 connected before the probe starts
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def probe_rate(port: int, files: list[Path]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["storescu", "-xe", "-aet", "BENCH", "-aec", "FIELDKIT", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"   storescu failed: {(proc.stdout + proc.stderr)[-300:]}")
        return 0.0
    return len(files) / elapsed


def refused_rss_growth(kit: KitProcess, frames: int) -> tuple[float, float, int]:
    """(object MB, kit RSS growth MB, status) for one C-STORE over the limit."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.NumberOfFrames = frames
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = bytes(ds.PixelData) * frames
    proc = psutil.Process(kit.proc.pid)
    start = peak = proc.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(US_MULTIFRAME, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", kit.dicom_port, ae_title="FIELDKIT")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
        ae.shutdown()
        done.set()
        sampler.join(5)
    return len(ds.PixelData) / 1e6, (peak - start) / 1e6, int(status.Status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--files", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dimse-attack-"))
    kit = None
    try:
        data_dir = init_kit(work / "kit")
        set_config(data_dir, inference__enabled=False, dicom__max_object_mb=16)
        kit = KitProcess(data_dir).start()
        quiet, attacked, opened = [], [], []
        for r in range(args.rounds):
            files = captures(work / f"q{r}", args.files)
            quiet.append(probe_rate(kit.dicom_port, files))
            files = captures(work / f"a{r}", args.files)
            with IdleAttack(kit.dicom_port) as attack:
                attacked.append(probe_rate(kit.dicom_port, files))
            opened.append(attack.opened)
        q, a = statistics.median(quiet), statistics.median(attacked)
        print(f"probe C-STORE rate, no attack: median {q:.1f} instances/s over {args.rounds} rounds "
              f"of {args.files} ({', '.join(f'{x:.1f}' for x in quiet)})")
        print(f"probe C-STORE rate, 50 idle connections held open: median {a:.1f} instances/s "
              f"({', '.join(f'{x:.1f}' for x in attacked)}); idle connections opened per round: {opened}")
        print(f"ratio attacked/quiet: {a / q if q else 0:.2f} (target >= 0.9)")
        size, grew, status = refused_rss_growth(kit, 300)
        print(f"C-STORE of {size:.0f} MB over the 16 MiB limit: status 0x{status:04X}, "
              f"kit RSS grew {grew:.0f} MB ({grew / size:.2f} of the object)")
    finally:
        if kit is not None:
            kit.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Sync benchmark: through a throttled link (tests/proxy.py) to a real Orthanc with its
DICOMweb plugin, in one run:

1. kit throughput: original DICOM bytes confirmed per second ÷ link rate, and the same for
   a baseline that sends the same corpus with dicomweb-client one instance at a time
   through the same link;
2. bytes re-sent after 10 random cuts of the link, as a share of the corpus;
3. time from link-up to the first confirmed red-tagged finding (link down first, a queue of
   images ahead of the finding).

Run: python tests/bench/bench_sync.py   (part of `make bench`; LINK_KBPS to change the link)
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from fixtures.orthanc import start_orthanc  # noqa: E402
from fixtures.sync import add_to_store, corpus, finding_sr, sync_config  # noqa: E402
from kitproc import init_kit  # noqa: E402
from proxy import Proxy  # noqa: E402

from fieldkit.kit import open_kit  # noqa: E402
from fieldkit.sync.worker import SyncWorker  # noqa: E402

LINK_KBPS = int(os.environ.get("LINK_KBPS", "2000"))   # kilobits/s
RATE = LINK_KBPS * 1000 / 8                             # bytes/s
COPIES = int(os.environ.get("BENCH_COPIES", "6"))       # x 4 files, ~0.9 MB per copy
CUT_COPIES = int(os.environ.get("BENCH_CUT_COPIES", "24"))  # ~21 MB for the 10-cut run


def new_kit(root: Path, name: str):
    return open_kit(init_kit(root / name))


def kit_run(root, orthanc, proxy, items, name, cuts: int = 0):
    kit = new_kit(root, name)
    try:
        add_to_store(kit.store, items)
        worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url(), sync__backoff_max_seconds=1.0),
                            kit.data_dir, poll=0.05)
        stop_cuts = threading.Event()
        if cuts:
            def cutter():
                rng = random.Random(7)
                expected = sum(len(d) for d, _ in items) * 0.6 / RATE
                times = sorted(rng.uniform(0.5, expected) for _ in range(cuts))
                t0 = time.monotonic()
                for t in times:
                    if stop_cuts.wait(max(0.0, t - (time.monotonic() - t0))):
                        return
                    proxy.cut_all()
            threading.Thread(target=cutter, daemon=True).start()
        t0 = time.monotonic()
        worker.start()
        n = len(items)
        while worker.status()["counts"]["confirmed"] < n and time.monotonic() - t0 < 900:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        stop_cuts.set()
        worker.stop()
        st = worker.status()
        return elapsed, st
    finally:
        kit.close()


def baseline_run(proxy, items):
    from dicomweb_client.api import DICOMwebClient
    client = DICOMwebClient(url=proxy.url())
    t0 = time.monotonic()
    for data, _ in items:
        import pydicom
        client.store_instances([pydicom.dcmread(io.BytesIO(data))])
    return time.monotonic() - t0


def time_to_red(root, orthanc, proxy):
    kit = new_kit(root, "red")
    try:
        add_to_store(kit.store, corpus("B-GREEN", copies=COPIES), triage="green")
        study = str(corpus("B-RED")[0][1].StudyInstanceUID)
        data, sr = finding_sr("B-RED", study, "pneumothorax: present")
        add_to_store(kit.store, [(data, sr)], triage="red")
        proxy.refuse = True
        worker = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir, poll=0.05).start()
        time.sleep(10)  # link down for a while: the worker backs off
        proxy.refuse = False
        t0 = time.monotonic()
        uid = str(sr.SOPInstanceUID)
        from fieldkit.store.instances import get_instance
        while time.monotonic() - t0 < 600:
            doc = get_instance(kit.store, uid)
            if doc.get("sync_state") == "confirmed":
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        worker.stop()
        return elapsed
    finally:
        kit.close()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    orthanc = start_orthanc(root / "orthanc")
    proxy = Proxy(orthanc.http_port)
    proxy.rate = RATE
    try:
        kit_items = corpus("B-KIT", copies=COPIES)
        base_items = corpus("B-BASE", copies=COPIES)
        total = sum(len(d) for d, _ in kit_items)
        print(f"corpus: {len(kit_items)} instances, {total / 1e6:.2f} MB; link {LINK_KBPS} kbit/s "
              f"({RATE / 1e3:.0f} kB/s each way)")

        elapsed, st = kit_run(root, orthanc, proxy, kit_items, "kit")
        kit_rate = total / elapsed
        base_elapsed = baseline_run(proxy, base_items)
        base_rate = sum(len(d) for d, _ in base_items) / base_elapsed
        print(f"kit:      {elapsed:6.1f} s, {kit_rate / 1e3:7.1f} kB/s original bytes confirmed "
              f"(wire {st['confirmed_wire_bytes'] / 1e6:.2f} MB for {st['confirmed_bytes'] / 1e6:.2f} MB)")
        print(f"baseline: {base_elapsed:6.1f} s, {base_rate / 1e3:7.1f} kB/s (dicomweb-client, one instance per request)")
        print(f"ratio kit/link     {kit_rate / RATE:.2f}")
        print(f"ratio baseline/link {base_rate / RATE:.2f}")
        print(f"ratio kit/baseline {kit_rate / base_rate:.2f}")

        cut_items = corpus("B-CUT", copies=CUT_COPIES)
        cut_total = sum(len(d) for d, _ in cut_items)
        before = proxy.cuts
        elapsed, st = kit_run(root, orthanc, proxy, cut_items, "cuts", cuts=10)
        wasted = st["sent_bytes"] - st["confirmed_wire_bytes"]
        print(f"cuts: {proxy.cuts - before} cuts, {elapsed:.1f} s, all {st['counts']['confirmed']} confirmed; "
              f"wasted {wasted / 1e3:.0f} kB, re-sent instances {st['resent_instances']}, found by QIDO {st['found_by_qido']}")
        print(f"cut corpus {cut_total / 1e6:.1f} MB")
        print(f"ratio re-sent/corpus {wasted / cut_total:.3f}")

        red = time_to_red(root, orthanc, proxy)
        print(f"link-up to first confirmed red finding: {red:.1f} s "
              f"(link down 10 s before; sync.backoff_max_seconds default)")
    finally:
        proxy.stop()
        orthanc.stop()


if __name__ == "__main__":
    main()

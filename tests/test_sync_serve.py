"""Sync inside real `fieldkit serve` processes: SIGKILL at random instants during a sync,
then everything ends confirmed and the hospital holds each instance exactly once."""

from __future__ import annotations

import random
import time

from fieldkit.records import T_INSTANCES
from fieldkit.kit import open_kit
from fixtures.sync import add_to_store, corpus, finding_sr
from kitproc import KitProcess, run_cli, set_config
from proxy import Proxy

KILLS = 20


def _configure(data_dir, url: str) -> None:
    run_cli("hospital", "set", "--data-dir", data_dir, "--url", url)
    set_config(data_dir, sync__backoff_max_seconds=1.0, hospital__read_timeout_seconds=5.0,
               hospital__connect_timeout_seconds=2.0)


def _orthanc_uids(orthanc) -> list[str]:
    return [orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.rest("/instances")]


def test_sigkill_at_random_instants_loses_and_duplicates_nothing(data_dir, orthanc, need):
    need("Orthanc")
    items = corpus("T-0401", copies=12)
    items.append(finding_sr("T-0401", str(items[0][1].StudyInstanceUID)))
    kit = open_kit(data_dir)
    try:
        add_to_store(kit.store, items, triage="red")
    finally:
        kit.close()
    proxy = Proxy(orthanc.http_port)
    proxy.rate = 300_000
    _configure(data_dir, proxy.url())
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    proc = KitProcess(data_dir)
    try:
        for _ in range(KILLS):
            proc.start()
            time.sleep(rng.uniform(0.0, 1.2))
            proc.kill()
        proc.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and orthanc.instance_count() < len(items):
            time.sleep(0.5)
        # the last confirmations are written right after the hospital answered
        time.sleep(1.0)
        proc.stop()
    finally:
        proc.kill()
        proxy.stop()
    sent = {str(ds.SOPInstanceUID) for _, ds in items}
    held = _orthanc_uids(orthanc)
    assert sorted(held) == sorted(sent), f"seed {seed}"
    kit = open_kit(data_dir)
    try:
        docs = kit.store.read(lambda db: [dict(d) for d in db.table(T_INSTANCES).all()])
        assert all(d.get("sync_state") == "confirmed" for d in docs), f"seed {seed}"
        counts = kit.store.queue.counts()["sync"]
        assert counts["done"] == len(items) and counts["failed"] == 0 and counts["ready"] == 0, f"seed {seed}"
        from fieldkit.sync.progress import status
        st = status(kit.store)
        assert st["counts"]["confirmed"] == len(items)
        # the kills did land mid-sync: some instances were resumed (re-sent or found by QIDO)
        assert st["resent_instances"] + st["found_by_qido"] > 0, f"seed {seed}"
    finally:
        kit.close()


def test_status_commands_read_sync_state_from_a_running_kit(data_dir, orthanc, need):
    """`fieldkit status` and `fieldkit sync status` ask the running kit (it holds the store),
    and both show its sync state: confirmed count, link, queue."""
    need("Orthanc")
    import json
    items = corpus("T-0402")
    kit = open_kit(data_dir)
    try:
        add_to_store(kit.store, items, triage="yellow")
    finally:
        kit.close()
    _configure(data_dir, orthanc.base_url)
    proc = KitProcess(data_dir)
    try:
        proc.start()
        deadline = time.monotonic() + 60
        st = {}
        while time.monotonic() < deadline:
            st = json.loads(run_cli("sync", "status", "--data-dir", data_dir, "--json").stdout)
            if st["counts"]["confirmed"] == len(items):
                break
            time.sleep(0.5)
        assert st["counts"]["confirmed"] == len(items) and st["counts"]["quarantined"] == 0
        assert st["link_up"] is True
        text = run_cli("sync", "status", "--data-dir", data_dir).stdout
        assert f"{len(items)} confirmed" in text
        whole = json.loads(run_cli("status", "--data-dir", data_dir, "--json").stdout)
        assert whole["sync"]["counts"]["confirmed"] == len(items)
        plain = run_cli("status", "--data-dir", data_dir).stdout
        assert f"{len(items)} confirmed" in plain and "queue sync" in plain
    finally:
        proc.stop()
    assert orthanc.instance_count() == len(items)

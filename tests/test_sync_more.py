"""Sync pieces: CLI, credentials, transcoding fall-back, re-triage, retention, backoff,
windows, batching."""

from __future__ import annotations

import io
import os
import random
import stat
import time

import pydicom
import pytest

from fieldkit.records import T_INSTANCES, sync_priority
from fieldkit.sync import planner
from fieldkit.sync.link import Backoff, probe
from fieldkit.sync.retention import purge_expired
from fieldkit.sync.worker import SyncWorker, in_windows
from fixtures.orthanc import start_orthanc, _require_orthanc, free_port
from fixtures.sync import add_to_store, corpus, finding_sr, sync_config
from kitproc import run_cli
from proxy import Proxy

JPEG_LS = "1.2.840.10008.1.2.4.80"


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [b.failure() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[4:]) > max(delays[:2])  # grows
    assert len(set(round(d, 3) for d in delays)) == len(delays)  # jittered
    assert b.failure(at_least=20.0) == 20.0  # Retry-After wins
    b.success()
    assert b.failures == 0 and b.remaining() == 0.0


def test_probe_says_why():
    up, why = probe(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=1)
    assert not up and "cannot reach 127.0.0.1" in why
    up, why = probe("ftp://pacs/x")
    assert not up and "http(s)" in why


def test_windows():
    import datetime as dt
    at = dt.datetime(2026, 1, 1, 23, 30)
    assert in_windows([], at)
    assert in_windows(["22:00-06:00"], at)
    assert not in_windows(["08:00-17:00"], at)
    from fieldkit.errors import ConfigError
    with pytest.raises(ConfigError):
        in_windows(["8am-5pm"], at)


def _item(prio, size, created=0.0, alone=False):
    from fieldkit.records import QueueRow
    row = QueueRow(id=f"r{prio}-{size}-{created}", kind="sync", priority=prio, state="leased", attempts=1,
                   next_at=0, created=created)
    return planner.Item(row, planner.BULK, size, alone=alone)


def test_batches_take_small_ones_in_order_and_big_ones_alone():
    small = [_item(10, 100_000, i) for i in range(6)]
    batch = planner.form_batch(small, max_bytes=350_000, max_count=32)
    assert [i.row.created for i in batch] == [0, 1, 2]
    big = _item(5, 5_000_000)
    assert planner.form_batch(small + [big], 350_000, 32) == [big]
    # never skip past the most urgent item to fill a batch
    mixed = [_item(10, 100_000, 0), _item(11, 400_000, 1), _item(12, 1000, 2)]
    assert [i.size for i in planner.form_batch(mixed, 350_000, 32)] == [100_000]


def test_retriage_reprioritises_queued_rows(kit):
    items = corpus("T-0501")[:2]
    rows = add_to_store(kit.store, items, triage="green")
    kit.store.queue.enqueue("sync", {"patient_id": "T-0501", "what": "triage"},
                            priority=sync_priority("green", "triage"))
    from fieldkit.store.patients import set_triage
    set_triage(kit.store, "T-0501", "red")
    assert planner.reprioritise_patient(kit.store, "T-0501") == 3
    prios = sorted(r.priority for r in kit.store.queue.rows("sync"))
    assert prios == [sync_priority("red", "triage"), sync_priority("red", "image"), sync_priority("red", "image")]
    assert kit.store.queue.get(rows[0]).priority == sync_priority("red", "image")


def test_hospital_set_keeps_secrets_out_of_the_toml_and_sync_once_sends(data_dir, tmp_path):
    _require_orthanc()
    h = start_orthanc(tmp_path / "o", username="kit", password="s3cret-hospital-pw")
    try:
        pw = tmp_path / "pw"
        pw.write_text("s3cret-hospital-pw\n")
        run_cli("hospital", "set", "--data-dir", data_dir, "--url", h.base_url, "--auth", "basic",
                "--username", "kit", "--password-file", pw, "--window", "00:00-23:59")
        toml = (data_dir / "fieldkit.toml").read_text()
        assert "s3cret" not in toml and 'password_file = "secrets/hospital-password"' in toml
        mode = stat.S_IMODE(os.stat(data_dir / "secrets" / "hospital-password").st_mode)
        assert mode == 0o600
        show = run_cli("hospital", "show", "--data-dir", data_dir).stdout
        assert "s3cret" not in show and h.base_url in show
        assert "hospital OK" in run_cli("hospital", "test", "--data-dir", data_dir).stdout
        from fieldkit.kit import open_kit
        kit = open_kit(data_dir)
        try:
            add_to_store(kit.store, corpus("T-0502"), triage="yellow")
        finally:
            kit.close()
        out = run_cli("sync", "--once", "--data-dir", data_dir, "--timeout", "60")
        assert "4 confirmed" in out.stdout and "0 queued" in out.stdout
        assert "s3cret" not in out.stdout + out.stderr
        assert h.instance_count() == 4
        st = run_cli("sync", "status", "--data-dir", data_dir, "--json").stdout
        assert '"confirmed": 4' in st
        # wrong password: clear line, nothing lost, exit code says "not done"
        pw.write_text("wrong\n")
        run_cli("hospital", "set", "--data-dir", data_dir, "--password-file", pw)
        bad = run_cli("hospital", "test", "--data-dir", data_dir, check=False)
        assert bad.returncode != 0 and "credentials" in bad.stderr
    finally:
        h.stop()


def test_hospital_refusing_jpeg_ls_gets_the_original(kit, orthanc):
    items = corpus("T-0503")
    add_to_store(kit.store, items)
    proxy = Proxy(orthanc.http_port)

    def intercept(head, body):
        if JPEG_LS.encode() in body:
            parts = [p for p in body.split(b"\r\n--") if JPEG_LS.encode() in p]
            uids = [str(ds.SOPInstanceUID) for _, ds in items
                    if any(str(ds.SOPInstanceUID).encode() in p for p in parts)]
            import json
            doc = {"00081198": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [0xC122]}} for u in uids]}}
            return 409, json.dumps(doc).encode(), {"Content-Type": "application/dicom+json"}
        return None

    proxy.intercept = intercept
    try:
        st = SyncWorker(kit.store, sync_config(kit.config, proxy.url()), kit.data_dir).run_once(timeout=60)
    finally:
        proxy.stop()
    assert st["counts"]["confirmed"] == 4 and st["counts"]["quarantined"] == 0
    rgb = str(items[1][1].SOPInstanceUID)
    oid = [i for i in orthanc.rest("/instances")
           if orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == rgb][0]
    import requests
    raw = requests.get(f"{orthanc.rest_url}/instances/{oid}/file", timeout=10).content
    assert pydicom.dcmread(io.BytesIO(raw)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_retention_purges_pixels_keeps_tombstone(kit, orthanc):
    items = corpus("T-0504")[:2]
    add_to_store(kit.store, items)
    SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir).run_once(timeout=60)
    docs = {d["sop_instance_uid"]: dict(d) for d in kit.store.read(lambda db: db.table(T_INSTANCES).all())}
    blobs = [d["blob"] for d in docs.values()]
    assert purge_expired(kit.store, 7) == 0  # too recent
    assert purge_expired(kit.store, 7, now=time.time() + 8 * 86400) == 2
    after = {d["sop_instance_uid"]: dict(d) for d in kit.store.read(lambda db: db.table(T_INSTANCES).all())}
    for uid, d in after.items():
        assert d["blob"] == "" and d["purged_at"] and uid in d["retrieve_url"]
    assert not any(kit.store.blobs.exists(b) for b in blobs)


def test_low_battery_defers_bulk_images_but_not_red_or_findings(kit, orthanc):
    from types import SimpleNamespace
    green = corpus("T-0505")[:2]
    red = corpus("T-0506")[:1]
    sr_data, sr = finding_sr("T-0505", str(green[0][1].StudyInstanceUID))
    add_to_store(kit.store, green + [(sr_data, sr)], triage="green")
    add_to_store(kit.store, red, triage="red")
    low = SimpleNamespace(defer_bulk_sync=True)
    worker = SyncWorker(kit.store, sync_config(kit.config, orthanc.base_url), kit.data_dir,
                        power_policy=lambda: low)
    st = worker.run_once(timeout=30)
    done = {i["sop_instance_uid"] for i in st["items"] if i["state"] == "confirmed"}
    assert done == {str(sr.SOPInstanceUID), str(red[0][1].SOPInstanceUID)}
    assert st["counts"]["queued"] == 2


def test_retention_also_purges_overlays_and_conflicting_copies(store):
    """Everything that shows a purged capture's pixels goes with it; what a capture that
    stays still uses is kept."""
    from fieldkit.records import T_FINDINGS
    from fieldkit.store import instances
    from fixtures.sync import corpus

    (a_bytes, a), (b_bytes, b) = corpus("T-0507")[:2]
    ra = instances.put_instance(store, a_bytes, "stow")
    rb = instances.put_instance(store, b_bytes, "stow")
    a.PatientName = "Other^Copy"  # same UID, other content: kept aside as a conflict
    buf = io.BytesIO()
    a.save_as(buf, enforce_file_format=True)
    assert instances.put_instance(store, buf.getvalue(), "stow")["status"] == "conflict"
    own = store.blobs.put_bytes(b"overlay drawn on a's frame")
    shared = store.blobs.put_bytes(b"overlay both findings point at")
    now = time.time()

    def setup(db):
        db.table(T_FINDINGS).insert({"id": "fa", "sop_instance_uid": ra["sop_instance_uid"], "overlay": own.addr})
        db.table(T_FINDINGS).insert({"id": "fa2", "sop_instance_uid": ra["sop_instance_uid"], "overlay": shared.addr})
        db.table(T_FINDINGS).insert({"id": "fb", "sop_instance_uid": rb["sop_instance_uid"], "overlay": shared.addr})
        from tinydb import Query
        db.table(T_INSTANCES).update({"sync_state": "confirmed", "confirmed_at": now - 10 * 86400},
                                     Query().sop_instance_uid == ra["sop_instance_uid"])
    store.write(setup)
    row = instances.get_instance(store, ra["sop_instance_uid"])
    held = [row["blob"], row["thumbnail"], row["conflicts"][0]["blob"], own.addr]
    assert all(store.blobs.exists(x) for x in held)

    assert purge_expired(store, 7, now=now) == 1
    assert not any(store.blobs.exists(x) for x in held)
    assert store.blobs.exists(shared.addr)  # b's finding still shows it
    kept_b = instances.get_instance(store, rb["sop_instance_uid"])
    assert store.blobs.exists(kept_b["blob"]) and store.blobs.exists(kept_b["thumbnail"])
    tomb = instances.get_instance(store, ra["sop_instance_uid"])
    assert tomb["purged_at"] and tomb["conflicts"][0]["blob"] == ""
    overlays = store.read(lambda db: {f["id"]: f["overlay"] for f in db.table(T_FINDINGS).all()})
    assert overlays == {"fa": "", "fa2": "", "fb": shared.addr}

"""Retention (sync/retention.py): a capture the hospital confirmed long enough ago loses
its pixels and keeps a tombstone; overlays and conflicting copies go with it."""

from __future__ import annotations

import io
import time

from fieldkit.records import T_INSTANCES
from fieldkit.sync.retention import purge_expired
from fieldkit.sync.worker import SyncWorker
from fixtures.sync import add_to_store, corpus, sync_config


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

"""Retention: after the hospital confirmed an instance and N days passed, the local pixel
data goes (the stored object and its thumbnail); a tombstone stays (UIDs, patient, when
confirmed, the hospital's retrieve URL): `blob` = "", `thumbnail` = "", `purged_at` set.
Every reader of the catalogue checks `purged_at` and says "purged, retrieve it at ...".

Blobs are content-addressed, so one is deleted only when no other live catalogue row
still points at it.
"""

from __future__ import annotations

import time

from fieldkit.records import T_INSTANCES


def purge_expired(store, retention_days: int, now: float | None = None) -> int:
    """Purge confirmed instances older than `retention_days`; returns how many."""
    if retention_days <= 0:
        return 0
    now = now or time.time()
    cutoff = now - retention_days * 86400.0

    def pick(db):
        rows = db.table(T_INSTANCES).all()
        live_refs: dict[str, int] = {}
        for r in rows:
            if not r.get("purged_at"):
                for addr in {r.get("blob"), r.get("thumbnail")} - {None, ""}:
                    live_refs[addr] = live_refs.get(addr, 0) + 1
        victims = [dict(r) for r in rows if r.get("sync_state") == "confirmed" and not r.get("purged_at")
                   and r.get("blob") and float(r.get("confirmed_at") or now) < cutoff]
        return victims, live_refs

    victims, refs = store.read(pick)
    if not victims:
        return 0
    from tinydb import Query
    doomed = []
    for v in victims:
        for addr in {v.get("blob"), v.get("thumbnail")} - {None, ""}:
            refs[addr] -= 1
            if refs[addr] == 0:
                doomed.append(addr)

    def mark(db):
        t = db.table(T_INSTANCES)
        for v in victims:
            t.update({"purged_at": now, "blob": "", "thumbnail": "", "purged_blob_size": v.get("size", 0)},
                     Query().sop_instance_uid == v["sop_instance_uid"])
    store.write(mark)  # the tombstone is durable before any file goes
    for addr in doomed:
        store.blobs.delete(addr)
    return len(victims)

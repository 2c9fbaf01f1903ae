"""Retention: after the hospital confirmed an instance and N days passed, the local pixel
data goes: the stored object, its thumbnail, any conflicting copy kept beside it, and the
overlays of its findings (they show its frames). A tombstone stays (UIDs, patient, when
confirmed, the hospital's retrieve URL): `blob` = "", `thumbnail` = "", `purged_at` set;
the findings stay too (their words and numbers), with `overlay` = "".
Every reader of the catalogue checks `purged_at` and says "purged, retrieve it at ...".

Blobs are content-addressed, so one is deleted only when nothing that stays (a live
instance, its conflicting copies, a finding of a live instance) still points at it.
"""

from __future__ import annotations

import time

from fieldkit.records import T_FINDINGS, T_INSTANCES


def _pixel_refs(row: dict) -> set[str]:
    """Blobs an instance row holds: the object, its preview, conflicting copies."""
    refs = {row.get("blob"), row.get("thumbnail")} | {c.get("blob") for c in row.get("conflicts") or []}
    return refs - {None, ""}


def purge_expired(store, retention_days: int, now: float | None = None) -> int:
    """Purge confirmed instances older than `retention_days`; returns how many."""
    if retention_days <= 0:
        return 0
    now = now or time.time()
    cutoff = now - retention_days * 86400.0

    def pick(db):
        rows = db.table(T_INSTANCES).all()
        victims = [dict(r) for r in rows if r.get("sync_state") == "confirmed" and not r.get("purged_at")
                   and r.get("blob") and float(r.get("confirmed_at") or now) < cutoff]
        going = {v["sop_instance_uid"] for v in victims}
        keep: set[str] = set()
        doomed: set[str] = set()
        for r in rows:
            if not r.get("purged_at"):
                (doomed if r["sop_instance_uid"] in going else keep).update(_pixel_refs(r))
        findings = [dict(f) for f in db.table(T_FINDINGS).all() if f.get("overlay")]
        for f in findings:
            (doomed if f.get("sop_instance_uid") in going else keep).add(f["overlay"])
        return victims, [f["id"] for f in findings if f.get("sop_instance_uid") in going], doomed - keep

    victims, finding_ids, doomed = store.read(pick)
    if not victims:
        return 0
    from tinydb import Query

    def mark(db):
        t = db.table(T_INSTANCES)
        for v in victims:
            conflicts = [{**c, "blob": ""} for c in v.get("conflicts") or []]
            t.update({"purged_at": now, "blob": "", "thumbnail": "", "purged_blob_size": v.get("size", 0),
                      "conflicts": conflicts}, Query().sop_instance_uid == v["sop_instance_uid"])
        if finding_ids:
            db.table(T_FINDINGS).update({"overlay": ""}, Query().id.one_of(finding_ids))
    store.write(mark)  # the tombstone is durable before any file goes
    for addr in sorted(doomed):
        store.blobs.delete(addr)
    return len(victims)

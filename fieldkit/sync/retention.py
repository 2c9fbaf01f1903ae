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

from fieldkit.store import instances


def purge_expired(store, retention_days: int, now: float | None = None) -> int:
    """Purge confirmed instances older than `retention_days`; returns how many."""
    if retention_days <= 0:
        return 0
    now = now or time.time()
    cutoff = now - retention_days * 86400.0
    victims, finding_ids, doomed = instances.purge_plan(
        store, lambda r: r.get("sync_state") == "confirmed" and float(r.get("confirmed_at") or now) < cutoff)
    if not victims:
        return 0
    instances.mark_purged(store, victims, finding_ids, now)  # the tombstone is durable before any file goes
    for addr in sorted(doomed):
        store.blobs.delete(addr)
    return len(victims)

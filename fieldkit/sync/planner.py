"""What to send next: ordering and batching of `sync` queue rows.

Rows are leased from the store's queue (lowest priority number first, see
fieldkit.records.sync_priority: red before yellow before green; triage/identity, then
findings, then images) into a small local pool, and two lanes take from it:

- the express lane sends triage/identity updates and findings (SR documents);
- the bulk lane sends images.

Both lanes run at once, so a 200 MB cine on the wire never holds back a finding queued
behind it (no head-of-line blocking). Within a lane, small instances share one STOW-RS
request (up to `sync.batch_max_kb` and `sync.batch_max_count`); a big one goes alone.
The pool leases ahead only a little, and looks at the queue for anything more urgent
than what it holds, so a new red finding is picked up within one poll.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fieldkit.records import DONE, FAILED, KIND_SYNC, QueueRow, sync_priority
from fieldkit.store.instances import get_instance, instance_rows
from fieldkit.store.patients import resolve_row

EXPRESS, BULK = "express", "bulk"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
LEASE_SECONDS = 6 * 3600.0  # one worker per kit; a crash resumes leases at the next open


@dataclass
class Item:
    row: QueueRow
    lane: str
    size: int                      # original bytes (estimate for updates)
    uid: str = ""                  # SOP Instance UID ("" for an update until built)
    instance: dict | None = None   # catalogue row (None for triage/identity updates)
    alone: bool = False            # send in a request of its own (after an ambiguous batch)

    @property
    def priority(self) -> int:
        return self.row.priority

    @property
    def what(self) -> str:
        return self.row.payload.get("what", "")


def classify(store, row: QueueRow) -> Item:
    """Queue row -> Item with its lane and size (raises KeyError for an unknown instance)."""
    payload = row.payload or {}
    if "sop_instance_uid" in payload:
        uid = payload["sop_instance_uid"]
        doc = get_instance(store, uid)
        if doc is None:
            raise KeyError(uid)
        is_sr = str(doc.get("sop_class_uid", "")).startswith(SR_CLASS_PREFIX)
        return Item(row, EXPRESS if is_sr else BULK, int(doc.get("size") or 0), uid, doc,
                    alone=bool(doc.get("sync_alone")))
    return Item(row, EXPRESS, 2048)


def form_batch(candidates: list[Item], max_bytes: int, max_count: int) -> list[Item]:
    """Take items in priority order while they fit; a big or 'alone' item goes by itself.
    Never skips past the most urgent item to fill a batch."""
    ordered = sorted(candidates, key=lambda i: (i.priority, i.row.created))
    if not ordered:
        return []
    first = ordered[0]
    if first.alone or first.size > max_bytes:
        return [first]
    batch, total = [first], first.size
    for item in ordered[1:]:
        if item.alone or len(batch) >= max_count or total + item.size > max_bytes:
            break
        batch.append(item)
        total += item.size
    return batch


class Pool:
    """Rows leased from the queue, waiting for a lane. Thread-safe."""

    def __init__(self, store, *, max_bytes: int, max_count: int, lookahead_count: int = 64):
        self.store = store
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.lookahead_count = lookahead_count
        self.items: dict[str, Item] = {}
        self.lock = threading.Lock()
        self.on_bad_row = None  # callback(row, reason) for rows that cannot be classified

    def _lease_one(self) -> bool:
        row = self.store.queue.lease(KIND_SYNC, lease_seconds=LEASE_SECONDS)
        if row is None:
            return False
        try:
            self.items[row.id] = classify(self.store, row)
        except KeyError as exc:
            if self.on_bad_row:
                self.on_bad_row(row, f"instance {exc.args[0]} is not in the kit's catalogue")
        return True

    def _min_ready_priority(self) -> int | None:
        return self.store.queue.most_urgent_ready(KIND_SYNC)

    def _refresh_priorities(self) -> None:
        """Pick up re-triage (set_priority) of rows already in the pool."""
        ids = list(self.items)
        if not ids:
            return
        current = self.store.queue.priorities(ids)
        for row_id, prio in current.items():
            item = self.items[row_id]
            if prio != item.row.priority:
                item.row = QueueRow(**{**item.row.__dict__, "priority": prio})

    def refill(self) -> None:
        for _ in range(self.lookahead_count):
            if len(self.items) >= self.lookahead_count:
                break
            bulk_bytes = sum(i.size for i in self.items.values() if i.lane == BULK)
            express = any(i.lane == EXPRESS for i in self.items.values())
            if bulk_bytes >= 2 * self.max_bytes and express:
                break
            if bulk_bytes >= 2 * self.max_bytes and not express:
                # enough images in hand: only lease on if something more urgent waits (a look
                # at the top of the queue's heap, cheap enough for every take: a finding
                # queued now is leased by the express lane's next look, not seconds later)
                best = self._min_ready_priority()
                worst = max((i.priority for i in self.items.values()), default=None)
                if best is None or worst is None or best >= worst:
                    break
            if not self._lease_one():
                break

    def take(self, lane: str, max_priority: int | None = None) -> list[Item]:
        """The next batch for `lane`; with `max_priority`, only items at least that urgent
        (the power policy defers bulk images but never a red-tagged patient's)."""
        with self.lock:
            self.refill()
            self._refresh_priorities()
            batch = form_batch([i for i in self.items.values() if i.lane == lane
                                and (max_priority is None or i.priority <= max_priority)],
                               self.max_bytes, self.max_count)
            for item in batch:
                del self.items[item.row.id]
            return batch

    def release_all(self, reason: str) -> None:
        """Hand leased rows back to the queue (the worker is stopping)."""
        with self.lock:
            for item in list(self.items.values()):
                self.store.queue.fail(item.row.id, reason, retry_in=0.0)
            self.items.clear()

    def __len__(self) -> int:
        return len(self.items)


def reprioritise_patient(store, patient_id: str, triage: str | None = None) -> int:
    """After a re-triage: give every live sync row of this patient the priority of its new
    category. Returns how many rows changed. Call after the patient record is updated."""
    def fn(db):
        if triage is None:
            row = resolve_row(db, patient_id)
            tri = str((row or {}).get("triage") or "none")
        else:
            tri = triage
        captures = {r["sop_instance_uid"]: r for r in instance_rows(store, patient_id=patient_id)}
        changes = []
        for d in store.queue.live_rows(KIND_SYNC, [patient_id, *captures]):
            if d.state in (DONE, FAILED):
                continue
            p = d.payload or {}
            if p.get("patient_id") == patient_id:
                what = "finding" if p.get("what") == "review" else "triage"
            elif p.get("sop_instance_uid") in captures:
                inst = captures[p["sop_instance_uid"]]
                what = "finding" if str(inst.get("sop_class_uid", "")).startswith(SR_CLASS_PREFIX) else "image"
            else:
                continue
            prio = sync_priority(tri, what)
            if prio != d.priority:
                changes.append((d.id, prio))
        for row_id, prio in changes:
            store.queue.set_priority(row_id, prio)
        return len(changes)
    return store.write(fn)

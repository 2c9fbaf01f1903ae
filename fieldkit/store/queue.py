"""The job queue: rows in the `queue` table, indexed in memory so that leasing the next
job costs O(log n), not a scan of every row ever queued.

A row: our own id (never a TinyDB doc id: those are reused), kind, priority (lower first),
state ready → leased → done | failed, attempts, next-attempt time, last error. Leases left
by a crash return to ready at open; a lease that expires while the kit runs (a stuck
worker) returns to ready at the next lease. Failed rows stay until a person retries or
dismisses them.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from typing import TYPE_CHECKING

from ..errors import BadInput, NotFound
from ..records import DONE, FAILED, KIND_INFER, KINDS, LEASED, READY, STATES, T_QUEUE, QueueRow

if TYPE_CHECKING:
    from . import Store


NEWEST_FIRST = (KIND_INFER,)


class Queue:
    def __init__(self, store: "Store"):
        self._store = store
        self._seq = itertools.count()
        self._doc_ids: dict[str, int] = {}
        self._ready: dict[str, list] = {k: [] for k in KINDS}    # (priority, order, id)
        self._delayed: dict[str, list] = {k: [] for k in KINDS}  # (next_at, seq, id)
        self._leases: list = []                                  # (lease_until, id)
        self._live_keys: dict[tuple[str, str], str] = {}
        self._counts = {k: {s: 0 for s in STATES} for k in KINDS}
        self._waiting: dict[str, dict[str, float]] = {k: {} for k in KINDS}  # ready/leased: id -> created
        self._clock = time.time

    # loading ---------------------------------------------------------------------------
    def load(self, db) -> int:
        """Index every row; leases left by a crash go back to ready. Returns how many."""
        table = db.table(T_QUEUE)
        raw = db.storage.read().get(T_QUEUE, {})  # the live rows, without copying 100 000 dicts
        resumed = []
        for key, doc in raw.items():
            doc_id = int(key)
            if doc["state"] == LEASED:
                resumed.append(doc_id)
                doc = dict(doc, state=READY, lease_until=0.0)
            self._index(doc, doc_id)
        if resumed:
            table.update({"state": READY, "lease_until": 0.0}, doc_ids=resumed)
        return len(resumed)

    def _index(self, doc: dict, doc_id=None) -> None:
        kind, state, row_id = doc["kind"], doc["state"], doc["id"]
        if doc_id is not None:
            self._doc_ids[row_id] = doc_id
        self._counts[kind][state] += 1
        if state in (READY, LEASED):
            self._waiting[kind][row_id] = doc["created"]
        if state != DONE and doc.get("key"):
            self._live_keys[(kind, doc["key"])] = row_id
        if state == READY:
            self._push_ready(doc)
        elif state == LEASED:
            heapq.heappush(self._leases, (doc["lease_until"], row_id))

    def _push_ready(self, doc: dict) -> None:
        if doc["next_at"] > self._clock():
            heapq.heappush(self._delayed[doc["kind"]], (doc["next_at"], next(self._seq), doc["id"]))
        else:
            heapq.heappush(self._ready[doc["kind"]], (doc["priority"], self._order(doc), doc["id"]))

    def _order(self, doc: dict) -> float:
        """Order within one priority: oldest first, but newest first for infer rows (the
        capture just taken is the one a clinician is waiting on; a backlog can wait)."""
        return -doc["created"] if doc["kind"] in NEWEST_FIRST else next(self._seq)

    # helpers ---------------------------------------------------------------------------
    def _table(self, db):
        return db.table(T_QUEUE)

    def _get(self, db, row_id: str) -> dict:
        doc_id = self._doc_ids.get(row_id)
        doc = self._table(db).get(doc_id=doc_id) if doc_id is not None else None
        if doc is None:
            raise NotFound(f"no queue row {row_id}")
        return doc

    def _set(self, db, row_id: str, old: dict, **fields) -> dict:
        fields["updated"] = self._clock()
        self._table(db).update(fields, doc_ids=[self._doc_ids[row_id]])
        new = dict(old, **fields)
        kind = old["kind"]
        if new["state"] != old["state"]:
            self._counts[kind][old["state"]] -= 1
            self._counts[kind][new["state"]] += 1
            if new["state"] in (READY, LEASED):
                self._waiting[kind][row_id] = old["created"]
            else:
                self._waiting[kind].pop(row_id, None)
            if new["state"] == DONE and old.get("key"):
                self._live_keys.pop((kind, old["key"]), None)
        return new

    # the API ---------------------------------------------------------------------------
    def enqueue(self, kind: str, payload: dict, priority: int = 50, key: str | None = None,
                delay: float = 0.0) -> str:
        """Add a row, or return the live row already queued under (kind, key)."""
        if kind not in KINDS:
            raise BadInput(f"unknown queue kind {kind!r}")

        def fn(db):
            if key and (kind, key) in self._live_keys:
                return self._live_keys[(kind, key)]
            now = self._clock()
            doc = {"id": uuid.uuid4().hex, "kind": kind, "priority": int(priority), "state": READY,
                   "attempts": 0, "next_at": now + delay, "payload": payload, "last_error": "",
                   "key": key or "", "created": now, "updated": now, "lease_until": 0.0}
            doc_id = self._table(db).insert(doc)
            self._index(doc, doc_id)
            return doc["id"]

        return self._store.write(fn)

    def lease(self, kind: str, lease_seconds: float = 300.0) -> QueueRow | None:
        """The most urgent ready row of `kind`, now leased to the caller; None if none."""

        def fn(db):
            now = self._clock()
            self._reclaim_expired(db, now)
            delayed, ready = self._delayed[kind], self._ready[kind]
            while delayed and delayed[0][0] <= now:
                _, _, row_id = heapq.heappop(delayed)
                doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
                if doc is not None:
                    heapq.heappush(ready, (doc["priority"], self._order(doc), row_id))
            while ready:
                priority, _, row_id = heapq.heappop(ready)
                doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
                if doc is None or doc["state"] != READY or doc["priority"] != priority:
                    continue  # superseded entry (re-prioritised, retried, …)
                if doc["next_at"] > now:
                    heapq.heappush(delayed, (doc["next_at"], next(self._seq), row_id))
                    continue
                new = self._set(db, row_id, doc, state=LEASED, attempts=doc["attempts"] + 1,
                                lease_until=now + lease_seconds)
                heapq.heappush(self._leases, (new["lease_until"], row_id))
                return QueueRow.from_doc(new)
            return None

        # Not waiting for fsync: a lease lost in a crash only means the row is ready again,
        # which is what a crash does to every lease anyway.
        return self._store.write(fn, durable=False)

    def _reclaim_expired(self, db, now: float) -> None:
        while self._leases and self._leases[0][0] <= now:
            until, row_id = heapq.heappop(self._leases)
            doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
            if doc and doc["state"] == LEASED and doc["lease_until"] == until:
                new = self._set(db, row_id, doc, state=READY, lease_until=0.0,
                                last_error="lease expired (worker stopped or stuck)")
                self._push_ready(new)

    def ack(self, row_id: str) -> None:
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] == LEASED:
                self._set(db, row_id, doc, state=DONE, lease_until=0.0)
        self._store.write(fn)

    def fail(self, row_id: str, error: str, permanent: bool = False, retry_in: float = 30.0) -> None:
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] != LEASED:
                return
            if permanent:
                self._set(db, row_id, doc, state=FAILED, last_error=error[:2000], lease_until=0.0)
            else:
                new = self._set(db, row_id, doc, state=READY, last_error=error[:2000], lease_until=0.0,
                                next_at=self._clock() + retry_in)
                self._push_ready(new)
        self._store.write(fn)

    def retry(self, row_id: str) -> None:
        """A person sends a failed row back to work."""
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] != FAILED:
                raise BadInput(f"queue row {row_id} is {doc['state']}, not failed")
            new = self._set(db, row_id, doc, state=READY, next_at=self._clock(), attempts=0)
            self._push_ready(new)
        self._store.write(fn)

    def dismiss(self, row_id: str, reason: str = "dismissed") -> None:
        """A person gives up on a failed row; it stays in the table as done+dismissed."""
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] != FAILED:
                raise BadInput(f"queue row {row_id} is {doc['state']}, not failed")
            self._set(db, row_id, doc, state=DONE, dismissed=reason)
        self._store.write(fn)

    def set_priority(self, row_id: str, priority: int) -> None:
        def fn(db):
            doc = self._get(db, row_id)
            if doc["priority"] == priority:
                return
            new = self._set(db, row_id, doc, priority=int(priority))
            if new["state"] == READY:
                self._push_ready(new)
        self._store.write(fn)

    def get(self, row_id: str) -> QueueRow:
        return self._store.read(lambda db: QueueRow.from_doc(self._get(db, row_id)))

    def counts(self) -> dict[str, dict[str, int]]:
        return self._store.read(lambda db: {k: dict(v) for k, v in self._counts.items()})

    def oldest(self, kind: str) -> float | None:
        """Creation time of the oldest row of `kind` still waiting (ready or leased)."""
        return self._store.read(lambda db: min(self._waiting[kind].values(), default=None))

    def rows(self, kind: str | None = None, state: str | None = None) -> list[QueueRow]:
        def fn(db):
            return [QueueRow.from_doc(d) for d in self._table(db).all()
                    if (kind is None or d["kind"] == kind) and (state is None or d["state"] == state)]
        return self._store.read(fn)

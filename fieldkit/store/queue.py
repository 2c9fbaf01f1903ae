"""The job queue: rows in the `queue` table, indexed in memory so that leasing the next
job costs O(log n), not a scan of every row ever queued.

A row: our own id (never a TinyDB doc id: those are reused), kind, priority (lower first),
state ready → leased → done | failed, attempts, next-attempt time, last error. Leases left
by a crash return to ready at open; a lease that expires while the kit runs (a stuck
worker) returns to ready at the next lease. Failed rows stay until a person retries or
dismisses them.

Time: the persisted `next_at` and `lease_until` are wall-clock times (shown to people, and
the next start re-bases them), but inside a run the queue decides on in-memory monotonic
deadlines, so setting the device clock can neither expire a lease early, freeze it, nor
turn a 30 s retry into an hour or into nothing.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from typing import TYPE_CHECKING

from ..errors import BadInput, NotFound
from ..records import DONE, FAILED, KINDS, LEASED, READY, STATES, T_QUEUE, QueueRow
from ..security.passwords import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from . import Store


class Queue:
    def __init__(self, store: "Store", clock: Clock = SYSTEM_CLOCK):
        self._store = store
        self._seq = itertools.count()
        self._doc_ids: dict[str, int] = {}
        self._ready: dict[str, list] = {k: [] for k in KINDS}    # (priority, seq, id)
        self._delayed: dict[str, list] = {k: [] for k in KINDS}  # (due, seq, id)
        self._leases: list = []                                  # (lease deadline, id)
        self._lease_due: dict[str, float] = {}                   # leased: id -> monotonic deadline
        self._due: dict[str, float] = {}                         # ready: id -> monotonic not-before
        self._live_keys: dict[tuple[str, str], str] = {}
        self._counts = {k: {s: 0 for s in STATES} for k in KINDS}
        self._waiting: dict[str, dict[str, float]] = {k: {} for k in KINDS}  # ready/leased: id -> created
        self.clock = clock  # wall() for what is persisted, mono() for what is decided

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
            self._hold(row_id, self._rebased(doc["lease_until"]))

    def _rebased(self, wall_time: float) -> float:
        """A persisted wall-clock time as a monotonic one (when read from the store)."""
        return self.clock.mono() + (wall_time - self.clock.wall())

    def _hold(self, row_id: str, deadline: float) -> None:
        self._lease_due[row_id] = deadline
        heapq.heappush(self._leases, (deadline, row_id))

    def _push_ready(self, doc: dict, due: float | None = None) -> None:
        """Index a ready row; `due` is its monotonic not-before time (default: the one it
        has, else its persisted next_at re-based)."""
        row_id = doc["id"]
        if due is None:
            due = self._due.get(row_id)
        if due is None:
            due = self._rebased(doc["next_at"])
        self._due[row_id] = due
        if due > self.clock.mono():
            heapq.heappush(self._delayed[doc["kind"]], (due, next(self._seq), row_id))
        else:
            heapq.heappush(self._ready[doc["kind"]], (doc["priority"], next(self._seq), row_id))

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
        fields["updated"] = self.clock.wall()
        self._table(db).update(fields, doc_ids=[self._doc_ids[row_id]])
        new = dict(old, **fields)
        kind = old["kind"]
        if new["state"] != old["state"]:
            if new["state"] != READY:
                self._due.pop(row_id, None)
            if old["state"] == LEASED:
                self._lease_due.pop(row_id, None)
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
            now = self.clock.wall()
            doc = {"id": uuid.uuid4().hex, "kind": kind, "priority": int(priority), "state": READY,
                   "attempts": 0, "next_at": now + delay, "payload": payload, "last_error": "",
                   "key": key or "", "created": now, "updated": now, "lease_until": 0.0}
            doc_id = self._table(db).insert(doc)
            self._due[doc["id"]] = self.clock.mono() + delay
            self._index(doc, doc_id)
            return doc["id"]

        return self._store.write(fn)

    def lease(self, kind: str, lease_seconds: float = 300.0) -> QueueRow | None:
        """The most urgent ready row of `kind`, now leased to the caller; None if none."""

        def fn(db):
            now = self.clock.mono()
            self._reclaim_expired(db, now)
            delayed, ready = self._delayed[kind], self._ready[kind]
            self._promote(db, kind, now)
            while ready:
                priority, _, row_id = heapq.heappop(ready)
                doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
                if doc is None or doc["state"] != READY or doc["priority"] != priority:
                    continue  # superseded entry (re-prioritised, retried, …)
                due = self._due.get(row_id, now)
                if due > now:
                    heapq.heappush(delayed, (due, next(self._seq), row_id))
                    continue
                new = self._set(db, row_id, doc, state=LEASED, attempts=doc["attempts"] + 1,
                                lease_until=self.clock.wall() + lease_seconds)
                self._hold(row_id, now + lease_seconds)
                return QueueRow.from_doc(new)
            return None

        # Not waiting for fsync: a lease lost in a crash only means the row is ready again,
        # which is what a crash does to every lease anyway.
        return self._store.write(fn, durable=False)

    def most_urgent_ready(self, kind: str) -> int | None:
        """The priority of the most urgent row of `kind` that lease() would hand out now."""
        def fn(db):
            now = self.clock.mono()
            self._promote(db, kind, now)
            ready = self._ready[kind]
            while ready:
                priority, _, row_id = ready[0]
                doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
                if doc is None or doc["state"] != READY or doc["priority"] != priority:
                    heapq.heappop(ready)  # superseded entry, as lease() would drop it
                    continue
                if self._due.get(row_id, now) > now:
                    heapq.heappop(ready)
                    heapq.heappush(self._delayed[kind], (self._due[row_id], next(self._seq), row_id))
                    continue
                return priority
            return None
        return self._store.read(fn)

    def _promote(self, db, kind: str, now: float) -> None:
        """Delayed rows whose time has come join the ready heap."""
        delayed, ready = self._delayed[kind], self._ready[kind]
        while delayed and delayed[0][0] <= now:
            _, _, row_id = heapq.heappop(delayed)
            heapq.heappush(ready, (self._priority_of(db, row_id), next(self._seq), row_id))

    def _priority_of(self, db, row_id: str) -> int:
        doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
        return doc["priority"] if doc else 0

    def _reclaim_expired(self, db, now: float) -> None:
        while self._leases and self._leases[0][0] <= now:
            until, row_id = heapq.heappop(self._leases)
            if self._lease_due.get(row_id) != until:
                continue  # acked, failed or leased again since
            doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
            if doc and doc["state"] == LEASED:
                new = self._set(db, row_id, doc, state=READY, lease_until=0.0,
                                last_error="lease expired (worker stopped or stuck)")
                self._push_ready(new, due=now)

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
                                next_at=self.clock.wall() + retry_in)
                self._push_ready(new, due=self.clock.mono() + retry_in)
        self._store.write(fn)

    def retry(self, row_id: str) -> None:
        """A person sends a failed row back to work."""
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] != FAILED:
                raise BadInput(f"queue row {row_id} is {doc['state']}, not failed")
            new = self._set(db, row_id, doc, state=READY, next_at=self.clock.wall(), attempts=0)
            self._push_ready(new, due=self.clock.mono())
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

"""The job queue: rows in the `queue` table, indexed in memory so that leasing the next
job costs O(log n), not a scan of every row ever queued.

A row: our own id (never a TinyDB doc id: those are reused), kind, priority (lower first),
state ready → leased → done | failed, attempts, next-attempt time, last error. Leases left
by a crash return to ready at open; a lease that expires while the kit runs (a stuck
worker) returns to ready at the next lease. Failed rows stay until a person retries or
dismisses them.

Done rows do not stay: the newest `KEEP_DONE` of each kind remain (recent history, shown
by sync status), older ones are compacted out of the table in the same journal record
that finishes a row, leaving only their number in an archive document (`meta` table,
`queue_archive`: done and dismissed counts per kind), so `counts()` still counts them.
Counts, waiting bytes and the oldest waiting row are kept up to date as rows move, so
status never scans the table.

Time: the persisted `next_at` and `lease_until` are wall-clock times (shown to people, and
the next start re-bases them), but inside a run the queue decides on in-memory monotonic
deadlines, so setting the device clock can neither expire a lease early, freeze it, nor
turn a 30 s retry into an hour or into nothing.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import deque
from typing import TYPE_CHECKING, Iterator

from ..errors import BadInput, NotFound
from ..records import DONE, FAILED, KIND_INFER, KINDS, LEASED, READY, STATES, T_INSTANCES, T_QUEUE, QueueRow
from ..security.passwords import SYSTEM_CLOCK, Clock
from . import meta

if TYPE_CHECKING:
    from . import Store

KEEP_DONE = 256          # done rows kept in the table per kind; older ones are only counted
COMPACT_STEP = 512       # at most this many archived per write (an old backlog drains gradually)
ARCHIVE = "queue_archive"
UPDATE_BYTES = 2048      # what a triage/identity update weighs on the wire, about


def _heap_order(heap: list) -> Iterator:
    """A heap's entries smallest first, without popping: O(k log k) for the first k."""
    frontier = [(heap[0], 0)] if heap else []
    while frontier:
        entry, i = heapq.heappop(frontier)
        yield entry
        for child in (2 * i + 1, 2 * i + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))


def _subject(doc: dict) -> str:
    """What a row is about: an instance (SOP Instance UID) or a patient (an update)."""
    payload = doc.get("payload") or {}
    return str(payload.get("sop_instance_uid") or payload.get("patient_id") or "")


NEWEST_FIRST = (KIND_INFER,)


class Queue:
    def __init__(self, store: "Store", clock: Clock = SYSTEM_CLOCK):
        self._store = store
        self.clock = clock  # wall() for what is persisted, mono() for what is decided
        self._clear_index()

    def _clear_index(self) -> None:
        self._seq = itertools.count()
        self._doc_ids: dict[str, int] = {}
        self._ready: dict[str, list] = {k: [] for k in KINDS}    # (priority, order, id)
        self._delayed: dict[str, list] = {k: [] for k in KINDS}  # (due, seq, id)
        self._leases: list = []                                  # (lease deadline, id)
        self._lease_due: dict[str, float] = {}                   # leased: id -> monotonic deadline
        self._due: dict[str, float] = {}                         # ready: id -> monotonic not-before
        self._live_keys: dict[tuple[str, str], str] = {}
        self._counts = {k: {s: 0 for s in STATES} for k in KINDS}
        self._waiting: dict[str, dict[str, float]] = {k: {} for k in KINDS}  # ready/leased: id -> created
        self._oldest: dict[str, list] = {k: [] for k in KINDS}  # (created, id), stale entries skipped
        self._waiting_bytes = {k: 0 for k in KINDS}
        self._failed: dict[str, dict[str, None]] = {k: {} for k in KINDS}
        self._done: dict[str, deque] = {k: deque() for k in KINDS}  # done ids in the table, oldest first
        self._dismissed = {k: 0 for k in KINDS}  # done rows a person gave up on (archived included)
        self._archived = {k: {"done": 0, "dismissed": 0} for k in KINDS}
        self._by_subject: dict[tuple[str, str], dict[str, None]] = {}  # rows not done, not keyed by subject

    # loading ---------------------------------------------------------------------------
    def load(self, db) -> int:
        """At open: leases left by a crash go back to ready, then every row is indexed.
        Returns how many leases were reset.

        The reset is made in memory only (nothing is written while the store opens): the
        journal keeps saying "leased" until the row next changes, and a later open resets
        it again."""
        raw = db.storage.read().get(T_QUEUE, {})  # the live rows, without copying 100 000 dicts
        resumed = {key: dict(doc, state=READY, lease_until=0.0)
                   for key, doc in raw.items() if doc["state"] == LEASED}
        if resumed:
            db.storage.apply({"t": T_QUEUE, "p": resumed, "d": []})
        self.reindex(db)
        return len(resumed)

    def reindex(self, db) -> None:
        """Rebuild the in-memory index from the rows in memory (at open, after a rollback)."""
        self._clear_index()
        archive = meta.get(db, ARCHIVE) or {}
        for kind in KINDS:
            self._archived[kind] = dict({"done": 0, "dismissed": 0}, **archive.get(kind, {}))
            self._counts[kind][DONE] += sum(self._archived[kind].values())
            self._dismissed[kind] += self._archived[kind]["dismissed"]
        done = []
        for key, doc in db.storage.read().get(T_QUEUE, {}).items():
            if doc["state"] == DONE:
                done.append((doc["updated"], doc["kind"], doc["id"]))
            self._index(db, doc, int(key))
        for _, kind, row_id in sorted(done):
            self._done[kind].append(row_id)
        db.table(T_QUEUE).clear_cache()

    def _index(self, db, doc: dict, doc_id=None) -> None:
        kind, state, row_id = doc["kind"], doc["state"], doc["id"]
        if doc_id is not None:
            self._doc_ids[row_id] = doc_id
        self._counts[kind][state] += 1
        if state in (READY, LEASED):
            self._wait(db, doc)
        elif state == FAILED:
            self._failed[kind][row_id] = None
        elif doc.get("dismissed"):
            self._dismissed[kind] += 1
        if state != DONE:
            if doc.get("key") != _subject(doc):  # the others are found through _live_keys
                self._by_subject.setdefault((kind, _subject(doc)), {})[row_id] = None
            if doc.get("key"):
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
            heapq.heappush(self._ready[doc["kind"]], (doc["priority"], self._order(doc), row_id))

    def _wait(self, db, doc: dict) -> None:
        """The row starts waiting (ready or leased): count it and its bytes."""
        kind, row_id = doc["kind"], doc["id"]
        if row_id in self._waiting[kind]:
            return
        self._waiting[kind][row_id] = doc["created"]
        heapq.heappush(self._oldest[kind], (doc["created"], row_id))
        self._waiting_bytes[kind] += self._size_of(db, doc)

    def _unwait(self, db, doc: dict) -> None:
        if self._waiting[doc["kind"]].pop(doc["id"], None) is not None:
            # an instance's size never changes once stored: the same figure comes off
            self._waiting_bytes[doc["kind"]] -= self._size_of(db, doc)

    @staticmethod
    def _size_of(db, doc: dict) -> int:
        uid = (doc.get("payload") or {}).get("sop_instance_uid")
        if not uid:
            return UPDATE_BYTES
        keys = db.storage.keys(T_INSTANCES, "sop_instance_uid", uid)
        return int(db.storage.doc(T_INSTANCES, keys[0]).get("size") or 0) if keys else 0

    def _finished(self, db, doc: dict) -> None:
        """The row is done: keep it among the recent ones, archive the oldest beyond those."""
        kind = doc["kind"]
        self._done[kind].append(doc["id"])
        subject = (kind, _subject(doc))
        self._by_subject.get(subject, {}).pop(doc["id"], None)
        if not self._by_subject.get(subject, True):
            del self._by_subject[subject]
        if doc.get("dismissed"):
            self._dismissed[kind] += 1
        drop, done = [], self._done[kind]
        while len(done) > KEEP_DONE and len(drop) < COMPACT_STEP:
            row_id = done.popleft()
            doc_id = self._doc_ids.pop(row_id, None)
            old = self._table(db).get(doc_id=doc_id) if doc_id is not None else None
            if old is None:
                continue
            drop.append(doc_id)
            self._archived[kind]["dismissed" if old.get("dismissed") else "done"] += 1
        if drop:
            self._table(db).remove(doc_ids=drop)
            meta.put(db, ARCHIVE, {k: dict(v) for k, v in self._archived.items()})

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
                self._wait(db, new)
            else:
                self._unwait(db, old)
            if old["state"] == FAILED:
                self._failed[kind].pop(row_id, None)
            if new["state"] == FAILED:
                self._failed[kind][row_id] = None
            if new["state"] == DONE:
                if old.get("key"):
                    self._live_keys.pop((kind, old["key"]), None)
                self._finished(db, new)
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
            self._index(db, doc, doc_id)
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
            doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
            if doc is not None:
                heapq.heappush(ready, (doc["priority"], self._order(doc), row_id))

    def _order(self, doc: dict) -> float:
        """Order within one priority: oldest first, but newest first for infer rows (the
        capture just taken is the one a clinician is waiting on; a backlog can wait)."""
        return -doc["created"] if doc["kind"] in NEWEST_FIRST else next(self._seq)

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

    def cancel(self, row_id: str, reason: str) -> bool:
        """Withdraw a row nobody has started (ready, maybe delayed): done, marked cancelled.
        A leased or finished row is left alone (False)."""
        def fn(db):
            doc = self._get(db, row_id)
            if doc["state"] != READY:
                return False
            self._set(db, row_id, doc, state=DONE, dismissed=f"cancelled: {reason}"[:2000])
            return True
        return self._store.write(fn)

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
        def fn(db):
            heap, waiting = self._oldest[kind], self._waiting[kind]
            while heap and waiting.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)  # no longer waiting (or waiting again, pushed anew)
            return heap[0][0] if heap else None
        return self._store.read(fn)

    def waiting_bytes(self, kind: str) -> int:
        """Bytes of the instances that rows of `kind` still wait to handle."""
        return self._store.read(lambda db: self._waiting_bytes[kind])

    def dismissed(self, kind: str) -> int:
        """Done rows of `kind` that a person dismissed (archived ones included)."""
        return self._store.read(lambda db: self._dismissed[kind])

    def _rows_by_id(self, db, ids) -> Iterator[QueueRow]:
        for row_id in ids:
            doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
            if doc is not None:
                yield QueueRow.from_doc(doc)

    def _dismissed_row(self, db, row_id: str) -> bool:
        return bool((db.storage.doc(T_QUEUE, str(self._doc_ids.get(row_id, -1))) or {}).get("dismissed"))

    def rows_by_id(self, row_ids) -> list[QueueRow]:
        """The rows still in the table among `row_ids` (done ones may have been archived)."""
        return self._store.read(lambda db: list(self._rows_by_id(db, row_ids)))

    def first(self, kind: str, state: str, limit: int) -> list[QueueRow]:
        """Up to `limit` rows of `kind` in `state`, without a scan: ready ones most urgent
        first (due before delayed), failed ones in the order they failed, done ones newest
        first (only the recent ones the table keeps), leased ones in no particular order."""
        def fn(db):
            if state == READY:
                ids: dict[str, None] = {}
                for heap in (self._ready[kind], self._delayed[kind]):
                    for _, _, row_id in _heap_order(heap):
                        if len(ids) >= limit:
                            break
                        doc = self._table(db).get(doc_id=self._doc_ids.get(row_id, -1))
                        if doc is not None and doc["state"] == READY:
                            ids[row_id] = None
                return list(self._rows_by_id(db, ids))
            if state == FAILED:
                return list(self._rows_by_id(db, itertools.islice(self._failed[kind], limit)))
            if state == DONE:
                rows = (r for r in self._rows_by_id(db, reversed(self._done[kind])) if not self._dismissed_row(db, r.id))
                return list(itertools.islice(rows, limit))
            rows = (r for r in self._rows_by_id(db, self._waiting[kind]) if r.state == LEASED)
            return list(itertools.islice(rows, limit))
        return self._store.read(fn)

    def priorities(self, row_ids) -> dict[str, int]:
        """Current priority of each row still in the table."""
        return {r.id: r.priority for r in self.rows_by_id(row_ids)}

    def live_id(self, kind: str, key: str) -> str | None:
        """The row of (kind, key) not yet done, if any."""
        return self._store.read(lambda db: self._live_keys.get((kind, key)))

    def live_rows(self, kind: str, subjects) -> list[QueueRow]:
        """Rows of `kind` not done about any of `subjects` (SOP Instance UIDs, patient ids)."""
        wanted = {str(s) for s in subjects}

        def fn(db):
            ids: dict[str, None] = {}
            for s in wanted:
                ids.update(self._by_subject.get((kind, s), {}))
                row_id = self._live_keys.get((kind, s))
                if row_id is not None:
                    ids[row_id] = None
            # a key equal to a subject may belong to a row about something else: check
            return [r for r in self._rows_by_id(db, ids) if _subject({"payload": r.payload}) in wanted]
        return self._store.read(fn)

    def rows(self, kind: str | None = None, state: str | None = None) -> list[QueueRow]:
        def fn(db):
            return [QueueRow.from_doc(d) for d in self._table(db).all()
                    if (kind is None or d["kind"] == kind) and (state is None or d["state"] == state)]
        return self._store.read(fn)

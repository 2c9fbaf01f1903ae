"""TinyDB on top of the journal, with write cost proportional to what changed.

TinyDB's stock `Table._update_table` rebuilds the whole table dict on every write and hands
the whole database to the storage. `JournalTable` instead lets TinyDB's own updaters run on
a view that records which documents were set, changed or removed, and hands only those to
the storage as one journal record. Documents are held in memory (the database is
metadata; pixels live in blobs), so reads cost what TinyDB's reads cost.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Iterator

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table


class _TrackingView(MutableMapping):
    """A table as TinyDB's updaters see it (int doc ids), noting what they change."""

    def __init__(self, raw: dict[str, dict], id_class):
        self._raw = raw
        self._id = id_class
        self._handed_out: dict[str, tuple[dict, dict]] = {}
        self.puts: set[str] = set()
        self.dels: set[str] = set()
        self.before: dict[str, dict | None] = {}  # pre-images (None: absent), to roll back

    def _note_before(self, key: str) -> None:
        if key not in self.before:
            handed = self._handed_out.get(key)
            self.before[key] = handed[0] if handed else self._raw.get(key)

    def __getitem__(self, doc_id) -> dict:
        key = str(doc_id)
        if key in self._handed_out:
            return self._handed_out[key][1]
        original = self._raw[key]
        copy = dict(original)  # the updater may change it in place; compared afterwards
        self._handed_out[key] = (original, copy)
        return copy

    def __setitem__(self, doc_id, doc: dict) -> None:
        key = str(doc_id)
        self._note_before(key)
        self._handed_out.pop(key, None)
        self._raw[key] = doc
        self.puts.add(key)
        self.dels.discard(key)

    def __delitem__(self, doc_id) -> None:
        key = str(doc_id)
        self._note_before(key)
        del self._raw[key]
        self._handed_out.pop(key, None)
        self.puts.discard(key)
        self.dels.add(key)

    def __contains__(self, doc_id) -> bool:
        return str(doc_id) in self._raw

    def __iter__(self) -> Iterator:
        return (self._id(k) for k in list(self._raw))

    def __len__(self) -> int:
        return len(self._raw)

    def finish(self) -> tuple[dict[str, dict], list[str]]:
        for key, (original, copy) in self._handed_out.items():
            if self._raw.get(key) is original and copy != original:
                self._note_before(key)
                self._raw[key] = copy
                self.puts.add(key)
        return {k: self._raw[k] for k in self.puts}, sorted(self.dels)


class JournalTable(Table):
    def _update_table(self, updater) -> None:
        tables = self._storage.read()
        raw = tables.setdefault(self.name, {})
        view = _TrackingView(raw, self.document_id_class)
        try:
            updater(view)
        finally:
            puts, dels = view.finish()
            if puts or dels:
                self._storage.record_change(self.name, puts, dels, view.before)
            self.clear_cache()


class MemoryStorage(Storage):
    """The live state; changes reach disk through `record_change` (see Store)."""

    def __init__(self, on_change):
        self.data: dict[str, dict[str, Any]] = {}
        self._on_change = on_change
        # Inverse change records of what changed since the last commit, oldest first.
        self._undo: list[dict] = []

    def read(self) -> dict:
        return self.data

    def write(self, data: dict) -> None:
        # Only TinyDB.drop_table(s) comes here (JournalDB hands a new dict): journal the
        # full replacement (rare).
        self._undo.append({"reset": self.data})
        self.data = data
        self._on_change({"reset": data})

    def record_change(self, table: str, puts: dict, dels: list, before: dict | None = None) -> None:
        if before is not None:
            self._undo.append({"t": table, "p": {k: v for k, v in before.items() if v is not None},
                               "d": [k for k, v in before.items() if v is None]})
        self._on_change({"t": table, "p": puts, "d": dels})

    def committed(self) -> None:
        """The changes so far are in the journal: nothing to roll back any more."""
        self._undo.clear()

    def rollback(self) -> None:
        """Undo every change since the last commit (its journal append failed), newest
        first, through `apply` like any other change record."""
        while self._undo:
            self.apply(self._undo.pop())

    def apply(self, record: dict) -> None:
        """Replay one journal record into memory."""
        if "reset" in record:
            self.data = record["reset"]
            return
        for rec in record.get("batch", [record]):
            if "reset" in rec:
                self.data = rec["reset"]
                continue
            table = self.data.setdefault(rec["t"], {})
            table.update(rec.get("p", {}))
            for key in rec.get("d", ()):
                table.pop(key, None)

    def snapshot_records(self, per_record: int = 2000):
        """The live state as journal records, for compaction."""
        yield {"reset": {}}
        for name, table in self.data.items():
            items = list(table.items())
            if not items:
                yield {"t": name, "p": {}, "d": []}
            for i in range(0, len(items), per_record):
                yield {"t": name, "p": dict(items[i:i + per_record]), "d": []}


class JournalDB(TinyDB):
    def drop_table(self, name: str) -> None:
        # TinyDB's own deletes the table from the live dict in place; hand the storage a new
        # dict instead, so that the old one stays whole for a rollback.
        self._tables.pop(name, None)
        data = self.storage.read()
        if name in data:
            self.storage.write({k: v for k, v in data.items() if k != name})


def make_tinydb(storage: MemoryStorage) -> TinyDB:
    db = JournalDB(storage=lambda: storage)
    db.table_class = JournalTable
    return db

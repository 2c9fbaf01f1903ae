"""TinyDB on top of the journal, with write cost proportional to what changed.

TinyDB's stock `Table._update_table` rebuilds the whole table dict on every write and hands
the whole database to the storage. `JournalTable` instead lets TinyDB's own updaters run on
a view that records which documents were set, changed or removed, and hands only those to
the storage as one journal record. Documents are held in memory (the database is
metadata; pixels live in blobs).

Secondary indexes (`FieldIndex`, one per indexed field of a table) are kept by the storage
itself, in `_changed`, the one place every change passes through: a live write
(`record_change`), a journal record replayed at open (`apply`) and a whole-table
replacement (`write`, `clear`). Reads by patient, study, series or UID then cost what
they return, not a scan of the table.
"""

from __future__ import annotations

import sys
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


class FieldIndex:
    """value -> the doc keys holding it (in the order they got it), and back.

    Most indexed values belong to one doc (a SOP Instance UID): such a value maps to its
    key alone, and only a value several docs share gets a dict of keys (ordered, so the
    last one to take the value is known). One dict per UID cost ~180 bytes a row."""

    def __init__(self):
        self.keys_of: dict[Any, str | dict[str, None]] = {}
        self.value_of: dict[str, Any] = {}

    def put(self, key: str, doc: dict, field: str) -> None:
        value = doc.get(field)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = None  # only scalar values are indexed
        old = self.value_of.get(key)
        if key in self.value_of and old == value:
            return
        self.drop(key)
        if value is not None:
            self.value_of[key] = value
            held = self.keys_of.get(value)
            if held is None:
                self.keys_of[value] = key
            elif type(held) is str:
                self.keys_of[value] = {held: None, key: None}
            else:
                held[key] = None

    def drop(self, key: str) -> None:
        if key in self.value_of:
            value = self.value_of.pop(key)
            held = self.keys_of[value]
            if type(held) is str:
                del self.keys_of[value]
                return
            held.pop(key, None)
            if not held:
                del self.keys_of[value]

    def keys(self, value) -> tuple | dict:
        """The keys holding `value`, in the order they took it."""
        held = self.keys_of.get(value)
        if held is None:
            return ()
        return (held,) if type(held) is str else held


class MemoryStorage(Storage):
    """The live state; changes reach disk through `record_change` (see Store).

    `indexed` names the fields indexed per table: {"instances": ("patient_id", ...)}.
    `shared` names fields whose text values repeat across documents (UIDs a queue row and
    a catalogue row both hold, a modality): held once in memory, as are all field names."""

    def __init__(self, on_change, indexed: dict[str, tuple[str, ...]] | None = None,
                 shared: frozenset[str] = frozenset()):
        self.data: dict[str, dict[str, Any]] = {}
        self._on_change = on_change
        # Inverse change records of what changed since the last commit, oldest first.
        self._undo: list[dict] = []
        self._indexed = dict(indexed or {})
        self._shared = shared
        self._indexes: dict[str, dict[str, FieldIndex]] = {}
        self._reindex_all()

    def read(self) -> dict:
        return self.data

    def write(self, data: dict) -> None:
        # Only TinyDB.drop_table(s) comes here (JournalDB hands a new dict): journal the
        # full replacement (rare).
        self._undo.append({"reset": self.data})
        self.data = data
        self._reindex_all()
        self._on_change({"reset": data})

    def clear(self) -> None:
        """Forget everything held (before a replay)."""
        self.data = {}
        self._reindex_all()

    def record_change(self, table: str, puts: dict, dels: list, before: dict | None = None) -> None:
        """A live write: the docs are already in `data` (TinyDB's updaters put them);
        `before` holds their pre-images (None: the doc was new), for a rollback."""
        if before is not None:
            self._undo.append({"t": table, "p": {k: v for k, v in before.items() if v is not None},
                               "d": [k for k, v in before.items() if v is None]})
        self._on_change({"t": table, "p": puts, "d": dels})
        live = self.data[table]
        compacted = {key: self._compact(doc) for key, doc in puts.items()}
        live.update(compacted)
        self._changed(table, compacted, dels)

    def _compact(self, doc):
        """The same document, holding its field names and shared values once per process
        (a journal record decodes into fresh strings; 100 000 rows repeat them)."""
        if not isinstance(doc, dict):
            return doc
        shared, intern = self._shared, sys.intern
        out = {}
        for k, v in doc.items():
            if k in shared:
                if type(v) is str and len(v) <= 128:
                    v = intern(v)
                elif type(v) is dict:
                    v = self._compact(v)
            out[intern(k)] = v
        return out

    def committed(self) -> None:
        """The changes so far are in the journal: nothing to roll back any more."""
        self._undo.clear()

    def rollback(self) -> None:
        """Undo every change since the last commit (its journal append failed), newest
        first, through `apply` like any other change record."""
        while self._undo:
            self.apply(self._undo.pop())

    def apply(self, record: dict) -> None:
        """Replay one journal record into memory (also how a change is undone: replaying
        the inverse record keeps the indexes right)."""
        for rec in record.get("batch", [record]):
            if "reset" in rec:
                self.data = {name: {key: self._compact(doc) for key, doc in docs.items()}
                             for name, docs in rec["reset"].items()}
                self._reindex_all()
                continue
            table = self.data.setdefault(rec["t"], {})
            puts = {key: self._compact(doc) for key, doc in rec.get("p", {}).items()}
            table.update(puts)
            for key in rec.get("d", ()):
                table.pop(key, None)
            self._changed(rec["t"], puts, rec.get("d", ()))

    # indexes -----------------------------------------------------------------------------
    def _changed(self, table: str, puts: dict, dels) -> None:
        """Every change of every table passes here: keep the indexes in step."""
        indexes = self._indexes.get(table)
        if not indexes:
            return
        for field, index in indexes.items():
            for key, doc in puts.items():
                index.put(key, doc, field)
            for key in dels:
                index.drop(key)

    def _reindex_all(self) -> None:
        self._indexes = {t: {f: FieldIndex() for f in fields} for t, fields in self._indexed.items()}
        for table in self._indexed:
            self._changed(table, self.data.get(table, {}), ())

    def keys(self, table: str, field: str, value) -> list[str]:
        """Keys of the docs of `table` whose `field` is `value`, in table order."""
        keys = self._indexes[table][field].keys(value)
        return sorted(keys, key=int) if len(keys) > 1 else list(keys)

    def values(self, table: str, field: str) -> list:
        """The distinct values of an indexed field."""
        return list(self._indexes[table][field].keys_of)

    def last_key(self, table: str, field: str, value) -> str | None:
        """The key that took `value` last (the newest row of a study, say)."""
        keys = self._indexes[table][field].keys(value)
        return next(reversed(keys)) if keys else None

    def count(self, table: str, field: str, value) -> int:
        return len(self._indexes[table][field].keys(value))

    def doc(self, table: str, key: str) -> dict | None:
        """The live doc (not a copy: callers copy what they hand out)."""
        return self.data.get(table, {}).get(key)

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

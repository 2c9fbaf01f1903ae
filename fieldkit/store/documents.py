"""TinyDB on top of the journal, with write cost proportional to what changed.

TinyDB's stock write methods rebuild the whole table dict on every write and hand the
whole database to the storage. `JournalTable` (plugged in through TinyDB's public
`table_class`) overrides those public methods to hand the storage only the documents set
and removed, as one journal record. Nothing here touches TinyDB's private attributes
(`tests/test_store_tinydb_public.py` checks). Documents are held in memory (the database is
metadata; pixels live in blobs).

Secondary indexes (`FieldIndex`, one per indexed field of a table) are kept by the storage
itself, in `_changed`, the one place every change passes through: a live write
(`change`), a journal record replayed at open (`apply`) and a whole-table
replacement (`write`, `clear`). Reads by patient, study, series or UID then cost what
they return, not a scan of the table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from tinydb import TinyDB
from tinydb.queries import QueryLike
from tinydb.storages import Storage
from tinydb.table import Table


class JournalTable(Table):
    """TinyDB's table, whose writes hand the storage only what they changed.

    TinyDB's own write methods rebuild the whole table and hand the whole database to the
    storage on every write. These overrides of its public write methods keep their
    signatures and semantics (ids, return values, errors) but give `MemoryStorage.change`
    the documents set and the ids removed. Reads are TinyDB's own. A call that raises
    changes nothing."""

    def _docs(self) -> dict[str, dict]:
        return self.storage.docs(self.name)

    def insert(self, document: Mapping) -> int:
        if isinstance(document, self.document_class):
            self.storage.restart_ids(self.name)  # as TinyDB: the next id is then found anew
        return self.insert_multiple([document])[0]

    def insert_multiple(self, documents: Iterable[Mapping]) -> list[int]:
        live, puts, ids = self._docs(), {}, []
        for document in documents:
            if not isinstance(document, Mapping):
                raise ValueError("Document is not a Mapping")
            if isinstance(document, self.document_class):
                doc_id = document.doc_id
                if str(doc_id) in live or str(doc_id) in puts:
                    raise ValueError(f"Document with ID {doc_id} already exists")
            else:
                doc_id = self.storage.new_id(self.name)
            ids.append(doc_id)
            puts[str(doc_id)] = dict(document)
        self._change(puts, ())
        return ids

    def update(self, fields: Mapping | Callable[[MutableMapping], None], cond: QueryLike | None = None,
               doc_ids: Iterable[int] | None = None) -> list[int]:
        live = self._docs()
        if doc_ids is not None:
            ids = [doc_id for doc_id in doc_ids if str(doc_id) in live]
        else:
            ids = [self.document_id_class(key) for key, doc in live.items() if cond is None or cond(doc)]
        puts: dict[str, dict] = {}
        for doc_id in ids:
            key = str(doc_id)
            puts[key] = _edited(puts.get(key, live[key]), fields)
        self._change({key: doc for key, doc in puts.items() if doc != live[key]}, ())
        return ids

    def update_multiple(self, updates: Iterable[tuple[Mapping | Callable[[MutableMapping], None], QueryLike]]
                        ) -> list[int]:
        updates = list(updates)
        puts, ids = {}, []
        for key, old in self._docs().items():
            doc = old
            for fields, cond in updates:
                if cond(doc):
                    ids.append(self.document_id_class(key))
                    doc = _edited(doc, fields)
            if doc != old:
                puts[key] = doc
        self._change(puts, ())
        return ids

    def remove(self, cond: QueryLike | None = None, doc_ids: Iterable[int] | None = None) -> list[int]:
        live = self._docs()
        if doc_ids is not None:
            ids = [doc_id for doc_id in dict.fromkeys(doc_ids) if str(doc_id) in live]
        elif cond is not None:
            ids = [self.document_id_class(key) for key, doc in live.items() if cond(doc)]
        else:
            raise RuntimeError("Use truncate() to remove all documents")
        self._change({}, [str(doc_id) for doc_id in ids])
        return ids

    def truncate(self) -> None:
        self._change({}, list(self._docs()))
        self.storage.restart_ids(self.name)

    def _change(self, puts: dict[str, dict], dels) -> None:
        if puts or dels:
            self.storage.change(self.name, puts, dels)
            self.clear_cache()


def _edited(doc: Mapping, fields) -> dict:
    """A copy of `doc` with `fields` applied (a mapping to merge, or a callable that edits)."""
    doc = dict(doc)
    if callable(fields):
        fields(doc)
    else:
        doc.update(fields)
    return doc


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
        self._next_ids: dict[str, int] = {}  # per table, found from the largest id when missing
        self._reindex_all()

    def read(self) -> dict:
        # A new outer dict (the tables are shared, not copied): TinyDB's drop_table deletes
        # from what it reads, and the live one must stay whole for a rollback.
        return dict(self.data)

    def write(self, data: dict) -> None:
        # Only TinyDB.drop_table(s) comes here (JournalTable writes through `change`):
        # journal the full replacement (rare).
        self._undo.append({"reset": self.data})
        self._next_ids = {t: n for t, n in self._next_ids.items() if data.get(t) is self.data.get(t)}
        self.data = data
        self._reindex_all()
        self._on_change({"reset": data})

    def clear(self) -> None:
        """Forget everything held (before a replay)."""
        self.data = {}
        self._next_ids.clear()
        self._reindex_all()

    def docs(self, table: str) -> dict[str, dict]:
        """The live docs of `table` by key (not copies: callers copy what they hand out)."""
        return self.data.get(table, {})

    def new_id(self, table: str) -> int:
        """The next document id of `table`: one past the largest, then counting on (as TinyDB)."""
        next_id = self._next_ids.get(table)
        if next_id is None:
            next_id = max(map(int, self.data.get(table, ())), default=0) + 1
        self._next_ids[table] = next_id + 1
        return next_id

    def restart_ids(self, table: str) -> None:
        self._next_ids.pop(table, None)

    def change(self, table: str, puts: dict[str, dict], dels) -> None:
        """A live write of one table: `puts` (key -> new doc) and `dels` (keys); keeps
        the pre-images for a rollback."""
        live = self.data.setdefault(table, {})
        keys = [*puts, *dels]
        self._undo.append({"t": table, "p": {k: live[k] for k in keys if k in live},
                           "d": [k for k in keys if k not in live]})
        self._on_change({"t": table, "p": puts, "d": list(dels)})
        compacted = {key: self._compact(doc) for key, doc in puts.items()}
        live.update(compacted)
        for key in dels:
            live.pop(key, None)
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
            self._next_ids.clear()
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


def make_tinydb(storage: MemoryStorage) -> TinyDB:
    db = TinyDB(storage=lambda: storage)
    db.table_class = JournalTable
    return db


def clear_caches(db: TinyDB) -> None:
    """Drop every table's query cache (after memory was rolled back or replayed)."""
    for name in db.tables():
        db.table(name).clear_cache()

"""The store uses TinyDB through its public API only: no private attribute of a TinyDB
object is read, set or overridden anywhere in fieldkit/ (an upgrade of TinyDB may rename
them), and the journal-backed table behaves as stock TinyDB does."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from tinydb import Query, TinyDB
from tinydb.storages import MemoryStorage as StockStorage
from tinydb.table import Document, Table

from fieldkit.store.documents import MemoryStorage, clear_caches, make_tinydb

PKG = Path(__file__).resolve().parent.parent / "fieldkit"
TINYDB_CLASSES = {"Table", "TinyDB", "Storage", "Middleware"}


def _tinydb_private_names() -> set[str]:
    """Every private name of TinyDB's database and table objects, as installed."""
    db = TinyDB(storage=StockStorage)
    objects = (TinyDB, Table, db, db.table("t"), db.storage)
    return {n for o in objects for n in dir(o) if n.startswith("_") and not n.startswith("__")}


TINYDB_PRIVATE = _tinydb_private_names()


def _own_private_names(trees) -> set[str]:
    """Private names fieldkit gives its own objects (`self._storage` of the Store, say):
    these are flagged only where the object is a TinyDB one."""
    own = set()
    for tree in trees:
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and not _is_tinydb_subclass(cls):
                for node in ast.walk(cls):
                    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                            and isinstance(node.value, ast.Name) and node.value.id == "self":
                        own.add(node.attr)
    return own


def _is_tinydb_subclass(cls: ast.ClassDef) -> bool:
    return any((b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")) in TINYDB_CLASSES for b in cls.bases)


def _is_tinydb_object(expr: ast.expr, in_subclass: bool) -> bool:
    """`db`, `table`, `….db`, `db.table(...)`, `db.storage`, or `self` inside a TinyDB subclass."""
    if isinstance(expr, ast.Name):
        return expr.id in ("db", "table") or (in_subclass and expr.id == "self")
    if isinstance(expr, ast.Attribute):
        return expr.attr in ("db", "storage")
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        return expr.func.attr == "table"
    return False


def private_uses(source: str, filename: str = "<source>", own: frozenset[str] = frozenset()) -> list[str]:
    tree = ast.parse(source, filename)
    found = []

    def visit(node, in_subclass):
        if isinstance(node, ast.ClassDef):
            in_subclass = _is_tinydb_subclass(node)
        if in_subclass and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in TINYDB_PRIVATE:
            found.append((node.lineno, f"overrides {node.name}"))
        if isinstance(node, ast.Attribute) and node.attr in TINYDB_PRIVATE and \
                (node.attr not in own or _is_tinydb_object(node.value, in_subclass)):
            found.append((node.lineno, f".{node.attr}"))
        for child in ast.iter_child_nodes(node):
            visit(child, in_subclass)

    visit(tree, False)
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def test_the_check_finds_planted_violations():
    own = frozenset({"_storage", "_opened"})
    planted = ("class JournalTable(Table):\n"
               "    def _update_table(self, updater):\n"
               "        tables = self._storage.read()\n"
               "class Store:\n"
               "    def load(self):\n"
               "        for table in list(self.db._tables.values()):\n"
               "            table._next_id = None\n"
               "        return db.table('x')._read_table()\n")
    assert private_uses(planted, "store/planted.py", own) == [
        "store/planted.py:2: overrides _update_table", "store/planted.py:3: ._storage",
        "store/planted.py:6: ._tables", "store/planted.py:7: ._next_id", "store/planted.py:8: ._read_table"]
    clean = ("class Store:\n"
             "    def load(self):\n"
             "        self._storage.apply(record)\n"
             "        clear_caches(self.db)\n"
             "        return self.db.storage.docs('queue')\n")
    assert private_uses(clean, "store/clean.py", own) == []


def test_fieldkit_touches_no_private_attribute_of_tinydb():
    paths = sorted(PKG.rglob("*.py"))
    sources = {p: p.read_text() for p in paths}
    own = frozenset(_own_private_names(ast.parse(s) for s in sources.values()))
    problems = []
    for path, source in sources.items():
        problems += private_uses(source, str(path.relative_to(PKG.parent)), own)
    assert not problems, "fieldkit/ reaches into TinyDB's private attributes:\n" + "\n".join(problems)


# The journal-backed table against stock TinyDB ---------------------------------------------

def _state(db: TinyDB) -> dict:
    return {name: {doc.doc_id: dict(doc) for doc in db.table(name).all()} for name in db.tables()}


def _random_ops(rng: random.Random, n: int):
    q = Query()
    for step in range(n):
        name = rng.choice(("a", "b"))
        kind = rng.choice(("insert", "insert_multiple", "insert_doc", "update", "update_fn", "update_ids",
                           "update_all", "update_multiple", "upsert", "remove", "remove_ids", "truncate",
                           "drop", "bad_insert", "remove_nothing"))
        v, count = rng.randrange(6), rng.randrange(4)
        if kind == "insert":
            yield name, lambda t: t.insert({"v": v, "n": step, "nested": {"k": v}})
        elif kind == "insert_multiple":
            yield name, lambda t: t.insert_multiple({"v": v + i, "n": step} for i in range(count))
        elif kind == "insert_doc":
            yield name, lambda t: t.insert(Document({"v": v, "given": True}, doc_id=v + 1))
        elif kind == "update":
            yield name, lambda t: t.update({"seen": step}, q.v == v)
        elif kind == "update_fn":
            yield name, lambda t: t.update(lambda d: d.update(v=d["v"] + 1) if "v" in d else None, q.v < v)
        elif kind == "update_ids":
            yield name, lambda t: t.update({"by_id": v}, doc_ids=[v, v + 1, v, 99])
        elif kind == "update_all":
            yield name, lambda t: t.update({"all": step})
        elif kind == "update_multiple":
            yield name, lambda t: t.update_multiple([({"m": 1}, q.v == v), ({"m2": 2}, q.m == 1)])
        elif kind == "upsert":
            yield name, lambda t: t.upsert({"v": v, "up": step}, q.v == v)
        elif kind == "remove":
            yield name, lambda t: t.remove(q.v == v)
        elif kind == "remove_ids":
            yield name, lambda t: t.remove(doc_ids=[v, v + 2])
        elif kind == "truncate" and rng.random() < 0.3:
            yield name, lambda t: t.truncate()
        elif kind == "drop" and rng.random() < 0.3:
            yield name, "drop"
        elif kind == "bad_insert":
            yield name, lambda t: t.insert(["not", "a", "mapping"])
        elif kind == "remove_nothing":
            yield name, lambda t: t.remove()


def _outcome(fn, table):
    try:
        return fn(table)
    except (ValueError, RuntimeError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("seed", range(6))
def test_the_journal_table_does_what_stock_tinydb_does_and_replays_to_the_same_state(seed):
    records = []
    storage = MemoryStorage(records.append, {"a": ("v",)})
    ours, stock = make_tinydb(storage), TinyDB(storage=StockStorage)
    for name, op in _random_ops(random.Random(seed), 300):
        if op == "drop":
            ours.drop_table(name)
            stock.drop_table(name)
            continue
        got, want = _outcome(op, ours.table(name)), _outcome(op, stock.table(name))
        assert got == want
        assert _state(ours) == {k: v for k, v in _state(stock).items() if v or k in ours.tables()}
        assert ours.table(name).search(Query().v == 3) == stock.table(name).search(Query().v == 3)
        # the index the storage keeps follows every change
        assert [int(k) for k in storage.keys("a", "v", 3)] == sorted(d.doc_id for d in ours.table("a").search(Query().v == 3))
    replayed = MemoryStorage(lambda record: None)
    for record in records:
        replayed.apply(record)
    assert replayed.data == storage.data


def test_a_rollback_restores_the_documents_the_next_ids_and_what_searches_return():
    storage = MemoryStorage(lambda record: None)
    db = make_tinydb(storage)
    table = db.table("rows")
    table.insert_multiple({"v": i} for i in range(3))
    storage.committed()
    assert table.search(Query().v >= 0) == [{"v": 0}, {"v": 1}, {"v": 2}]  # now cached
    assert table.insert({"v": 3}) == 4
    table.update({"v": 9}, doc_ids=[1])
    db.drop_table("rows")
    assert db.tables() == set()
    storage.rollback()
    clear_caches(db)
    table = db.table("rows")
    assert table.search(Query().v >= 0) == [{"v": 0}, {"v": 1}, {"v": 2}]
    assert table.insert({"v": 3}) == 4  # the rolled-back id is given again, not skipped

"""The store owns its schema: outside fieldkit/store/ nothing opens a TinyDB table or
imports TinyDB; every other layer reads and writes through the store's modules
(store/instances.py, patients.py, findings.py, queue.py, meta.py, accounts.py)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fieldkit"
STORE = PKG / "store"


def raw_access(source: str, filename: str = "<source>") -> list[str]:
    """Lines of `source` that reach into TinyDB: a `.table(...)` call or a tinydb import."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "table":
            found.append((node.lineno, ".table(...)"))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tinydb" for a in node.names):
            found.append((node.lineno, "import tinydb"))
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "tinydb":
            found.append((node.lineno, "from tinydb import ..."))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def test_the_check_finds_a_planted_violation():
    planted = ("from tinydb import Query\n"
               "def board(store):\n"
               "    return store.read(lambda db: db.table('patients').all())\n"
               "def other(db):\n"
               "    return db.table(T_FINDINGS).search(Query().id == 1)\n")
    assert raw_access(planted, "web/planted.py") == [
        "web/planted.py:1: from tinydb import ...", "web/planted.py:3: .table(...)", "web/planted.py:5: .table(...)"]
    clean = ("from ..store import findings\n"
             "def board(store):\n"
             "    return findings.for_patient(store, 'P1')\n")
    assert raw_access(clean) == []


def test_no_table_access_outside_the_store():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        if STORE in path.parents:
            continue
        problems += raw_access(path.read_text(), str(path.relative_to(PKG.parent)))
    assert not problems, "raw TinyDB access outside fieldkit/store/:\n" + "\n".join(problems)

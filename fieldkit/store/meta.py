"""Named documents of the `meta` table: small counters the kit keeps (layer 2).

One document per name (`{"name": ..., ...}`), found through the store's index on `name`.
Call inside store.read/store.write.
"""

from __future__ import annotations

from ..records import T_META


def get(db, name: str) -> dict | None:
    keys = db.storage.keys(T_META, "name", name)
    return dict(db.storage.doc(T_META, keys[0])) if keys else None


def put(db, name: str, fields: dict) -> None:
    """Set `fields` on the document `name` (made when missing)."""
    keys = db.storage.keys(T_META, "name", name)
    if keys:
        db.table(T_META).update(fields, doc_ids=[int(keys[0])])
    else:
        db.table(T_META).insert({**fields, "name": name})

"""Data-format migrations: a data dir written by an older fieldkit opens with this one.

`MIGRATIONS[n]` turns format n into format n + 1. It is a function over the database
(`fn(db)`, as in `Store.write`), and it runs in the same journal record as the note of
the new format in the `meta` table: each step is one sealed record, so it is applied
whole or not at all, and a crash mid-upgrade resumes at the step that did not land.
Before the first step the journal is copied aside (still sealed) as
`db/journal.fkj.format-<n>`, so a faulty migration can be undone by hand. `FORMAT`
(the file `check_format` reads before anything is opened) is rewritten last.

A step must check everything before it changes anything: like any `Store.write`, what it
changed before raising is committed. A step that needs the store's keys takes
`fn(db, store)`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from .. import DATA_FORMAT_VERSION, fsio
from ..errors import UnsupportedVersion
from ..records import T_META
from ..security.files import write_atomic
from . import FORMAT_FILE

log = logging.getLogger(__name__)

FORMAT_DOC = "data_format"


def _format_doc(db) -> dict | None:
    for doc in db.table(T_META).all():
        if doc.get("name") == FORMAT_DOC:
            return doc
    return None


def _set_format(db, version: int) -> None:
    from tinydb import Query
    table = db.table(T_META)
    if _format_doc(db) is None:
        table.insert({"name": FORMAT_DOC, "format": version})
    else:
        table.update({"format": version}, Query().name == FORMAT_DOC)


def _record_format(db) -> None:
    """1 -> 2: the store records its own format (the note itself is the change)."""


def _key_audit_trail(db, store) -> None:
    """2 -> 3: the audit chain is keyed from here on (HMAC under the store's audit key)."""
    from .accounts import start_keyed_trail
    start_keyed_trail(db, store.audit_key)


MIGRATIONS = {
    1: _record_format,
    2: _key_audit_trail,
}


def file_format(data_dir) -> int:
    return int(json.loads((data_dir / FORMAT_FILE).read_text())["format"])


def stored_format(store) -> int:
    """The format the data is in: the store's own note when there is one, else FORMAT."""
    doc = store.read(_format_doc)
    return int(doc["format"]) if doc else file_format(store.data_dir)


def upgrade(store) -> list[int]:
    """Bring an opened store to DATA_FORMAT_VERSION; returns the formats migrated from."""
    current = stored_format(store)
    if current > DATA_FORMAT_VERSION:
        raise UnsupportedVersion(f"data dir {store.data_dir} holds format {current}, this fieldkit reads up to "
                                 f"{DATA_FORMAT_VERSION}; upgrade fieldkit")
    done = []
    if current < DATA_FORMAT_VERSION:
        journal = store.data_dir / "db" / "journal.fkj"
        aside = journal.with_name(f"{journal.name}.format-{current}")
        if not aside.exists():
            tmp = aside.with_name(aside.name + ".tmp")
            shutil.copyfile(journal, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, aside)
            fsio.fsync_dir(journal.parent)
        for version in range(current, DATA_FORMAT_VERSION):
            step = MIGRATIONS[version]
            store.write(lambda db, step=step, version=version: (
                step(db, store) if step.__code__.co_argcount == 2 else step(db), _set_format(db, version + 1)))
            log.info("data dir migrated from format %d to %d", version, version + 1)
            done.append(version)
    if file_format(store.data_dir) != DATA_FORMAT_VERSION:
        write_atomic(store.data_dir / FORMAT_FILE, (json.dumps({"format": DATA_FORMAT_VERSION}) + "\n").encode(), 0o644)
    return done

"""Salvage a damaged journal: keep every record that still authenticates (layer 2).

`salvage(data_dir, data_key)` reads the journal past its damage (Journal.salvage_records:
records before *and after* a damaged one, found again by their tags), replays what it
read, and writes that state as a new journal - the way compaction does: temp file,
fsync, rename, fsync the directory. The original is first kept aside under a new name
(`journal.fkj.damaged-<time>`, a hard link made before the rename, so there is never a
moment without a journal), never deleted. It takes the data dir lock, so it refuses to
run while the kit runs.

`readopt_captures(store)` then puts back the captures whose catalogue rows were lost: their
blobs are still on disk, whole and encrypted.

On a store with no damage it changes nothing and says so (`Report.changed` is False):
salvage is safe to run "just in case". A torn final write is not damage (the kit cuts it
at the next start, see journal.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import fsio
from ..records import T_FINDINGS, T_INSTANCES, T_PATIENTS
from ..security.crypto import Sealer, derive_subkey
from . import acquire_dir_lock, check_format
from .documents import MemoryStorage
from .journal import Journal

JOURNAL = Path("db") / "journal.fkj"


@dataclass
class Report:
    journal: str
    records_kept: int = 0
    losses: list[dict] = field(default_factory=list)  # {"seq", "last_seq", "offset", "reason"[, "torn"]}
    kept_aside: str = ""  # the original, renamed
    patients: int = 0
    instances: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.kept_aside)

    def lines(self) -> list[str]:
        if not self.changed:
            out = [f"nothing to salvage: every record of {self.journal} authenticates "
                   f"({self.records_kept} records, {self.patients} patients, {self.instances} instances); "
                   "nothing was changed"]
            out += [f"note: record {loss['seq']} at byte offset {loss['offset']}: {loss['reason']}; "
                    "the kit cuts it at its next start" for loss in self.losses]
            return out
        out = [f"salvaged {self.journal}: kept {self.records_kept} records "
               f"({self.patients} patients, {self.instances} instances)"]
        for loss in self.losses:
            out.append(f"lost {_span(loss)} at byte offset {loss['offset']}: {loss['reason']}")
        out.append(f"the original is kept as {self.kept_aside}")
        return out


def _span(loss: dict) -> str:
    first, last = loss["seq"], loss["last_seq"]
    if last is None:
        return f"records {first} to the end of the journal"
    return f"record {first}" if last == first else f"records {first}-{last}"


def _damaged(losses: list[dict]) -> bool:
    """True when anything but a torn final write was lost (that one the kit cuts itself)."""
    return any(not loss.get("torn") for loss in losses)


def salvage(data_dir: Path, data_key: bytes) -> Report:
    data_dir = Path(data_dir)
    check_format(data_dir)
    lock_fd = acquire_dir_lock(data_dir)  # refuses while the kit (or another command) runs
    try:
        path = data_dir / JOURNAL
        report = Report(journal=str(path))
        journal = Journal(path, Sealer(derive_subkey(data_key, "db")))
        state = MemoryStorage(lambda change: None)
        try:
            for record in journal.salvage_records(report.losses):
                state.apply(record)
                report.records_kept += 1
        except BaseException:
            journal.close()
            raise
        report.patients = len(state.data.get(T_PATIENTS, {}))
        report.instances = len(state.data.get(T_INSTANCES, {}))
        if not _damaged(report.losses):
            journal.close()
            return report
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
                               f"-{time.time_ns() % 1000000:06d}")
        os.link(path, aside)
        fsio.fsync_dir(path.parent)
        report.kept_aside = str(aside)
        try:
            journal.compact(state.snapshot_records())
        finally:
            journal.close()
        return report
    finally:
        os.close(lock_fd)


def readopt_captures(store) -> list[dict]:
    """Captures whose catalogue rows were in lost records are still whole, encrypted blobs:
    put each one back through the catalogue (as an import). Run on the salvaged store.
    Previews and overlays are images, not DICOM, and stay unreferenced."""
    from ..errors import FieldkitError
    from . import instances

    def referenced(db) -> set[str]:
        out: set[str] = set()
        for row in db.table(T_INSTANCES).all():
            out.update({row.get("blob"), row.get("thumbnail")})
            out.update(c.get("blob") for c in row.get("conflicts") or [])
        out.update(f.get("overlay") for f in db.table(T_FINDINGS).all())
        return out

    known = store.read(referenced)
    results = []
    for path in sorted(store.blobs.root.glob("[0-9a-f][0-9a-f]/*")):
        if path.name in known:
            continue
        try:
            data = store.blobs.get_bytes(path.name)
        except FieldkitError:  # damaged too: the scrub will list it if a row points at it
            continue
        if data[128:132] != b"DICM":
            continue
        try:
            results.append(instances.put_instance(store, data, "import"))
        except FieldkitError:
            continue
    return results

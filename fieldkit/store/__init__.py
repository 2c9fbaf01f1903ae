"""The store: one process, one lock, encrypted and durable (layer 2).

`Store.open()` takes an OS lock on the data dir (a second process is refused), replays the
journal into TinyDB's memory, and indexes the queue. `write(fn)` runs `fn(db)` under the
lock; whatever it changed becomes one sealed journal record, durable when `write` returns
(group commit: concurrent writers share fsyncs). See HACKING.md for the API.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from .. import DATA_FORMAT_VERSION
from ..config import Config
from ..errors import StorageFull, StoreBusy, UnsupportedVersion
from ..events import EventBus
from ..records import T_FINDINGS, T_INSTANCES, T_META, T_OFFLINE, T_PATIENTS
from ..security.crypto import Sealer, derive_subkey
from ..security.files import write_atomic
from ..security.secrets import SecretBox
from .blobs import BlobRef, BlobStore, EncryptedSpool
from .documents import MemoryStorage, clear_caches, make_tinydb
from .journal import Journal, storage_error
from .queue import Queue
from .space import DiskSpace

__all__ = ["Store", "BlobRef", "EncryptedSpool", "FORMAT_FILE", "LOCK_FILE", "write_format", "check_format"]

log = logging.getLogger(__name__)

FORMAT_FILE = "FORMAT"
LOCK_FILE = "kit.lock"
COMPACT_RETRY_SECONDS = 60.0


def write_format(data_dir: Path) -> None:
    path = Path(data_dir) / FORMAT_FILE
    write_atomic(path, (json.dumps({"format": DATA_FORMAT_VERSION}) + "\n").encode(), 0o644)


def check_format(data_dir: Path) -> None:
    path = Path(data_dir) / FORMAT_FILE
    try:
        fmt = json.loads(path.read_text())["format"]
    except FileNotFoundError:
        from ..errors import ConfigError
        raise ConfigError(f"{data_dir} is not a fieldkit data dir (no {FORMAT_FILE}); run `fieldkit init`") from None
    except (ValueError, KeyError, TypeError):
        raise UnsupportedVersion(f"{path} is unreadable; this data dir cannot be opened") from None
    if fmt > DATA_FORMAT_VERSION:
        raise UnsupportedVersion(f"data dir {data_dir} was written by a newer fieldkit (format {fmt}, "
                                 f"this one reads up to {DATA_FORMAT_VERSION}); upgrade fieldkit")


def acquire_dir_lock(data_dir: Path) -> int:
    """An exclusive OS lock on the data dir, held for the life of the process."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreBusy(f"data dir {data_dir} is in use by another fieldkit process (pid {holder}); "
                        "stop it first, or run the command while it runs so it goes through the kit") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def dir_is_locked(data_dir: Path) -> bool:
    """True when a running kit holds the data dir (used by commands to pick local vs. remote)."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# Fields the store keeps indexes on (see documents.MemoryStorage): what the kit looks rows
# up by - patient, study, series, SOP Instance UID, and the QIDO study filters a PACS
# sends (AccessionNumber, StudyDate: a date range walks the few distinct dates), finding ids.
INDEXED = {
    T_INSTANCES: ("patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
                  "accession_number", "study_date"),
    T_PATIENTS: ("id", "tag", "merged_into"),
    T_FINDINGS: ("id", "patient_id", "sop_instance_uid"),
    T_META: ("name",),
    T_OFFLINE: ("id",),
}
# Fields whose text values repeat across rows and tables: kept once in memory (documents.py).
# The study's own attributes repeat in each of its rows; `linked_by` and `calling_ae` take
# a few values.
SHARED = frozenset({"sop_instance_uid", "study_instance_uid", "series_instance_uid", "patient_id", "sop_class_uid",
                    "transfer_syntax", "modality", "source", "study_date", "manufacturer",
                    "photometric_interpretation", "kind", "state", "key", "payload", "what",
                    "accession_number", "study_time", "study_id", "study_description", "referring_physician",
                    "series_description", "series_number", "instance_number", "linked_by", "calling_ae"})


class Store:
    def __init__(self, data_dir: Path, data_key: bytes, config: Config, lock_fd: int):
        self.data_dir = Path(data_dir)
        self.config = config
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._depth = 0
        self._pending: list[dict] = []
        self.events = EventBus()
        self._storage = MemoryStorage(self._pending.append, INDEXED, SHARED)
        self._journal = Journal(self.data_dir / "db" / "journal.fkj", Sealer(derive_subkey(data_key, "db")),
                                reserve=int(config["store.reserve_mb"]) << 20)
        self.blobs = BlobStore(self.data_dir / "blobs", Sealer(derive_subkey(data_key, "blob")),
                               derive_subkey(data_key, "blob-id"))
        self.db = make_tinydb(self._storage)
        self.queue = Queue(self)
        self.space = DiskSpace(self.data_dir, config, lambda: self._journal.reserve_left)
        self.resumed_leases = 0
        self._backup_key = derive_subkey(data_key, "backup")  # seals backup manifests (store.backup)
        self.pepper = derive_subkey(data_key, "pin-pepper")  # mixed into PIN/password hashes (accounts)
        self.secrets = SecretBox(data_key)  # opens the kit's sealed secret files (hospital credentials)
        self.audit_key = derive_subkey(data_key, "audit")  # keys the audit chain (store.accounts)
        self._compact_failed_at = float("-inf")

    @classmethod
    def open(cls, data_dir: Path, data_key: bytes, config: Config | None = None) -> "Store":
        data_dir = Path(data_dir)
        check_format(data_dir)
        lock_fd = acquire_dir_lock(data_dir)
        store = None
        try:
            store = cls(data_dir, data_key, config or Config(), lock_fd)
            store._load()
            from .migrations import upgrade
            upgrade(store)
        except BaseException:
            if store is None:
                os.close(lock_fd)
            else:  # a store refused (a damaged journal) leaves no descriptor open: the lock, the journal, the spares
                store.close()
            raise
        return store

    def _load(self) -> None:
        """Replay the journal into memory. Called once, by `open`: nothing is written here."""
        self._storage.clear()
        for record in self._journal.open():
            self._storage.apply(record)
        self._pending.clear()
        self._storage.committed()
        clear_caches(self.db)
        self.resumed_leases = self.queue.load(self.db)
        if self.resumed_leases:
            log.info("resumed %d queue rows leased before the last stop", self.resumed_leases)
        self._journal.ensure_reserve()

    # documents -------------------------------------------------------------------------
    def read(self, fn):
        with self._lock:
            return fn(self.db)

    def write(self, fn, durable: bool = True):
        """Run fn(db); its changes are one journal record, durable when this returns.

        durable=False skips the wait for fsync, for changes a crash may lose harmlessly
        (a lease: leases return to ready at open anyway); the next durable write covers it."""
        with self._lock:
            self._depth += 1
            try:
                result = fn(self.db)
            finally:
                self._depth -= 1
                ticket = self._commit() if self._depth == 0 else None
            outermost = self._depth == 0
        if outermost and ticket and durable:
            self._journal.wait_durable(ticket)
            self._maybe_compact()
        return result

    def _commit(self) -> int | None:
        if not self._pending:
            return None
        batch = self._pending[0] if len(self._pending) == 1 else {"batch": list(self._pending)}
        self._pending.clear()
        try:
            ticket = self._journal.append(batch)
        except StorageFull:
            # The journal is as it was: put memory back to match it, so nothing that was
            # not journaled stays visible (and nothing journaled is touched).
            self._rollback()
            raise
        self._storage.committed()
        return ticket

    def _rollback(self) -> None:
        self._storage.rollback()
        clear_caches(self.db)
        self.queue.reindex(self.db)

    def _maybe_compact(self) -> None:
        min_bytes = int(self.config["store.compact_min_mb"]) * (1 << 20)
        with self._lock:
            if self._journal.needs_compaction(min_bytes) and \
                    time.monotonic() - self._compact_failed_at >= COMPACT_RETRY_SECONDS:
                try:
                    self._journal.compact(self._storage.snapshot_records())
                except StorageFull as exc:
                    # a full disk: not again at every write (each try rewrites the state)
                    self._compact_failed_at = time.monotonic()
                    log.warning("journal compaction postponed: %s", exc)

    def compact(self) -> None:
        with self._lock:
            self._journal.compact(self._storage.snapshot_records())

    def snapshot_to(self, path: Path) -> dict[str, int]:
        """Write the live state, as of one instant, as a sealed journal at `path` (a new
        file; fsynced, put in place by rename). The store lock is held only while the
        tables are copied (documents are replaced on change, never edited in place, so
        the copies share them); sealing and writing run unlocked. Returns the row count
        of every table in the snapshot."""
        with self._lock:
            state = {name: dict(table) for name, table in self._storage.data.items()}
        frozen = MemoryStorage(lambda record: None)
        frozen.data = state
        journal = Journal(Path(path), self._journal._sealer)
        try:
            for _ in journal.open():
                raise FileExistsError(f"{path} already holds a journal")
            journal.compact(frozen.snapshot_records(), spare=False)
        finally:
            journal.close()
        return {name: len(table) for name, table in state.items()}

    # summaries -------------------------------------------------------------------------
    def counts(self) -> dict:
        def fn(db):
            return {"instances": len(db.table(T_INSTANCES)), "patients": len(db.table(T_PATIENTS)),
                    "findings": len(db.table(T_FINDINGS))}
        out = self.read(fn)
        out["queue"] = self.queue.counts()
        return out

    @property
    def journal_bytes(self) -> int:
        return self._journal.size

    def close(self) -> None:
        with self._lock:
            self.blobs.close()
            self._journal.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

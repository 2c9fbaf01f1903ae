"""An append-only journal of sealed records: the durable half of the store.

File layout (`db/journal.fkj`):

    header   b"FKJ1" | u32 format | 16-byte file id            (no patient data)
    record   u32 length | u32 crc32(length) | sealed bytes      (repeated)

Each record is AES-256-GCM sealed with associated data = file id + record number, so a
record that was changed, moved, dropped or copied from another file fails its tag. A
commit appends one record (no fsync); `wait_durable()` then fsyncs, and threads that
committed meanwhile share that one fsync (group commit). Write cost is proportional to
the record, never to the size of the store.

At open, a torn final record (a crash mid-append) is cut off; the cut bytes are kept
beside the journal (still sealed) and reported. Damage anywhere before the last record
is refused with the file and offset: never skipped, never "repaired" by dropping the
good records after it. Compaction rewrites the live state to a temp file, fsyncs it,
renames it over the journal and fsyncs the directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

from .. import fsio
from ..errors import StorageFull, StoreCorrupt, UnsupportedVersion
from ..security.crypto import InvalidTag, Sealer

log = logging.getLogger(__name__)

MAGIC = b"FKJ1"
FORMAT = 1
HEADER = struct.Struct(">4sI16s")
FRAME = struct.Struct(">II")
MAX_RECORD = 1 << 30
# The file is extended in steps of real zeros, so that a commit overwrites blocks that
# already exist: its fdatasync then flushes data only, not file-size metadata as well.
PREALLOC = 1 << 20


def fsync_dir(path: Path) -> None:
    fsio.fsync_dir(path)


def _frame(sealed: bytes) -> bytes:
    n = struct.pack(">I", len(sealed))
    return n + struct.pack(">I", zlib.crc32(n)) + sealed


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = fsio.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = fsio.write(fd, view)
        view = view[written:]


def storage_error(exc: OSError, path: Path) -> StorageFull:
    if exc.errno == errno.ENOSPC:
        return StorageFull(f"disk full while writing {path}: nothing was acknowledged; free space and retry")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageFull(f"cannot write {path} ({os.strerror(exc.errno)}): the data dir is read-only")
    return StorageFull(f"cannot write {path}: {exc.strerror}")


class Journal:
    def __init__(self, path: Path, sealer: Sealer):
        self.path = Path(path)
        self._sealer = sealer
        self._fd: int | None = None
        self._file_id = b""
        self._seq = 0  # number of records in the file
        self._end = 0  # end of the last record (maybe not yet durable)
        self._alloc = 0  # physical size: records, then zeros
        self._durable_end = 0
        self._syncing = False
        self._cond = threading.Condition()
        self.size_after_compaction = 0
        self.cut_bytes = 0  # torn tail cut at the last open

    # opening ---------------------------------------------------------------------------
    def open(self) -> Iterator[dict]:
        """Open (or create) the journal and yield its records in order."""
        fsio.makedirs(self.path.parent, 0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        if tmp.exists():  # a compaction that did not finish: the journal itself is intact
            fsio.unlink(tmp)
        if not self.path.exists():  # made whole under the temp name: a cut never leaves half a header
            self._create(tmp)
            fsio.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        try:
            self._fd = fsio.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        yield from self._replay()
        self._alloc = os.fstat(self._fd).st_size
        self._durable_end = self._end
        self.size_after_compaction = self._end

    def _create(self, path: Path) -> None:
        self._file_id = os.urandom(16)
        fd = fsio.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, HEADER.pack(MAGIC, FORMAT, self._file_id))
            fsio.fsync(fd)
        finally:
            os.close(fd)

    def _aad(self, seq: int) -> bytes:
        return self._file_id + struct.pack(">Q", seq)

    def _replay(self) -> Iterator[dict]:
        fd = self._fd
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size:
            raise StoreCorrupt(self.path, 0, "header is truncated")
        magic, fmt, self._file_id = HEADER.unpack(head)
        if magic != MAGIC:
            raise StoreCorrupt(self.path, 0, "not a fieldkit journal")
        if fmt > FORMAT:
            raise UnsupportedVersion(f"{self.path} was written by a newer fieldkit (journal format {fmt}); upgrade fieldkit")
        off, seq = HEADER.size, 0
        while off < size:
            torn = None
            frame = os.pread(fd, FRAME.size, off)
            if len(frame) < FRAME.size:
                torn = "incomplete record header"
            elif not any(frame):
                if self._zeros_from(off, size):
                    break  # the preallocated, never-written rest of the file
                raise StoreCorrupt(self.path, off, "data found after the end of the journal")
            else:
                length, crc = FRAME.unpack(frame)
                if zlib.crc32(frame[:4]) != crc or length > MAX_RECORD:
                    if self._zeros_from(off + FRAME.size, size):
                        torn = "half-written record header"
                    else:
                        raise StoreCorrupt(self.path, off, "record header checksum does not match")
                elif off + FRAME.size + length > size:
                    torn = "record extends past the end of the file"
                else:
                    sealed = os.pread(fd, length, off + FRAME.size)
                    try:
                        plain = self._sealer.open(sealed, self._aad(seq))
                    except InvalidTag:
                        if self._zeros_from(off + FRAME.size + length, size):
                            torn = "last record fails its authentication tag"
                        else:
                            raise StoreCorrupt(self.path, off, "record fails its authentication tag "
                                               "(changed, moved or from another key)") from None
                    else:
                        yield json.loads(plain)
                        off += FRAME.size + length
                        seq += 1
                        continue
            self._cut(off, size, torn)
            size = off
        self._seq, self._end = seq, off

    def _zeros_from(self, off: int, size: int) -> bool:
        """True when every byte from `off` to the end of the file is zero."""
        while off < size:
            block = os.pread(self._fd, min(size - off, 1 << 20), off)
            if not block:
                return True
            if any(block):
                return False
            off += len(block)
        return True

    def _cut(self, off: int, size: int, why: str) -> None:
        """Keep the torn bytes beside the journal (they are sealed) and truncate."""
        keep = self.path.with_name(f"{self.path.name}.torn-{int(time.time())}-{off}")
        fd = fsio.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, os.pread(self._fd, size - off, off).rstrip(b"\0"))
            fsio.fsync(fd)
        finally:
            os.close(fd)
        fsio.ftruncate(self._fd, off)
        fsio.fsync(self._fd)
        fsync_dir(self.path.parent)
        self.cut_bytes = size - off
        log.warning("journal %s: cut a torn final write at offset %d (%d bytes, %s); kept in %s",
                    self.path.name, off, size - off, why, keep.name)

    # writing ---------------------------------------------------------------------------
    def append(self, record: dict) -> int:
        """Append one record (caller holds the store lock). Returns a durability ticket."""
        plain = json.dumps(record, separators=(",", ":")).encode()
        data = _frame(self._sealer.seal(plain, self._aad(self._seq)))
        start = self._end
        if start + len(data) > self._alloc:
            self._extend(start + len(data))
        try:
            _pwrite_all(self._fd, data, start)
        except OSError as exc:
            try:  # never leave half a record in front of later ones
                _pwrite_all(self._fd, bytes(len(data)), start)
            except OSError:
                pass
            raise storage_error(exc, self.path) from None
        self._seq += 1
        self._end = start + len(data)
        return self._end

    def _extend(self, needed: int) -> None:
        new_alloc = max(needed, self._alloc) + PREALLOC
        try:
            _pwrite_all(self._fd, bytes(new_alloc - self._alloc), self._alloc)
            fsio.fsync(self._fd)
        except OSError as exc:
            try:
                fsio.ftruncate(self._fd, self._alloc)
            except OSError:
                pass
            raise storage_error(exc, self.path) from None
        self._alloc = new_alloc

    def wait_durable(self, ticket: int) -> None:
        """Return once everything up to `ticket` is fsynced; one fsync serves many writers."""
        with self._cond:
            while self._durable_end < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._end
                self._cond.release()
                try:
                    fsio.fdatasync(self._fd)
                except OSError as exc:
                    raise storage_error(exc, self.path) from None
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._durable_end = max(self._durable_end, target)

    @property
    def size(self) -> int:
        return self._end

    def needs_compaction(self, min_bytes: int) -> bool:
        return self._end > max(min_bytes, 2 * self.size_after_compaction)

    def compact(self, records: Iterator[dict]) -> None:
        """Rewrite the journal as `records` (the live state); atomic by rename."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        old_id = self._file_id
        try:
            self._create(tmp)
            fd = fsio.open(tmp, os.O_RDWR)
        except OSError as exc:
            raise storage_error(exc, tmp) from None
        seq, end = 0, HEADER.size
        try:
            os.lseek(fd, 0, os.SEEK_END)
            for rec in records:
                plain = json.dumps(rec, separators=(",", ":")).encode()
                data = _frame(self._sealer.seal(plain, self._aad(seq)))
                _write_all(fd, data)
                seq, end = seq + 1, end + len(data)
            fsio.fsync(fd)
            fsio.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            os.close(fd)
            self._file_id = old_id
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, self.path) from None
        os.close(self._fd)
        self._fd, self._seq, self._end, self._alloc = fd, seq, end, end
        self._durable_end = end
        self.size_after_compaction = end

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

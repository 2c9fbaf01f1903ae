"""An append-only journal of sealed records: the durable half of the store.

File layout (`db/journal.fkj`):

    header   b"FKJ1" | u32 format | 16-byte file id            (no patient data)
    record   u32 length | u32 crc32(length) | sealed bytes      (repeated)

Each record is AES-256-GCM sealed with associated data = file id + record number, so a
record that was changed, moved, dropped or copied from another file fails its tag. A
commit appends one record (no fsync); `wait_durable()` then fsyncs, and threads that
committed meanwhile share that one fsync (group commit). Write cost is proportional to
the record, never to the size of the store.

Torn or damaged, by one rule. The file is extended with real zeros ahead of its end, and
a disk writes whole 512-byte sectors, so a crash mid-append leaves the sectors of a
record that never reached the disk still zero. A record (or record header) that fails its
check is a *torn write* when unwritten sectors explain the failure: the file ends inside
it; or every byte from a 512-byte boundary inside it to the end of the file is zero; or
it holds a whole zero sector, or zeros from its start to the end of its sector (writes of
later records may have reached the disk before it: a power cut keeps unsynced writes in
any order). Every acknowledgement waits for an fsync that covers all earlier records, so
nothing from a torn record on was ever acknowledged. Anything else is *damage*: a
complete record that fails its tag with no zero sector, a bad header with written data
around it. Sealed bytes hold no such zero run by chance and a flipped bit makes none, so
a flipped byte is always damage, even in the last record.

At open, a torn write is cut off; the cut bytes are kept beside the journal (still
sealed) and reported. Damage is refused with the file, byte offset and record number:
never skipped, never cut. `salvage_records()` reads past damage instead (for `fieldkit
store salvage`): after a damaged record it finds the next one by scanning for a frame
whose sealed bytes authenticate under a following record number (a bounded search), and
reports what it could not read. Compaction rewrites the live state to a temp file,
fsyncs it, renames it over the journal and fsyncs the directory.
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
# After a failed extension (disk full), records go into the reserve without trying to
# extend again for this long: a full disk must not cost every commit a doomed write.
EXTEND_RETRY_SECONDS = 2.0
SECTOR = 512
_ZERO_SECTOR = bytes(SECTOR)
# A zero run shorter than a GCM tag can occur by chance in sealed bytes: a torn write must
# have lost at least this much of its record to be told apart from damage.
MIN_TORN = 16
# How far salvage looks past a damaged record for the next one that authenticates.
SCAN_RECORDS = 16
SCAN_BYTES = 64 << 20


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
    def __init__(self, path: Path, sealer: Sealer, reserve: int = 0):
        self.path = Path(path)
        self._sealer = sealer
        # Zeros kept preallocated past the end, so that records (acks, leases, operator
        # actions) can still be written once the disk has no space left for anything else.
        self.reserve = reserve
        self._extend_failed_at: float | None = None
        self._opened = False
        self._fd: int | None = None
        self._file_id = b""
        self._seq = 0  # number of records in the file
        self._end = 0  # end of the last record (maybe not yet durable)
        self._alloc = 0  # physical size: records, then zeros
        self._durable_end = 0
        # Tickets are logical offsets: bytes of every earlier file (before a compaction)
        # plus the offset in this one, so they keep growing across compactions.
        self._base = 0
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
            fsio.fsync_dir(self.path.parent)
        try:
            self._fd = fsio.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        yield from self._replay()
        self._alloc = os.fstat(self._fd).st_size
        self._durable_end = self._end
        self.size_after_compaction = self._end
        self._opened = True

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

    def salvage_records(self, losses: list[dict]) -> Iterator[dict]:
        """Yield every record that still authenticates, before and after damage, without
        changing the file; append to `losses` what could not be read (by record number)."""
        self._fd = os.open(self.path, os.O_RDONLY)
        yield from self._replay(losses)
        self._opened = True  # read whole: `compact` may now write the salvaged journal

    def _replay(self, losses: list[dict] | None = None) -> Iterator[dict]:
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
            kind, value, end = self._read_at(off, seq, size)
            if kind == "record":
                yield json.loads(value)
                off, seq = end, seq + 1
                continue
            if kind == "end":
                break  # the preallocated, never-written rest of the file
            if kind == "torn":
                if losses is None:
                    self._cut(off, size, value)
                    size = off
                else:
                    losses.append({"seq": seq, "last_seq": seq, "offset": off, "torn": True,
                                   "reason": f"torn final write ({value}); it was never acknowledged"})
                break
            if losses is None:
                raise StoreCorrupt(self.path, off, value, seq=seq, remedy=(
                    "refusing to open. Run `fieldkit store salvage --data-dir "
                    f"{self.path.parent.parent}` to keep every record that still authenticates "
                    "(the damaged file is kept aside)"))
            found = self._next_record(off, end, seq, size)
            last = found[1] - 1 if found else (seq if end > off and self._zeros_from(end, size) else None)
            losses.append({"seq": seq, "last_seq": last, "offset": off, "reason": value})
            if found is None:
                break
            off, seq = found
        self._seq, self._end = seq, off

    def _read_at(self, off: int, seq: int, size: int) -> tuple[str, object, int]:
        """One record at `off`: ("record", plaintext, end), ("end", None, off) for the
        preallocated zeros, ("torn", why, off) or ("damage", why, end or off)."""
        frame = os.pread(self._fd, FRAME.size, off)
        if len(frame) < FRAME.size:
            return "torn", "the file ends inside a record header", off
        if not any(frame):
            if self._zeros_from(off, size):
                return "end", None, off
            if self._sectors_unwritten(off, off + 2 * SECTOR, size):
                return "torn", "a record that never reached the disk, with later unsynced bytes after it", off
            return "damage", "data found after the end of the journal", off
        length, crc = FRAME.unpack(frame)
        if zlib.crc32(frame[:4]) != crc or length > MAX_RECORD:
            boundary = (off // SECTOR + 1) * SECTOR
            if self._unwritten_from(off, off + FRAME.size, size) or (
                    boundary < off + FRAME.size and self._sectors_unwritten(boundary, boundary + SECTOR, size)):
                return "torn", "half-written record header", off
            return "damage", "record header checksum does not match", off
        end = off + FRAME.size + length
        if end > size:
            return "torn", "record extends past the end of the file", off
        sealed = os.pread(self._fd, length, off + FRAME.size)
        try:
            return "record", self._sealer.open(sealed, self._aad(seq)), end
        except InvalidTag:
            # the last record, its sectors from a boundary inside it never written: even one
            # lost byte is a torn write (a flipped bit leaves no zero sector behind it)
            if self._unwritten_from(off, end, size):
                return "torn", "last record was not completely written", off
            if self._sectors_unwritten(off, end, size):
                return "torn", "record with sectors that never reached the disk", off
            return "damage", "record fails its authentication tag (changed, moved or from another key)", end

    def _unwritten_from(self, off: int, before: int, size: int) -> bool:
        """True when, from a 512-byte boundary after `off` and before `before`, every byte
        to the end of the file is zero: sectors a crash never wrote."""
        last = off
        at = size
        while at > off:  # the last non-zero byte, read backwards (the zeros are ~1 MiB)
            start = max(off, at - (1 << 20))
            kept = os.pread(self._fd, at - start, start).rstrip(b"\0")
            if kept:
                last = start + len(kept) - 1
                break
            at = start
        boundary = (last // SECTOR + 1) * SECTOR
        return boundary < min(before, size)

    def _sectors_unwritten(self, off: int, end: int, size: int) -> bool:
        """True when [off, end) holds sectors a crash never wrote: from `off` to the end of
        its 512-byte sector all zeros (at least MIN_TORN bytes), or a whole aligned sector
        inside it all zeros. Sealed bytes hold no such run by chance, and a flipped bit makes
        none. Writes that reached the disk out of order (a later record without an earlier
        one) look like this, and since every acknowledgement waits for an fsync that covers
        all earlier records, nothing from here on was ever acknowledged."""
        end = min(end, size)
        boundary = (off // SECTOR + 1) * SECTOR
        head = min(boundary, end) - off
        if head >= MIN_TORN and not any(os.pread(self._fd, head, off)):
            return True
        at = boundary
        while at + SECTOR <= end:
            block = os.pread(self._fd, min(end - at, 1 << 20) // SECTOR * SECTOR, at)
            if not block:
                break
            if any(block[i:i + SECTOR] == _ZERO_SECTOR for i in range(0, len(block), SECTOR)):
                return True
            at += len(block)
        return False

    def _next_record(self, off: int, end: int, seq: int, size: int) -> tuple[int, int] | None:
        """(offset, record number) of the first record after the damaged one at `off` that
        authenticates as one of the next SCAN_RECORDS records; None when none does within
        SCAN_BYTES. `end` is where the damaged record ends when its header was sound."""
        def authenticates(at: int) -> int | None:
            frame = os.pread(self._fd, FRAME.size, at)
            if len(frame) < FRAME.size:
                return None
            length, crc = FRAME.unpack(frame)
            if zlib.crc32(frame[:4]) != crc or length > MAX_RECORD or at + FRAME.size + length > size:
                return None
            sealed = os.pread(self._fd, length, at + FRAME.size)
            for n in range(seq + 1, seq + 1 + SCAN_RECORDS):
                try:
                    self._sealer.open(sealed, self._aad(n))
                    return n
                except InvalidTag:
                    continue
            return None

        if end > off and (n := authenticates(end)) is not None:
            return end, n
        limit = min(size, off + SCAN_BYTES)
        at = off + 1
        while at < limit - FRAME.size:
            block = os.pread(self._fd, min(1 << 20, limit - at) + FRAME.size, at)
            view = memoryview(block)
            for i in range(len(block) - FRAME.size + 1):
                # a frame's crc covers its length: a cheap filter before trying the tag
                if zlib.crc32(view[i:i + 4]) == int.from_bytes(view[i + 4:i + 8], "big"):
                    n = authenticates(at + i)
                    if n is not None:
                        return at + i, n
            at += len(block) - FRAME.size + 1
        return None

    def _zeros_from(self, off: int, size: int) -> bool:
        """True when every byte from `off` to the end of the file is zero."""
        while off < size:
            block = os.pread(self._fd, min(size - off, 1 << 20), off)
            if not block:
                return True
            if block != bytes(len(block)):  # a memcmp; any() walks the bytes in Python
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
        fsio.fsync_dir(self.path.parent)
        self.cut_bytes = size - off
        log.warning("journal %s: cut a torn final write at offset %d (%d bytes, %s); kept in %s",
                    self.path.name, off, size - off, why, keep.name)

    # writing ---------------------------------------------------------------------------
    def append(self, record: dict) -> int:
        """Append one record (caller holds the store lock). Returns a durability ticket.

        On failure (StorageFull) the journal is exactly as before: same end, record count
        and allocation, and no byte of the failed record left in the file."""
        if not self._opened:
            raise RuntimeError("journal written before it was opened")
        plain = json.dumps(record, separators=(",", ":")).encode()
        data = _frame(self._sealer.seal(plain, self._aad(self._seq)))
        start = self._end
        end = start + len(data)
        if end > self._alloc:
            self._extend(end + self.reserve)
        elif end + self.reserve > self._alloc and not self._extend_failed_recently():
            try:
                self._extend(end + self.reserve)
            except StorageFull as exc:  # the record fits in the reserve: write it there
                log.warning("journal writing into its reserve (%d bytes left): %s", self.reserve_left, exc)
        try:
            _pwrite_all(self._fd, data, start)
        except OSError as exc:
            try:  # never leave half a record in front of later ones
                _pwrite_all(self._fd, bytes(len(data)), start)
            except OSError:
                pass
            raise storage_error(exc, self.path) from None
        self._seq += 1
        self._end = end
        return self._base + self._end

    def ensure_reserve(self) -> None:
        """Top the reserve up (after open); a full disk is logged, not raised."""
        if self._end + self.reserve > self._alloc:
            try:
                self._extend(self._end + self.reserve)
            except StorageFull as exc:
                log.warning("journal reserve not complete (%d of %d bytes): %s",
                            self.reserve_left, self.reserve, exc)

    @property
    def reserve_left(self) -> int:
        """Preallocated bytes still free past the last record."""
        return max(0, self._alloc - self._end)

    def _extend_failed_recently(self) -> bool:
        return self._extend_failed_at is not None and \
            time.monotonic() - self._extend_failed_at < EXTEND_RETRY_SECONDS

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
            self._extend_failed_at = time.monotonic()
            raise storage_error(exc, self.path) from None
        self._extend_failed_at = None
        self._alloc = new_alloc

    def wait_durable(self, ticket: int) -> None:
        """Return once everything up to `ticket` is fsynced; one fsync serves many writers."""
        with self._cond:
            while self._durable_end < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                # the file and end as of now: a compaction waits for this sync to finish
                # before it closes the file, so the descriptor stays this file's
                fd, target = self._fd, self._base + self._end
                self._cond.release()
                try:
                    fsio.fdatasync(fd)
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

    def compact(self, records: Iterator[dict], spare: bool = True) -> None:
        """Rewrite the journal as `records` (the live state), with its reserve and room to
        grow unless `spare` is False (a copy nobody appends to: a backup); atomic by
        rename. On failure the journal and this object are as they were."""
        if not self._opened:
            raise RuntimeError("journal compacted before it was opened")
        tmp = self.path.with_name(self.path.name + ".tmp")
        old_id = self._file_id
        fd = None
        seq, end = 0, HEADER.size
        try:
            tmp.unlink(missing_ok=True)  # left by a compaction that failed
            self._create(tmp)
            fd = fsio.open(tmp, os.O_RDWR)
            os.lseek(fd, 0, os.SEEK_END)
            for rec in records:
                plain = json.dumps(rec, separators=(",", ":")).encode()
                data = _frame(self._sealer.seal(plain, self._aad(seq)))
                _write_all(fd, data)
                seq, end = seq + 1, end + len(data)
            alloc = end + self.reserve + PREALLOC if spare else end
            for off in range(end, alloc, PREALLOC):
                _write_all(fd, bytes(min(PREALLOC, alloc - off)))
            fsio.fsync(fd)
            fsio.replace(tmp, self.path)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            self._file_id = old_id  # later records stay sealed for the file that is kept
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise storage_error(exc, self.path) from None
        with self._cond:  # never close the file under a group commit's fdatasync
            while self._syncing:
                self._cond.wait()
            old_fd = self._fd
            self._base += self._end  # later tickets stay above every earlier one
            self._fd, self._seq, self._end, self._alloc = fd, seq, end, alloc
            self._durable_end = self._base + end  # the new file was fsynced whole: all durable
            self._cond.notify_all()
        os.close(old_fd)
        self.size_after_compaction = end
        try:
            fsio.fsync_dir(self.path.parent)
        except OSError as exc:  # the rename is done; a later fsync of the dir will carry it
            log.warning("journal compaction: directory fsync failed: %s", exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

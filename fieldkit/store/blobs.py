"""Encrypted, content-addressed blobs: DICOM files, thumbnails, overlays.

A blob is written as it streams in, in sealed chunks of at most 1 MiB, so a 200 MB cine
never needs 200 MB of memory and no plaintext ever touches the disk. Its address is an
HMAC-SHA256 of the content under a key derived from the data key: identical content is
stored once, and the address says nothing to someone without the key.

File layout (`blobs/ab/<address>`):

    header   b"FKB1" | 16-byte file id
    chunk    u32 length | sealed(chunk)    AAD = file id | u64 index | u8 last
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import fsio
from ..errors import NotFound, StoreCorrupt
from ..security.crypto import InvalidTag, Sealer, random_key
from .journal import storage_error, _write_all

MAGIC = b"FKB1"
CHUNK = 1 << 20
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class BlobRef:
    addr: str
    size: int


def _aad(file_id: bytes, index: int, last: bool) -> bytes:
    return file_id + struct.pack(">QB", index, 1 if last else 0)


class _SealedFileWriter:
    """Chunks → sealed frames in one file; shared by blobs and the temp spool."""

    def __init__(self, path: Path, sealer: Sealer, fd: int | None = None):
        self.path = path
        self._sealer = sealer
        self._file_id = os.urandom(16)
        self._fd = fsio.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) if fd is None else fd
        self._buf = bytearray()
        self._index = 0
        self.size = 0
        try:
            _write_all(self._fd, MAGIC + self._file_id)
        except OSError:
            self.abort()  # a full disk leaves no file behind
            raise

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        self.size += total
        # Fill the pending chunk, then seal whole chunks straight from the caller's buffer:
        # no copy of a big write is kept, and nothing is shifted in memory.
        if self._buf:
            take = min(CHUNK - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == CHUNK and view:
                self._emit(bytes(self._buf), last=False)
                self._buf.clear()
        while len(view) > CHUNK:
            self._emit(bytes(view[:CHUNK]), last=False)
            view = view[CHUNK:]
        self._buf += view
        return total

    def _emit(self, chunk: bytes, last: bool) -> None:
        sealed = self._sealer.seal(chunk, _aad(self._file_id, self._index, last))
        _write_all(self._fd, _LEN.pack(len(sealed)) + sealed)
        self._index += 1

    def finish(self, sync: bool, close: bool = True) -> int:
        """Seal the last chunk; fsync when asked; returns the fd when `close` is False
        (the caller then owns it: a batch fsyncs it later, off the caller's thread)."""
        self._emit(bytes(self._buf), last=True)
        self._buf.clear()
        if sync:
            fsio.fsync(self._fd)
        fd, self._fd = self._fd, -1
        if close:
            os.close(fd)
        return fd

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        _unlink_missing_ok(self.path)


# A damaged blob is one capture, not the store: the kit keeps running and says how to repair it.
BLOB_REMEDY = "this stored copy cannot be read; send the capture again (or import it again) to repair it"


def _read_sealed_file(path: Path, sealer: Sealer) -> Iterator[bytes]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"blob {path.name} is not in the store") from None
    with fh:
        head = fh.read(4 + 16)
        if len(head) < 20 or head[:4] != MAGIC:
            raise StoreCorrupt(path, 0, "not a fieldkit blob", remedy=BLOB_REMEDY)
        file_id, index, offset = head[4:], 0, 20
        while True:
            raw_len = fh.read(4)
            if len(raw_len) < 4:
                raise StoreCorrupt(path, offset, "blob is truncated", remedy=BLOB_REMEDY)
            (length,) = _LEN.unpack(raw_len)
            sealed = fh.read(length)
            for last in (False, True):
                try:
                    chunk = sealer.open(sealed, _aad(file_id, index, last))
                    break
                except InvalidTag:
                    continue
            else:
                raise StoreCorrupt(path, offset, "blob chunk fails its authentication tag", remedy=BLOB_REMEDY)
            yield chunk
            if last:
                return
            index += 1
            offset += 4 + length


def _read_sealed_chunk(path: Path, sealer: Sealer, index: int) -> bytes:
    """Chunk `index` alone: every chunk but the last holds exactly CHUNK bytes, so its place
    in the file is known and one frame of a long cine decrypts only the chunks it spans."""
    full = 4 + CHUNK + sealer.overhead
    offset = 20 + index * full
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"blob {path.name} is not in the store") from None
    with fh:
        head = fh.read(20)
        if len(head) < 20 or head[:4] != MAGIC:
            raise StoreCorrupt(path, 0, "not a fieldkit blob", remedy=BLOB_REMEDY)
        fh.seek(offset)
        raw_len = fh.read(4)
        if len(raw_len) < 4:
            raise StoreCorrupt(path, offset, "blob is truncated", remedy=BLOB_REMEDY)
        (length,) = _LEN.unpack(raw_len)
        if length > full - 4:
            raise StoreCorrupt(path, offset, "blob chunk has an impossible length", remedy=BLOB_REMEDY)
        sealed = fh.read(length)
    for last in (False, True):
        try:
            chunk = sealer.open(sealed, _aad(head[4:], index, last))
        except InvalidTag:
            continue
        if not last and len(chunk) != CHUNK:  # cannot be: a sealed non-last chunk is always full
            break
        return chunk
    raise StoreCorrupt(path, offset, "blob chunk fails its authentication tag", remedy=BLOB_REMEDY)


def _unlink_missing_ok(path: Path) -> None:
    try:
        fsio.unlink(path)
    except FileNotFoundError:
        pass


class BlobWriter:
    """Use as a context manager; `ref` is set when the block exits without error. In a
    batch, the blob is durable (and readable at its address) only after `batch.wait()`."""

    def __init__(self, store: "BlobStore", batch: "BlobBatch | None" = None, durable: bool = True):
        self._store = store
        self._batch = batch
        self._durable = durable
        self._mac = hmac.new(store._id_key, digestmod=hashlib.sha256)
        self._tmp, fd = store._take_tmp() if batch is not None else (store._tmp_path(), None)
        try:
            self._out = _SealedFileWriter(self._tmp, store._sealer, fd)
        except OSError as exc:
            raise storage_error(exc, self._tmp) from None
        self.ref: BlobRef | None = None

    def write(self, data: bytes) -> int:
        self._mac.update(data)
        try:
            return self._out.write(data)
        except OSError as exc:
            self._out.abort()
            raise storage_error(exc, self._tmp) from None

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._out.abort()
            return
        try:
            if self._batch is not None:
                fd = self._out.finish(sync=False, close=False)
                self.ref = BlobRef(self._mac.hexdigest(), self._out.size)
                self._batch._add(fd, self._tmp, self.ref.addr, self._durable)
                return
            if not self._durable:
                self.ref = BlobRef(self._mac.hexdigest(), self._out.size)
                self._store._close_and_replace(self._out.finish(sync=False, close=False), self._tmp, self.ref.addr)
                return
            self._out.finish(sync=True)
            self.ref = self._store._commit(self._tmp, self._mac.hexdigest(), self._out.size)
        except OSError as err:
            self._out.abort()
            raise storage_error(err, self._tmp) from None


def _put(writer: BlobWriter, data: bytes) -> BlobRef:
    with writer:
        writer.write(data)
    return writer.ref


# fsyncs of batched blobs run here, overlapping the caller's parsing and encoding (an
# fsync waits on the disk, not on the interpreter); two, so the disk can merge flushes
_sync_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blob-sync")


class BlobBatch:
    """Blobs written now and made durable together: each file is fsynced and moved into
    place by a background thread as soon as it is written, while the caller goes on with
    the next object; `wait()` returns once every blob of the batch, and the directory
    entries that name them, are durable. Nothing may refer to a batched blob durably (a
    catalogue row) before `wait()` returned."""

    def __init__(self, store: "BlobStore"):
        self._store = store
        self._jobs: list[tuple[Future, Path]] = []

    def writer(self) -> BlobWriter:
        return BlobWriter(self._store, self)

    def put_bytes(self, data: bytes) -> BlobRef:
        return _put(self.writer(), data)

    def put_cache(self, data: bytes) -> BlobRef:
        """A blob the kit can make again (see BlobStore.put_cache): put in place by the
        batch's threads, without fsync."""
        return _put(BlobWriter(self._store, self, durable=False), data)

    def _add(self, fd: int, tmp: Path, addr: str, durable: bool = True) -> None:
        job = self._store._sync_and_place if durable else self._store._close_and_replace
        self._jobs.append((_sync_pool.submit(job, fd, tmp, addr), tmp))
        self._store._refill_tmp()

    def wait(self) -> None:
        """Raise the first storage error (after every job ended: none is left running)."""
        jobs, self._jobs = self._jobs, []
        error, parents = None, set()
        for future, tmp in jobs:
            try:
                parents.add(future.result())  # None for a blob that is not fsynced
            except OSError as exc:
                error = error or storage_error(exc, tmp)
                tmp.unlink(missing_ok=True)  # never left half-written behind
        if error is None:
            try:
                self._store._sync_dirs(parents - {None})
            except OSError as exc:
                error = storage_error(exc, self._store.root)
        if error is not None:
            raise error from None


class EncryptedSpool:
    """A temp file for data being received (an upload): sealed with a key that exists only
    in memory, so whatever a crash leaves behind is noise. Write, then `chunks()`."""

    def __init__(self, path: Path):
        try:
            self._out = _SealedFileWriter(path, Sealer(random_key()))
        except OSError as exc:
            raise storage_error(exc, path) from None
        self._path = path
        self._done = False

    @property
    def size(self) -> int:
        return self._out.size

    def write(self, data: bytes) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            self.close()
            raise storage_error(exc, self._path) from None

    def chunks(self) -> Iterator[bytes]:
        if not self._done:
            try:
                self._out.finish(sync=False)
            except OSError as exc:
                self.close()
                raise storage_error(exc, self._path) from None
            self._done = True
        return _read_sealed_file(self._path, self._out._sealer)

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        if not self._done:
            self._out.abort()
        _unlink_missing_ok(self._path)
        self._done = True

    def __enter__(self) -> "EncryptedSpool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SealedReader(io.RawIOBase):
    """A seekable, read-only file over sealed chunks (a spool or a blob), for readers that
    seek (zipfile reads its central directory first; pydicom stops before the pixels). Chunks
    are decrypted on demand; nothing is written in clear and at most two sit in memory.
    `source` has `.size` and `.chunks()`."""

    def __init__(self, source):
        self._spool = source
        self._size = source.size
        self._pos = 0
        self._iter = None
        self._next_index = 0     # index of the chunk the iterator yields next
        self._cache: dict[int, bytes] = {}
        # a blob's chunks are all CHUNK bytes but the last; a spool learns its size from chunk 0
        self._chunk_size: int | None = CHUNK if hasattr(source, "chunk") else None

    @property
    def name(self) -> str:  # readers (pydicom) ask; there is no file name to give
        return "<encrypted store>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if index in self._cache:
            return self._cache[index]
        if hasattr(self._spool, "chunk"):  # a blob: read the one chunk asked for, never replay
            data = self._spool.chunk(index)
        else:
            if self._iter is None or index < self._next_index:
                self._iter = iter(self._spool.chunks())
                self._next_index = 0
            data = b""
            while self._next_index <= index:
                data = next(self._iter, b"")
                if self._chunk_size is None and data:
                    self._chunk_size = len(data)
                self._next_index += 1
        if len(self._cache) >= 2:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = data
        return data

    def readinto(self, b) -> int:
        if self._pos >= self._size:
            return 0
        if self._chunk_size is None:
            self._chunk(0)
        size = self._chunk_size or self._size
        index, within = divmod(self._pos, size)
        data = self._chunk(index)[within: within + len(b)]
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_reader(spool) -> io.BufferedReader:
    """A buffered reader over the spool: read(n) returns n bytes unless the end came first
    (the raw reader may return less, at a chunk boundary)."""
    return io.BufferedReader(SealedReader(spool), buffer_size=1 << 20)


class _BlobSource:
    def __init__(self, store: "BlobStore", addr: str, size: int):
        self._store, self._addr, self.size = store, addr, size

    def chunks(self) -> Iterator[bytes]:
        return self._store.iter_chunks(self._addr)

    def chunk(self, index: int) -> bytes:
        return _read_sealed_chunk(self._store.path(self._addr), self._store._sealer, index)


class BlobStore:
    def __init__(self, root: Path, sealer: Sealer, id_key: bytes):
        self.root = Path(root)
        self._sealer = sealer
        self._id_key = id_key
        self._tmp = self.root / "tmp"
        self._durable_dirs: set[str] = set()  # fan-out directories whose entry this process fsynced
        self._spare: deque[tuple[Path, int]] = deque()  # temp files created ahead, open for writing
        self._refilling = threading.Lock()
        self._closed = False
        fsio.makedirs(self.root, 0o700)
        fsio.makedirs(self._tmp, 0o700)
        for leftover in self._tmp.iterdir():  # half-written blobs from a crash: sealed, unreferenced
            fsio.unlink(leftover)

    def _tmp_path(self) -> Path:
        return self._tmp / os.urandom(12).hex()

    # Creating a file waits on the file system's journal, which the background fsyncs keep
    # busy: batched writers take temp files the sync threads created ahead of time.
    SPARE_FILES = 8

    def _take_tmp(self) -> tuple[Path, int | None]:
        try:
            return self._spare.popleft()
        except IndexError:
            return self._tmp_path(), None

    def _refill_tmp(self) -> None:
        if len(self._spare) < self.SPARE_FILES // 2 and self._refilling.acquire(blocking=False):
            _sync_pool.submit(self._create_spares)

    def close(self) -> None:
        """Close and remove the spare temp files: a store opened and closed again and again
        (the CLI, a restore) must not keep a descriptor for each."""
        self._closed = True  # a refill under way stops at its next file (the lock waits for it); later ones make none
        with self._refilling:
            while self._spare:
                path, fd = self._spare.popleft()
                fsio.close(fd)
                fsio.unlink(path)

    def _create_spares(self) -> None:
        try:
            while len(self._spare) < self.SPARE_FILES and not self._closed:
                path = self._tmp_path()
                self._spare.append((path, fsio.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)))
        except OSError:
            pass  # writers create their own file and report the error themselves
        finally:
            self._refilling.release()

    def path(self, addr: str) -> Path:
        if len(addr) != 64 or not all(c in "0123456789abcdef" for c in addr):
            raise NotFound(f"{addr!r} is not a blob address")
        return self.root / addr[:2] / addr

    def _commit(self, tmp: Path, addr: str, size: int) -> BlobRef:
        """Move a finished (fsynced) blob into place; durable, directory entries included,
        when this returns."""
        self._sync_dirs({self._place(tmp, addr)})
        return BlobRef(addr, size)

    def _place(self, tmp: Path, addr: str) -> Path:
        """Rename a finished blob to its address; returns the directory to fsync."""
        dest = self.path(addr)
        if dest.parent.name not in self._durable_dirs:
            fsio.makedirs(dest.parent, 0o700)
        if dest.exists():
            fsio.unlink(tmp)  # same content already here: its entry is fsynced with the directory
        else:
            fsio.replace(tmp, dest)
        return dest.parent

    def _sync_and_place(self, fd: int, tmp: Path, addr: str) -> Path:
        try:
            fsio.fsync(fd)
        finally:
            os.close(fd)
        return self._place(tmp, addr)

    def _close_and_replace(self, fd: int, tmp: Path, addr: str) -> None:
        os.close(fd)
        dest = self.path(addr)
        fsio.makedirs(dest.parent, 0o700)
        fsio.replace(tmp, dest)  # always: what is there may be a copy a power cut damaged

    def _sync_dirs(self, parents: set[Path]) -> None:
        """fsync the fan-out directories that got new entries. A fan-out directory's own
        entry in the root is fsynced once per process (then remembered), so a blob is never
        acknowledged while the directory that holds it could vanish in a power cut - even
        when another thread created that directory a moment ago, or an earlier run created
        it and was killed."""
        new = False
        for parent in parents:
            fsio.fsync_dir(parent)
            new = new or parent.name not in self._durable_dirs
        if new:
            fsio.fsync_dir(self.root)
            self._durable_dirs.update(p.name for p in parents)  # only after the root's fsync

    def batch(self) -> BlobBatch:
        return BlobBatch(self)

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> BlobRef:
        return _put(self.writer(), data)

    def put_cache(self, data: bytes) -> BlobRef:
        """A blob the kit can make again (a preview): sealed and put in place like any
        other, but not fsynced. A power cut may lose or truncate it; its reader then makes
        it again (see store.instances.thumbnail_bytes). Saves an fsync per capture."""
        return _put(BlobWriter(self, durable=False), data)

    def put_stream(self, chunks) -> BlobRef:
        with self.writer() as w:
            for chunk in chunks:
                w.write(chunk)
        return w.ref

    def iter_chunks(self, addr: str) -> Iterator[bytes]:
        return _read_sealed_file(self.path(addr), self._sealer)

    def open(self, addr: str, size: int) -> io.BufferedReader:
        """A seekable reader decrypting on demand: a header can be read without the pixels.
        `size` is the blob's plaintext size, as its catalogue row records it."""
        return open_reader(_BlobSource(self, addr, size))

    def get_bytes(self, addr: str) -> bytes:
        return b"".join(self.iter_chunks(addr))

    def exists(self, addr: str) -> bool:
        try:
            return self.path(addr).exists()
        except NotFound:
            return False

    def set_aside(self, addr: str) -> Path | None:
        """Move a damaged blob off its address, so that a good copy can take its place; it
        is kept (sealed) under `damaged/`, never deleted. None when there was no file."""
        src, aside = self.path(addr), self.root / "damaged"
        aside.mkdir(mode=0o700, exist_ok=True)
        dest = aside / f"{addr}.{time.time_ns()}"
        try:
            fsio.replace(src, dest)
        except FileNotFoundError:
            return None
        fsio.fsync_dir(src.parent)
        fsio.fsync_dir(aside)
        return dest

    def delete(self, addr: str) -> None:
        _unlink_missing_ok(self.path(addr))

    def open_spool(self) -> EncryptedSpool:
        return EncryptedSpool(self._tmp_path())

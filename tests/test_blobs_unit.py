"""The blob store alone (fieldkit.store.blobs) on a temp dir, checked against its file
layout written out here (header, frames, the AAD of each chunk) and against the order of
its file-system calls (what is fsynced before a blob is acknowledged). Fast enough for
`make mutate` to run it against every mutant of the blob store; power cuts over the whole
store are tests/test_powercut.py."""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import os
import struct
import time

import pytest

from fieldkit import fsio
from fieldkit.errors import NotFound, StorageFull, StoreCorrupt
from fieldkit.security.crypto import Sealer, random_key
from fieldkit.store import blobs
from fieldkit.store.blobs import CHUNK, BlobStore, EncryptedSpool, open_reader
from kitproc import open_files, wait_until

KB = 1024


class Trace:
    """The file seam, passed through to `os` and written down: (call, path, ...)."""

    def __init__(self):
        self.calls: list[tuple] = []

    @staticmethod
    def _path(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def open(self, path, flags, mode=0o777):
        return os.open(path, flags, mode)

    def close(self, fd):
        return os.close(fd)

    def write(self, fd, data):
        return os.write(fd, data)

    def pwrite(self, fd, data, offset):
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd, size):
        return os.ftruncate(fd, size)

    def fsync(self, fd):
        self.calls.append(("fsync", self._path(fd)))
        return os.fsync(fd)

    def fdatasync(self, fd):
        self.calls.append(("fdatasync", self._path(fd)))
        return os.fdatasync(fd)

    def replace(self, src, dst):
        self.calls.append(("replace", str(src), str(dst)))
        return os.replace(src, dst)

    def unlink(self, path):
        self.calls.append(("unlink", str(path)))
        return os.unlink(path)

    def mkdir(self, path, mode=0o777):
        self.calls.append(("mkdir", str(path)))
        return os.mkdir(path, mode)

    def fsync_dir(self, path):
        self.calls.append(("fsync_dir", str(path)))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@pytest.fixture
def keys():
    return Sealer(random_key()), os.urandom(32)


@pytest.fixture
def store(tmp_path, keys):
    blobs = BlobStore(tmp_path / "blobs", *keys)
    yield blobs
    blobs.close()


def test_closing_the_store_closes_and_removes_its_spare_temp_files(store):
    batch = store.batch()
    for i in range(3):
        with batch.writer() as w:
            w.write(os.urandom(1000 + i))
    batch.wait()
    wait_until(lambda: store._spare, 10, step=0.01)  # the spares are made in the background
    assert store._spare and open_files(store.root / "tmp")
    store.close()
    assert open_files(store.root) == []
    assert list((store.root / "tmp").iterdir()) == []
    store._refill_tmp()  # a closed store makes no more
    time.sleep(0.05)
    assert list((store.root / "tmp").iterdir()) == [] and not store._spare


@pytest.fixture
def trace():
    t = Trace()
    previous = fsio.install(t)
    yield t
    fsio.install(previous)


def _frames(path) -> tuple[bytes, list[bytes]]:
    """(file id, sealed frames) of a blob file, read by the layout in the module's docstring."""
    raw = open(path, "rb").read()
    assert raw[:4] == b"FKB1"
    file_id, pos, frames = raw[4:20], 20, []
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        frames.append(raw[pos + 4:pos + 4 + length])
        pos += 4 + length
    assert pos == len(raw)
    return file_id, frames


def _tmp_files(store) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir() if p.stat().st_size)


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("sizes", [[0], [1], [CHUNK - 1], [CHUNK], [CHUNK + 1], [CHUNK, 1], [7, CHUNK],
                                   [CHUNK // 2] * 2, [CHUNK // 2] * 3, [2 * CHUNK + 5]])
def test_a_blob_is_sealed_chunk_by_chunk_as_the_layout_says(store, keys, sizes):
    sealer, id_key = keys
    parts = [os.urandom(n) for n in sizes]
    data = b"".join(parts)
    ref = store.put_stream(parts)
    assert ref.addr == hmac.new(id_key, data, hashlib.sha256).hexdigest() and ref.size == len(data)
    path = store.path(ref.addr)
    assert path == store.root / ref.addr[:2] / ref.addr
    file_id, frames = _frames(path)
    # full chunks, the last one marked as such (sealed even when empty: it says "the end")
    expected = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    assert len(frames) == len(expected)
    for index, (frame, chunk) in enumerate(zip(frames, expected)):
        last = index == len(frames) - 1
        assert sealer.open(frame, file_id + struct.pack(">QB", index, int(last))) == chunk
    assert store.get_bytes(ref.addr) == data and b"".join(store.iter_chunks(ref.addr)) == data
    assert store.put_bytes(data) == ref  # the address depends on the content only
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_same_content_is_stored_once(store):
    a = store.put_bytes(b"same" * 5000)
    b = store.put_stream([b"same" * 2500, b"same" * 2500])
    assert a == b
    assert [p.name for p in store.root.rglob("*") if p.is_file() and p.parent.name != "tmp"] == [a.addr]
    assert not _tmp_files(store)


def test_a_blob_is_read_in_pieces_from_any_place(store):
    data = os.urandom(2 * CHUNK + 1000)
    ref = store.put_bytes(data)
    with store.open(ref.addr, ref.size) as fh:
        assert fh.read(10) == data[:10]
        fh.seek(CHUNK - 5)
        assert fh.read(10) == data[CHUNK - 5:CHUNK + 5]  # across a chunk boundary
        fh.seek(-7, io.SEEK_END)
        assert fh.read() == data[-7:] and fh.read(5) == b""
        fh.seek(3)
        assert fh.read(4) == data[3:7]
    for index in range(3):
        assert blobs._read_sealed_chunk(store.path(ref.addr), store._sealer, index) == data[index * CHUNK:][:CHUNK]
    with pytest.raises(StoreCorrupt, match="blob is truncated"):
        blobs._read_sealed_chunk(store.path(ref.addr), store._sealer, 3)


# ----------------------------------------------------------------------------- damage

def _refusal(read, path, offset: int, reason: str) -> None:
    """`read()` refuses the blob at `path`, naming the file, the offset, why, and how to repair it."""
    with pytest.raises(StoreCorrupt) as caught:
        read()
    err = caught.value
    assert (err.path, err.offset, err.reason) == (str(path), offset, reason)
    assert str(err).endswith(blobs.BLOB_REMEDY)


def _damaged(store, ref, change) -> StoreCorrupt:
    path = store.path(ref.addr)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(raw)))
    with pytest.raises(StoreCorrupt) as caught:
        store.get_bytes(ref.addr)
    return caught.value


def test_damage_anywhere_in_a_blob_is_refused_naming_the_place(store):
    data = os.urandom(CHUNK + 3000)
    overhead = store._sealer.overhead
    second = 20 + 4 + CHUNK + overhead  # where the second frame starts

    def flip(at):
        def change(raw):
            raw[at] ^= 0x01
            return raw
        return change

    for at, offset, reason in ((0, 0, "not a fieldkit blob"), (19, 20, "fails its authentication tag"),
                               (30, 20, "fails its authentication tag"), (second + 10, second, "authentication")):
        ref = store.put_bytes(data)
        err = _damaged(store, ref, flip(at))
        assert (err.offset, reason in err.reason) == (offset, True), (at, err)
        store.delete(ref.addr)
    def fresh():  # a damaged copy stays until it is set aside: a new put of the same content keeps it
        store.delete(ref.addr)
        return store.put_bytes(data)

    err = _damaged(store, fresh(), lambda raw: raw[:second])  # the last frame is gone: a non-last chunk ends it
    assert (err.offset, err.reason) == (second, "blob is truncated")
    assert _damaged(store, fresh(), lambda raw: raw[:second + 100]).offset == second  # cut inside the last frame
    assert _damaged(store, fresh(), lambda raw: raw[:10]).reason == "not a fieldkit blob"
    # the two frames swapped: each is refused at its new place
    assert _damaged(store, fresh(), lambda raw: raw[:20] + raw[second:] + raw[20:second]).offset == 20


def test_one_damaged_chunk_is_refused_when_read_alone(store):
    data = os.urandom(2 * CHUNK + 10)
    ref = store.put_bytes(data)
    path = store.path(ref.addr)
    raw = bytearray(path.read_bytes())
    full = 4 + CHUNK + store._sealer.overhead
    raw[20 + full + 50] ^= 0x01  # inside chunk 1
    path.write_bytes(bytes(raw))
    assert blobs._read_sealed_chunk(path, store._sealer, 0) == data[:CHUNK]
    with pytest.raises(StoreCorrupt, match="fails its authentication tag") as caught:
        blobs._read_sealed_chunk(path, store._sealer, 1)
    assert caught.value.offset == 20 + full
    raw[20 + full:20 + full + 4] = struct.pack(">I", full - 3)  # a length no chunk can have
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt, match="impossible length"):
        blobs._read_sealed_chunk(path, store._sealer, 1)
    path.write_bytes(b"FKB2" + bytes(raw[4:]))
    with pytest.raises(StoreCorrupt, match="not a fieldkit blob"):
        blobs._read_sealed_chunk(path, store._sealer, 0)
    path.write_bytes(bytes(raw[:19]))
    with pytest.raises(StoreCorrupt, match="not a fieldkit blob"):
        blobs._read_sealed_chunk(path, store._sealer, 0)


def test_a_chunk_from_another_blob_or_place_is_refused(store):
    a = store.put_bytes(os.urandom(CHUNK + 10))
    b = store.put_bytes(os.urandom(CHUNK + 10))
    pa, pb = store.path(a.addr), store.path(b.addr)
    raw_a, raw_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(raw_a[:20] + raw_b[20:])  # b's frames under a's file id
    with pytest.raises(StoreCorrupt, match="authentication"):
        store.get_bytes(a.addr)
    with pytest.raises(StoreCorrupt, match="authentication"):
        blobs._read_sealed_chunk(pa, store._sealer, 0)


def test_each_refusal_names_the_file_the_place_and_the_repair(store):
    data = os.urandom(2 * CHUNK + 10)
    ref = store.put_bytes(data)
    path, sealer = store.path(ref.addr), store._sealer
    raw = path.read_bytes()
    full = 4 + CHUNK + sealer.overhead

    def whole():
        return store.get_bytes(ref.addr)

    def chunk(i):
        return lambda: blobs._read_sealed_chunk(path, sealer, i)

    path.write_bytes(b"FKB2" + raw[4:])
    _refusal(whole, path, 0, "not a fieldkit blob")
    _refusal(chunk(0), path, 0, "not a fieldkit blob")
    path.write_bytes(raw[:20 + full])
    _refusal(whole, path, 20 + full, "blob is truncated")
    _refusal(chunk(1), path, 20 + full, "blob is truncated")
    path.write_bytes(raw[:20 + full] + struct.pack(">I", full - 3) + raw[20 + full + 4:])
    _refusal(chunk(1), path, 20 + full, "blob chunk has an impossible length")
    flipped = bytearray(raw)
    flipped[20 + full + 100] ^= 1
    path.write_bytes(bytes(flipped))
    _refusal(whole, path, 20 + full, "blob chunk fails its authentication tag")
    _refusal(chunk(1), path, 20 + full, "blob chunk fails its authentication tag")
    path.unlink()
    for read in (whole, chunk(0)):
        with pytest.raises(NotFound, match=f"^blob {ref.addr} is not in the store$"):
            read()


def test_a_missing_or_malformed_address_is_not_found(store):
    for addr in ("0" * 64, "../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(NotFound):
            store.get_bytes(addr)
        assert not store.exists(addr)
    with pytest.raises(NotFound):
        blobs._read_sealed_chunk(store.root / "nothing", store._sealer, 0)


# ----------------------------------------------------------------------------- durability

def test_a_blob_is_fsynced_then_named_then_its_directories_fsynced(store, trace):
    ref = store.put_bytes(b"x" * 5000)
    dest = str(store.path(ref.addr))
    fan_out, root = os.path.dirname(dest), str(store.root)
    calls = trace.calls
    (tmp,) = [c[1] for c in calls if c[0] == "fsync"]
    assert os.path.dirname(tmp) == str(store.root / "tmp")
    assert [c for c in calls if c[0] != "unlink"] == [
        ("fsync", tmp),  # the content first
        ("mkdir", fan_out), ("fsync_dir", root),  # a new fan-out directory is durable once made
        ("replace", tmp, dest), ("fsync_dir", fan_out),  # then its name
        ("fsync_dir", root)]  # and the fan-out directory's own entry, once a process
    trace.calls.clear()
    # content whose address falls in the same fan-out directory (1 in 256: one of 10 000 does, all but surely)
    other = next(store.put_bytes(i.to_bytes(2, "big") * 50) for i in range(10_000)
                 if store.path(hmac.new(store._id_key, i.to_bytes(2, "big") * 50, hashlib.sha256).hexdigest()).parent
                 == store.path(ref.addr).parent)
    # the fan-out directory's own entry was made durable once: only the directory now
    assert [c[0] for c in trace.calls if c[0] in ("fsync", "replace", "fsync_dir")] == ["fsync", "replace", "fsync_dir"]
    assert trace.calls[-1] == ("fsync_dir", fan_out) and other.addr != ref.addr
    trace.calls.clear()
    assert store.put_bytes(b"x" * 5000) == ref  # already stored: the copy is dropped, the entry fsynced
    kinds = [c[0] for c in trace.calls if c[0] in ("fsync", "replace", "unlink", "fsync_dir")]
    assert kinds == ["fsync", "unlink", "fsync_dir"] and trace.calls[-1] == ("fsync_dir", fan_out)


def test_a_new_process_makes_the_fan_out_entry_durable_again(tmp_path, keys, trace):
    first = BlobStore(tmp_path / "blobs", *keys)
    ref = first.put_bytes(b"y" * 100)
    again = BlobStore(tmp_path / "blobs", *keys)  # the fan-out directory exists, from an earlier run
    trace.calls.clear()
    again.put_bytes(b"y" * 100)
    assert trace.calls[-2:] == [("fsync_dir", str(again.path(ref.addr).parent)), ("fsync_dir", str(again.root))]


def test_a_batch_is_durable_when_wait_returns(store, trace):
    batch = store.batch()
    datas = [os.urandom(3000 + i) for i in range(6)]
    refs = [batch.put_bytes(d) for d in datas]
    batch.wait()
    for ref, data in zip(refs, datas):
        assert store.get_bytes(ref.addr) == data
        dest = str(store.path(ref.addr))
        renamed = [i for i, c in enumerate(trace.calls) if c[0] == "replace" and c[2] == dest]
        (at,) = renamed
        src = trace.calls[at][1]
        assert ("fsync", src) in trace.calls[:at]  # the content before its name
        dir_syncs = [i for i, c in enumerate(trace.calls) if c == ("fsync_dir", os.path.dirname(dest))]
        assert dir_syncs and max(dir_syncs) > at  # and the name before wait() returned
    assert trace.calls[-1] == ("fsync_dir", str(store.root))
    assert not _tmp_files(store)
    assert store.put_bytes(datas[0]) == refs[0]
    batch.wait()  # an empty batch waits for nothing


def test_a_batch_whose_fsync_fails_reports_it_and_leaves_no_half_written_file(store, monkeypatch):
    batch = store.batch()
    good = batch.put_bytes(b"g" * 1000)
    batch.wait()
    real = fsio.fsync

    def failing(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsio, "fsync", failing)
    bad = batch.put_bytes(b"b" * 1000)
    with pytest.raises(StorageFull, match=f"^cannot write {store.root / 'tmp'}/[0-9a-f]+: I/O error$"):
        batch.wait()
    monkeypatch.setattr(fsio, "fsync", real)
    assert not store.exists(bad.addr) and store.get_bytes(good.addr) == b"g" * 1000
    assert not _tmp_files(store)
    batch.wait()  # the failed job is not waited for again


def test_a_batch_whose_directory_fsync_fails_reports_it(store, monkeypatch):
    store.put_bytes(b"d" * 1000)  # its fan-out directory exists: only the batch's own fsync is left to fail
    batch = store.batch()
    batch.put_bytes(b"d" * 1000)

    def failing(path):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsio, "fsync_dir", failing)
    with pytest.raises(StorageFull, match=f"^cannot write {store.root}: I/O error$"):
        batch.wait()


def test_a_cached_blob_is_put_in_place_without_fsync_and_repairs_a_damaged_copy(store, trace):
    data = os.urandom(4000)
    ref = store.put_bytes(data)
    path = store.path(ref.addr)
    path.write_bytes(path.read_bytes()[:30])  # a copy a power cut damaged
    trace.calls.clear()
    assert store.put_cache(data) == ref
    assert store.get_bytes(ref.addr) == data
    assert not [c for c in trace.calls if c[0] in ("fsync", "fsync_dir")]
    batch = store.batch()
    path.write_bytes(path.read_bytes()[:30])
    assert batch.put_cache(data) == ref
    batch.wait()
    assert store.get_bytes(ref.addr) == data
    assert not [c for c in trace.calls if c[0] == "fsync"]


def test_a_disk_full_during_a_write_leaves_nothing_behind_and_closes_only_its_file(store, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageFull, match="disk full while writing"):
        with store.writer() as w:
            w.write(b"a" * 100)
            monkeypatch.setattr(fsio, "write", full)
            w.write(os.urandom(2 * CHUNK))  # a chunk is sealed and written: the disk is full
    monkeypatch.undo()
    assert w.ref is None and not list((store.root / "tmp").iterdir())
    os.fstat(1)  # the writer closed its own file once, and nothing else (a second close could hit another)


def test_a_write_that_fails_leaves_nothing_behind(store, monkeypatch):
    with pytest.raises(RuntimeError):
        with store.writer() as w:
            w.write(b"half" * 1000)
            raise RuntimeError("the upload broke off")
    assert w.ref is None and not list((store.root / "tmp").iterdir())
    real = fsio.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "fsync", full)
    with pytest.raises(StorageFull, match=f"^disk full while writing {store.root / 'tmp'}/[0-9a-f]+: "):
        store.put_bytes(b"z" * 1000)
    monkeypatch.setattr(fsio, "fsync", real)
    assert not list((store.root / "tmp").iterdir())
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


# ----------------------------------------------------------------------------- the spool and its reader

def test_the_spool_reads_back_whole_and_seeks_like_a_file(tmp_path):
    data = os.urandom(2 * CHUNK + 777)
    with EncryptedSpool(tmp_path / "spool") as spool:
        for i in range(0, len(data), 300 * KB):
            spool.write(data[i:i + 300 * KB])
        assert spool.size == len(data)
        assert data[:4096] not in (tmp_path / "spool").read_bytes()  # sealed on disk
        assert spool.read_all() == data
        raw = blobs.SealedReader(spool)
        assert (raw.readable(), raw.seekable(), raw.name) == (True, True, "<encrypted store>")
        fh = open_reader(spool)
        assert fh.read(5) == data[:5]
        fh.seek(CHUNK + CHUNK // 2)
        assert fh.read(CHUNK) == data[CHUNK + CHUNK // 2:][:CHUNK]
        fh.seek(10)  # backwards: the chunks are read again from the start
        assert fh.read(20) == data[10:30]
        assert fh.seek(-100, io.SEEK_END) == len(data) - 100 and fh.read() == data[-100:]
        assert fh.seek(-50, io.SEEK_CUR) == len(data) - 50
        fh.seek(0)
        assert fh.read() == data
        assert raw.seek(-5) == 0 and raw.tell() == 0  # before the start is the start
        assert raw.seek(len(data) + 5) == len(data) + 5 and raw.read(10) == b""
    assert not (tmp_path / "spool").exists()


def test_a_reader_decrypts_a_long_blob_one_chunk_at_a_time(store, monkeypatch):
    data = os.urandom(3 * CHUNK + 5)
    ref = store.put_bytes(data)
    asked = []
    real = blobs._read_sealed_chunk
    monkeypatch.setattr(blobs, "_read_sealed_chunk", lambda path, sealer, i: asked.append(i) or real(path, sealer, i))
    monkeypatch.setattr(blobs, "_read_sealed_file", None)  # a blob's reader never replays the whole file
    raw = blobs.SealedReader(blobs._BlobSource(store, ref.addr, ref.size))
    buf = bytearray(10)
    raw.seek(2 * CHUNK + 3)
    assert raw.readinto(buf) == 10 and bytes(buf) == data[2 * CHUNK + 3:][:10]
    raw.seek(CHUNK - 4)
    assert raw.readinto(buf) == 4 and bytes(buf[:4]) == data[CHUNK - 4:CHUNK]  # up to the chunk's end
    assert raw.readinto(buf) == 10 and bytes(buf) == data[CHUNK:CHUNK + 10]
    raw.seek(2 * CHUNK)
    raw.readinto(buf)
    assert asked == [2, 0, 1, 2]  # at most two chunks are kept: chunk 2 was dropped for 1


def test_a_spool_is_read_in_order_decrypting_each_chunk_once(tmp_path):
    data = os.urandom(2 * CHUNK + 777)
    with EncryptedSpool(tmp_path / "spool") as spool:
        spool.write(data)
        replays = []
        real = spool.chunks
        spool.chunks = lambda: replays.append(1) or real()
        raw = blobs.SealedReader(spool)
        buf = bytearray(CHUNK)
        got = b""
        while n := raw.readinto(buf):
            got += bytes(buf[:n])
        assert got == data and len(replays) == 1  # one pass over the file for a read from start to end
        raw.seek(CHUNK + 5)  # after the short last chunk: chunks are still CHUNK bytes long
        assert raw.readinto(buf) == CHUNK - 5 and bytes(buf[:CHUNK - 5]) == data[CHUNK + 5:2 * CHUNK]
        assert raw.tell() == 2 * CHUNK and len(replays) == 1  # chunk 1 is one of the two kept


def test_a_blob_of_whole_chunks_reads_to_its_end_and_no_further(store):
    data = os.urandom(2 * CHUNK)
    ref = store.put_bytes(data)
    raw = blobs.SealedReader(blobs._BlobSource(store, ref.addr, ref.size))
    raw.seek(0, io.SEEK_END)
    assert raw.readinto(bytearray(10)) == 0  # the end: no chunk 2 is asked for
    with store.open(ref.addr, ref.size) as fh:
        assert fh.read() == data


def test_a_fan_out_directory_is_private(store):
    cached = store.put_cache(b"preview")
    durable = next(store.put_bytes(bytes([i])) for i in range(256)
                   if store.path(hmac.new(store._id_key, bytes([i]), hashlib.sha256).hexdigest()).parent
                   != store.path(cached.addr).parent)
    for ref in (cached, durable):
        assert os.stat(store.path(ref.addr).parent).st_mode & 0o777 == 0o700


def test_writing_and_reading_blobs_leaves_no_file_open(store, tmp_path):
    before = len(open_files())
    for _ in range(5):
        ref = store.put_bytes(os.urandom(3000))
        store.put_cache(os.urandom(3000))
        store.get_bytes(ref.addr)
        with EncryptedSpool(tmp_path / "spool") as spool:
            spool.write(b"s" * 100)
            assert spool.read_all() == b"s" * 100
    assert len(open_files()) == before


def test_a_blob_that_cannot_be_named_is_not_acknowledged_and_closes_only_its_file(store, monkeypatch):
    def failing(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsio, "replace", failing)
    with pytest.raises(StorageFull, match=f"^cannot write {store.root / 'tmp'}/[0-9a-f]+: I/O error$"):
        store.put_bytes(b"n" * 1000)
    monkeypatch.undo()
    assert not list((store.root / "tmp").iterdir())
    assert [p for p in store.root.rglob("*") if p.is_file()] == []
    os.fstat(1)  # the finished file was closed once, and nothing else after it

"""The journal alone, in process, on a temp dir (milliseconds a test): what was acknowledged
is read back byte-identical after a reopen, a failed append (the disk full, injected through
the file seam) leaves the journal usable with nothing written over earlier records, a torn
tail is cut and kept aside, damage is refused with its offset and record number, and
compaction keeps every live record and its reserve. The framing is checked against the
layout the module documents, read here by hand."""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest

from fieldkit import fsio
from fieldkit.errors import StorageFull, StoreCorrupt, UnsupportedVersion
from fieldkit.security.crypto import Sealer, random_key
import fieldkit.store.journal as journal_module
from fieldkit.store.journal import FORMAT, HEADER, MAGIC, PREALLOC, SECTOR, Journal

# each test takes milliseconds: a journal that loops forever fails here, not at the suite's bound
pytestmark = pytest.mark.timeout(10)

RECORDS = [{"i": 0}, {"i": 1, "text": "Zoë, ½ 日本"}, {"i": 2, "nested": {"a": [1, 2.5, None, True]}},
           {"i": 3, "pad": "p" * 3000}, {"i": 4, "empty": ""}]


class Seam:
    """The file seam, passed through to the real calls, with a log of what was called and
    failures to inject: `fail_on("pwrite", 1, 2)` makes the next call of pwrite and the one
    after it raise the OSError `error` (a failing write has written half its data first)."""

    def __init__(self):
        self.real = fsio.current()
        self.calls: list[tuple] = []
        self._fail: dict[str, tuple[int, set[int]]] = {}
        self.error = errno.ENOSPC

    def fail_on(self, name: str, *nth: int) -> None:
        self._fail[name] = (len(self.named(name)), set(nth))

    def _failing(self, name: str) -> bool:
        if name not in self._fail:
            return False
        before, nth = self._fail[name]
        return len(self.named(name)) - before in nth

    def _raise(self):
        raise OSError(self.error, os.strerror(self.error))

    def open(self, path, flags, mode=0o777):
        self.calls.append(("open", Path(path).name, None))
        if self._failing("open"):
            self._raise()
        fd = self.real.open(path, flags, mode)
        self.calls[-1] = ("open", Path(path).name, fd)
        return fd

    def close(self, fd):
        self.calls.append(("close", fd))
        return self.real.close(fd)

    def write(self, fd, data):
        self.calls.append(("write", fd, len(data)))
        if self._failing("write"):
            self._raise()
        return self.real.write(fd, data)

    def pwrite(self, fd, data, offset):
        self.calls.append(("pwrite", fd, len(data), offset))
        if self._failing("pwrite"):
            self.real.pwrite(fd, bytes(data)[:len(data) // 2], offset)  # half lands, then the error
            self._raise()
        return self.real.pwrite(fd, data, offset)

    def ftruncate(self, fd, size):
        self.calls.append(("ftruncate", fd, size))
        if self._failing("ftruncate"):
            self._raise()
        return self.real.ftruncate(fd, size)

    def fsync(self, fd):
        self.calls.append(("fsync", fd))
        if self._failing("fsync"):
            self._raise()
        return self.real.fsync(fd)

    def fdatasync(self, fd):
        self.calls.append(("fdatasync", fd))
        if self._failing("fdatasync"):
            self._raise()
        return self.real.fdatasync(fd)

    def replace(self, src, dst):
        self.calls.append(("replace", Path(src).name, Path(dst).name))
        return self.real.replace(src, dst)

    def unlink(self, path):
        self.calls.append(("unlink", Path(path).name))
        return self.real.unlink(path)

    def mkdir(self, path, mode=0o777):
        self.calls.append(("mkdir", Path(path).name, mode))
        return self.real.mkdir(path, mode)

    def fsync_dir(self, path):
        self.calls.append(("fsync_dir", Path(path).name))
        if self._failing("fsync_dir"):
            self._raise()
        return self.real.fsync_dir(path)

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


@pytest.fixture
def seam():
    s = Seam()
    previous = fsio.install(s)
    yield s
    fsio.install(previous)


@pytest.fixture
def key() -> bytes:
    return random_key()


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "db" / "journal.fkj"


def _opened(path: Path, key: bytes, reserve: int = 0) -> tuple[Journal, list[dict]]:
    journal = Journal(path, Sealer(key), reserve=reserve)
    return journal, list(journal.open())


def _read(path: Path, key: bytes) -> list[dict]:
    journal, records = _opened(path, key)
    journal.close()
    return records


def _written(path: Path, key: bytes, records=RECORDS, reserve: int = 0) -> list[tuple[int, int]]:
    """A journal holding `records`, each acknowledged; the (start, end) of each."""
    journal, _ = _opened(path, key, reserve)
    spans = []
    for record in records:
        start = journal.size
        journal.wait_durable(journal.append(record))
        spans.append((start, journal.size))
    journal.close()
    return spans


def _frames(data: bytes, end: int) -> list[tuple[int, int, bytes]]:
    """(offset, length, sealed bytes) of each record, read by the documented layout."""
    out, off = [], HEADER.size
    while off < end:
        length, crc = struct.unpack(">II", data[off:off + 8])
        assert crc == zlib.crc32(data[off:off + 4])
        out.append((off, length, data[off + 8:off + 8 + length]))
        off += 8 + length
    assert off == end
    return out


# -- writing and reading back --------------------------------------------------------------

def test_a_new_journal_is_a_private_file_in_a_private_dir_with_the_documented_header(path, key, seam):
    journal, records = _opened(path, key)
    assert records == [] and journal.size == HEADER.size
    data = path.read_bytes()
    magic, fmt, file_id = HEADER.unpack(data[:HEADER.size])
    assert (magic, fmt, len(file_id)) == (b"FKJ1", 1, 16) and file_id != bytes(16)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    # made whole under a temp name, renamed into place, the rename made durable
    assert ("replace", "journal.fkj.tmp", "journal.fkj") in seam.calls
    assert seam.calls.index(("fsync_dir", "db")) > seam.calls.index(("replace", "journal.fkj.tmp", "journal.fkj"))
    assert not path.with_name("journal.fkj.tmp").exists()
    journal.close()
    assert _read(path, key) == [] and path.read_bytes() == data  # reopened, not made again


def test_what_was_acknowledged_is_read_back_identical_after_reopen(path, key):
    spans = _written(path, key)
    assert _read(path, key) == RECORDS
    journal, records = _opened(path, key)
    assert records == RECORDS and journal.size == spans[-1][1]
    journal.wait_durable(journal.append({"i": "after reopen"}))  # sealed as the next record number
    journal.close()
    assert _read(path, key) == RECORDS + [{"i": "after reopen"}]


def test_records_are_framed_and_sealed_as_documented(path, key):
    spans = _written(path, key)
    data = path.read_bytes()
    file_id = data[8:24]
    frames = _frames(data, spans[-1][1])
    assert [(off, off + 8 + length) for off, length, _ in frames] == spans
    sealer = Sealer(key)
    for seq, ((_, _, sealed), record) in enumerate(zip(frames, RECORDS)):
        # associated data: file id + record number, so a record moved elsewhere fails its tag
        plain = sealer.open(sealed, file_id + struct.pack(">Q", seq))
        assert plain == json.dumps(record, separators=(",", ":")).encode()  # compact: cost is the change
    assert journal_module._frame(b"abc") == b"\0\0\0\3" + struct.pack(">I", zlib.crc32(b"\0\0\0\3")) + b"abc"


def test_tickets_grow_and_one_fdatasync_covers_every_record_before_it(path, key, seam):
    journal, _ = _opened(path, key)
    tickets = [journal.append(r) for r in RECORDS]
    assert tickets == sorted(set(tickets)) and tickets[-1] == journal.size
    assert seam.named("fdatasync") == []  # appending alone does not sync
    journal.wait_durable(tickets[1])
    assert len(seam.named("fdatasync")) == 1
    journal.wait_durable(tickets[-1])  # the first sync covered everything appended before it
    journal.wait_durable(tickets[0])
    assert len(seam.named("fdatasync")) == 1
    last = journal.append({"i": "later"})
    journal.wait_durable(last)
    assert len(seam.named("fdatasync")) == 2
    journal.close()


def test_writers_waiting_together_share_one_fdatasync(path, key, seam, monkeypatch):
    journal, _ = _opened(path, key)
    first = journal.append({"i": 0})
    entered, release = threading.Event(), threading.Event()
    real = seam.fdatasync

    def slow(fd):  # a slow disk: others append and wait meanwhile
        entered.set()
        release.wait(5)
        return real(fd)

    monkeypatch.setattr(seam, "fdatasync", slow)
    fsio.install(seam)
    waiter = threading.Thread(target=journal.wait_durable, args=(first,))
    waiter.start()
    assert entered.wait(5)
    second = journal.append({"i": 1})
    others = [threading.Thread(target=journal.wait_durable, args=(second,)) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [waiter, *others]:
        t.join(5)
        assert not t.is_alive()
    assert len(seam.named("fdatasync")) == 2  # the first sync, then one for the three others
    journal.close()


def test_a_failed_fdatasync_is_a_storage_error_and_a_later_wait_syncs_again(path, key, seam):
    journal, _ = _opened(path, key)
    ticket = journal.append({"i": 0})
    seam.fail_on("fdatasync", 1)
    seam.error = errno.EIO
    with pytest.raises(StorageFull, match="cannot write") as err:
        journal.wait_durable(ticket)
    assert str(err.value) == f"cannot write {path}: Input/output error"
    journal.wait_durable(ticket)  # not counted durable after the failure: synced now
    assert len(seam.named("fdatasync")) == 2
    journal.close()


def test_writing_before_open_is_refused(path, key):
    journal = Journal(path, Sealer(key))
    with pytest.raises(RuntimeError, match="^journal written before it was opened$"):
        journal.append({"i": 0})
    with pytest.raises(RuntimeError, match="^journal compacted before it was opened$"):
        journal.compact(iter([]))
    assert not path.exists()


def test_the_file_is_extended_with_zeros_ahead_of_its_records_and_the_reserve_kept(path, key, seam):
    journal, _ = _opened(path, key, reserve=5000)
    journal.wait_durable(journal.append({"i": 0}))
    end = journal.size
    data = path.read_bytes()
    assert len(data) == end + 5000 + PREALLOC and not any(data[end:])
    assert journal.reserve_left == 5000 + PREALLOC
    zeros = [c for c in seam.named("pwrite") if c[3] == HEADER.size and c[2] > 5000]
    assert zeros and ("fsync", zeros[0][1]) in seam.calls  # the extension is synced before use
    # records go into the zeros that exist: no extension while the reserve stays whole
    extensions = len(seam.named("fsync"))
    filler = {"pad": "x" * 5000}
    while journal.size + _record_size(filler) + 5000 <= end + 5000 + PREALLOC:
        journal.append(filler)
    assert len(seam.named("fsync")) == extensions and len(path.read_bytes()) == len(data)
    journal.append(filler)  # it would eat into the reserve: extended ahead again
    assert len(seam.named("fsync")) == extensions + 1
    assert len(path.read_bytes()) == journal.size + 5000 + PREALLOC
    assert journal.reserve_left == 5000 + PREALLOC
    journal.close()
    assert len(_read(path, key)) > 100


# -- a failed append -----------------------------------------------------------------------

@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "read-only"), (errno.EPERM, "read-only"),
                                         (errno.EIO, "cannot write")])
def test_a_failed_append_writes_nothing_over_earlier_records_and_the_journal_goes_on(path, key, seam, code, words):
    _written(path, key, RECORDS[:3], reserve=4096)
    journal, _ = _opened(path, key, reserve=4096)
    journal.ensure_reserve()
    before = (journal.size, journal.reserve_left, path.read_bytes())
    seam.fail_on("pwrite", 1)
    seam.error = code
    with pytest.raises(StorageFull, match=words) as err:
        journal.append({"i": "lost", "pad": "l" * 100})
    assert str(path) in str(err.value)
    assert (journal.size, journal.reserve_left, path.read_bytes()) == before  # the half record zeroed
    journal.wait_durable(journal.append({"i": "next"}))  # sealed as the record number the lost one had
    journal.close()
    assert _read(path, key) == RECORDS[:3] + [{"i": "next"}]


def test_an_append_that_cannot_even_zero_its_half_record_is_still_a_storage_error(path, key, seam):
    journal, _ = _opened(path, key, reserve=4096)
    journal.wait_durable(journal.append({"i": 0}))
    end = journal.size
    seam.fail_on("pwrite", 1, 2)  # the record's write and its zeroing both fail
    with pytest.raises(StorageFull, match="disk full"):
        journal.append({"i": "lost", "pad": "l" * 100})
    assert journal.size == end  # the next record goes over the half one
    journal.wait_durable(journal.append({"i": 1}))
    journal.close()
    assert _read(path, key) == [{"i": 0}, {"i": 1}]


def test_a_full_disk_with_no_room_ahead_refuses_the_record_and_leaves_the_file(path, key, seam):
    journal, _ = _opened(path, key)
    journal.wait_durable(journal.append({"i": 0}))
    data = path.read_bytes()
    big = {"pad": "b" * (len(data) + 10)}  # past the preallocated zeros: needs an extension
    seam.fail_on("pwrite", 1)
    with pytest.raises(StorageFull, match="disk full"):
        journal.append(big)
    assert path.read_bytes() == data and journal.reserve_left == len(data) - journal.size
    journal.wait_durable(journal.append(big))  # space is back
    journal.close()
    assert _read(path, key) == [{"i": 0}, big]


def _record_size(record: dict) -> int:
    return 8 + Sealer.overhead + len(json.dumps(record, separators=(",", ":")))


def test_a_full_disk_writes_acknowledgements_into_the_reserve_and_retries_later(path, key, seam, monkeypatch, caplog):
    journal, _ = _opened(path, key, reserve=4096)
    journal.wait_durable(journal.append({"i": 0}))
    alloc = journal.size + journal.reserve_left
    filler = {"pad": "y" * 2000}
    while journal.size + _record_size(filler) + 4096 <= alloc:  # up to the reserve
        journal.append(filler)
    left = alloc - journal.size
    seam.fail_on("pwrite", 1)  # the extension fails: the record goes into the reserve
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        t = journal.append({"i": "into the reserve", "pad": "y" * 2000})
    assert [r.getMessage() for r in caplog.records] == [
        f"journal writing into its reserve ({left} bytes left): disk full while writing {path}: "
        "nothing was acknowledged; free space and retry"]
    journal.wait_durable(t)
    assert journal.size + journal.reserve_left == alloc and len(path.read_bytes()) == alloc
    tries = len(seam.named("pwrite"))
    journal.append({"i": "no retry yet"})  # within EXTEND_RETRY_SECONDS: one pwrite, the record's
    assert len(seam.named("pwrite")) == tries + 1
    monkeypatch.setattr(journal_module, "EXTEND_RETRY_SECONDS", 0.0)  # the time has passed
    journal.wait_durable(journal.append({"i": "retried"}))
    assert len(path.read_bytes()) == journal.size + 4096 + PREALLOC
    journal.close()
    assert _read(path, key)[-3:] == [{"i": "into the reserve", "pad": "y" * 2000}, {"i": "no retry yet"}, {"i": "retried"}]


def _sized(n: int) -> dict:
    """A record that takes exactly n bytes in the journal."""
    record = {"pad": ""}
    record["pad"] = "e" * (n - _record_size(record))
    assert _record_size(record) == n
    return record


def test_a_record_up_to_the_reserve_does_not_extend_and_one_filling_the_reserve_is_kept_on_a_full_disk(path, key, seam):
    journal, _ = _opened(path, key, reserve=600)
    journal.wait_durable(journal.append({"i": 0}))
    alloc = journal.size + journal.reserve_left
    syncs = len(seam.named("fsync"))
    up_to_reserve = _sized(alloc - 600 - journal.size)
    journal.wait_durable(journal.append(up_to_reserve))  # ends where the reserve begins: nothing to extend
    assert journal.reserve_left == 600 and len(seam.named("fsync")) == syncs
    assert len(path.read_bytes()) == alloc
    seam.fail_on("pwrite", 1)  # the disk is full: the extension fails
    whole_reserve = _sized(600)
    journal.wait_durable(journal.append(whole_reserve))  # its last byte is the file's last byte
    assert journal.reserve_left == 0 and len(path.read_bytes()) == alloc
    journal.close()
    assert _read(path, key) == [{"i": 0}, up_to_reserve, whole_reserve]


def test_ensure_reserve_tops_up_and_a_full_disk_there_is_logged_not_raised(path, key, seam, caplog):
    _written(path, key, RECORDS[:2])
    data = path.read_bytes()
    journal, _ = _opened(path, key, reserve=3 * PREALLOC)
    seam.fail_on("pwrite", 1)
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        journal.ensure_reserve()
    assert "journal reserve not complete" in caplog.text and path.read_bytes() == data
    journal.ensure_reserve()
    assert journal.reserve_left == 4 * PREALLOC and len(path.read_bytes()) == journal.size + 4 * PREALLOC
    journal.close()


# -- reopening: torn tails cut, damage refused --------------------------------------------

@pytest.mark.parametrize("code, says", [(errno.EACCES, "(Permission denied): the data dir is read-only"),
                                        (errno.EIO, ": Input/output error")])
def test_a_journal_that_cannot_be_opened_for_writing_is_a_storage_error(path, key, seam, code, says):
    _written(path, key, RECORDS[:1])
    seam.fail_on("open", 1)
    seam.error = code
    with pytest.raises(StorageFull) as err:
        _read(path, key)
    assert str(err.value) == f"cannot write {path} {says}".replace(" :", ":")
    assert _read(path, key) == RECORDS[:1]


def test_a_leftover_compaction_temp_file_is_removed_at_open(path, key):
    _written(path, key, RECORDS[:2])
    tmp = path.with_name("journal.fkj.tmp")
    tmp.write_bytes(b"half a compaction")
    assert _read(path, key) == RECORDS[:2] and not tmp.exists()


@pytest.mark.parametrize("keep, why", [(3, "the file ends inside a record header"),
                                       (7, "the file ends inside a record header"),
                                       (8, "record extends past the end of the file"),
                                       (-1, "record extends past the end of the file")])
def test_a_tail_cut_short_is_cut_at_its_record_and_kept_aside(path, key, keep, why, caplog):
    spans = _written(path, key)
    start, end = spans[-1]
    # the file ends inside the last header (3, 7), at its end, one byte short of the record
    data = path.read_bytes()[:start + keep if keep > 0 else end + keep]
    path.write_bytes(data)
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        journal, records = _opened(path, key)
    assert records == RECORDS[:-1] and journal.size == start
    assert f"cut a torn final write at offset {start} ({len(data) - start} bytes, {why})" in caplog.text
    assert len(path.read_bytes()) == start
    (kept,) = path.parent.glob("journal.fkj.torn-*")
    assert kept.name.endswith(f"-{start}") and kept.read_bytes() == data[start:].rstrip(b"\0")
    journal.wait_durable(journal.append({"i": "after the cut"}))  # where the cut record began
    journal.close()
    assert _read(path, key) == RECORDS[:-1] + [{"i": "after the cut"}]  # nothing more to cut


def test_a_last_record_unwritten_from_a_sector_on_is_cut(path, key, caplog):
    spans = _written(path, key)
    start, end = spans[3]  # the 3 000-byte record, then one more
    data = bytearray(path.read_bytes())
    data[(start // SECTOR + 2) * SECTOR:] = bytes(len(data) - (start // SECTOR + 2) * SECTOR)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        assert _read(path, key) == RECORDS[:3]
    assert f"at offset {start} " in caplog.text and "bytes, last record was not completely written)" in caplog.text
    assert not any(path.read_bytes()[start:])


def test_a_record_with_an_unwritten_sector_before_a_later_written_one_is_cut_there(path, key, caplog):
    """Unsynced writes reach the disk in any order: a whole zero sector inside a record, the
    next record written; neither was acknowledged, both are cut."""
    spans = _written(path, key)
    start, end = spans[3]
    data = bytearray(path.read_bytes())
    sector = (start // SECTOR + 2) * SECTOR
    data[sector:sector + SECTOR] = bytes(SECTOR)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        assert _read(path, key) == RECORDS[:3]
    assert f"at offset {start} " in caplog.text and "bytes, record with sectors that never reached the disk)" in caplog.text
    assert not any(path.read_bytes()[start:])


def test_salvage_reports_a_changed_last_record_lost_and_keeps_the_rest(path, key):
    spans = _written(path, key)
    start, end = spans[-1]
    data = bytearray(path.read_bytes())
    data[end - 10] ^= 0x01 if data[end - 10] != 0x01 else 0x02
    path.write_bytes(bytes(data))
    kept, losses = _salvage(path, key)
    assert kept == RECORDS[:-1]
    assert losses == [{"seq": 4, "last_seq": 4, "offset": start,
                       "reason": "record fails its authentication tag (changed, moved or from another key)"}]


def test_salvage_reports_a_torn_tail_as_never_acknowledged_and_leaves_the_file(path, key):
    spans = _written(path, key)
    start = spans[-1][0]
    data = path.read_bytes()[:start + 20]
    path.write_bytes(data)
    kept, losses = _salvage(path, key)
    assert kept == RECORDS[:-1]
    assert losses == [{"seq": 4, "last_seq": 4, "offset": start, "torn": True,
                       "reason": "torn final write (record extends past the end of the file); it was never acknowledged"}]
    assert path.read_bytes() == data


def test_a_flipped_byte_is_refused_with_its_offset_and_record_and_nothing_is_cut(path, key):
    spans = _written(path, key)
    for k, at in [(0, spans[0][0] + 12), (3, spans[3][0] + 700), (4, spans[4][1] - 1), (2, spans[2][0] + 1)]:
        data = bytearray(path.read_bytes())
        flip = 0x01 if data[at] != 0x01 else 0x02  # never a zero byte, which could look unwritten
        data[at] ^= flip
        path.write_bytes(bytes(data))
        with pytest.raises(StoreCorrupt) as err:
            _read(path, key)
        assert (err.value.offset, err.value.seq, err.value.path) == (spans[k][0], k, str(path))
        assert err.value.reason == ("record header checksum does not match" if k == 2 else
                                    "record fails its authentication tag (changed, moved or from another key)")
        assert str(err.value) == (
            f"store file {path} is damaged at byte offset {spans[k][0]} (record {k}): {err.value.reason}; "
            f"refusing to open. Run `fieldkit store salvage --data-dir {path.parent.parent}` to keep every "
            "record that still authenticates (the damaged file is kept aside)")
        assert path.read_bytes() == bytes(data) and not list(path.parent.glob("*.torn-*"))
        data[at] ^= flip
        path.write_bytes(bytes(data))
    assert _read(path, key) == RECORDS


def test_a_record_moved_or_from_another_key_is_refused(path, key, tmp_path):
    spans = _written(path, key)
    data = path.read_bytes()
    swapped = data[:spans[0][0]] + data[spans[1][0]:spans[1][1]] + data[spans[0][0]:spans[0][1]] + data[spans[1][1]:]
    path.write_bytes(swapped)
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (spans[0][0], 0)
    path.write_bytes(data)
    with pytest.raises(StoreCorrupt, match="authentication tag"):
        _read(path, random_key())


@pytest.mark.parametrize("written_to", ["two sectors on", "the sector before the first one wholly past 1 KiB"])
def test_written_bytes_after_the_end_of_the_journal_are_damage(path, key, written_to):
    """An empty header, then written bytes: damage unless a whole unwritten sector within
    1 KiB of it explains them."""
    spans = _written(path, key)
    end = spans[-1][1]
    upto = end + 2 * SECTOR + 8 if written_to == "two sectors on" else ((end + SECTOR) // SECTOR + 1) * SECTOR
    data = bytearray(path.read_bytes())
    data[end + 8:upto] = b"\x5a" * (upto - end - 8)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq, err.value.reason) == (
        end, len(RECORDS), "data found after the end of the journal")


def test_a_broken_header_with_written_bytes_around_it_is_damage(path, key):
    spans = _written(path, key)
    data = bytearray(path.read_bytes())
    data[spans[1][0] + 5] ^= 0x40  # the checksum of record 1's length
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="header checksum") as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (spans[1][0], 1)


def test_a_length_over_the_limit_is_a_bad_header(path, key):
    spans = _written(path, key)
    data = bytearray(path.read_bytes())
    n = struct.pack(">I", (1 << 30) + 1)
    data[spans[2][0]:spans[2][0] + 8] = n + struct.pack(">I", zlib.crc32(n))
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="header checksum") as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (spans[2][0], 2)


def _placed(start_mod: int, target: int) -> list[dict]:
    """Records: one, a filler, then one of `target` bytes starting at `start_mod` modulo 512."""
    pos = HEADER.size + _record_size({"i": 0})
    gap = (start_mod - pos) % SECTOR
    gap += SECTOR if gap < 64 else 0
    return [{"i": 0}, _sized(gap), _sized(target)]


@pytest.mark.parametrize("case", ["nothing after it", "a later record written", "the file ends 10 bytes on"])
def test_a_header_half_written_across_a_sector_is_torn(path, key, case, caplog):
    """The last record's header straddles a sector boundary and the sector after it never
    reached the disk (and nothing after it either, or a later record did, or the file ends
    a few bytes after the boundary)."""
    records = _placed(SECTOR - 4, 1500) + [{"i": "after"}]
    spans = _written(path, key, records)
    start = spans[2][0]
    boundary = start + 4
    data = bytearray(path.read_bytes())
    if case == "the file ends 10 bytes on":
        data = data[:boundary + 10]
    zeroed = boundary + SECTOR if case == "a later record written" else len(data)
    data[boundary:zeroed] = bytes(zeroed - boundary)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        assert _read(path, key) == records[:2]
    assert f"cut a torn final write at offset {start} " in caplog.text and "bytes, half-written record header)" in caplog.text
    assert not any(path.read_bytes()[start:])


@pytest.mark.parametrize("start_mod, zero_next", [(SECTOR - 4, False), (SECTOR - 8, True)])
def test_a_damaged_header_beside_a_sector_boundary_is_damage(path, key, start_mod, zero_next):
    """A header across a boundary with written sectors on both sides, or a header that ends
    on a boundary (so no unwritten sector can explain it), with a bad checksum: damage."""
    records = _placed(start_mod, 1500) + [{"i": "after"}]
    spans = _written(path, key, records)
    start = spans[2][0]
    data = bytearray(path.read_bytes())
    data[start + 1] ^= 0x10
    if zero_next:
        data[start + 8:start + 8 + SECTOR] = bytes(SECTOR)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq, err.value.reason) == (start, 2, "record header checksum does not match")


@pytest.mark.parametrize("length, torn", [(1 << 30, True), ((1 << 30) + 1, False)])
def test_a_header_may_give_up_to_one_gibibyte(path, key, length, torn):
    """The last header giving 1 GiB (MAX_RECORD), its record cut short by the end of the
    file: a torn write, cut; one byte more is no header a kit writes: damage."""
    spans = _written(path, key)
    start = spans[-1][0]
    data = bytearray(path.read_bytes())
    n = struct.pack(">I", length)
    data[start:start + 8] = n + struct.pack(">I", zlib.crc32(n))
    path.write_bytes(bytes(data))
    if torn:
        assert _read(path, key) == RECORDS[:-1]
    else:
        with pytest.raises(StoreCorrupt, match="header checksum"):
            _read(path, key)


def test_a_last_record_written_to_its_end_but_changed_is_damage(path, key):
    """Its last 600 bytes overwritten (with one repeated byte, across a sector boundary),
    nothing after it: every sector of it was written, so it is damage, not a torn write."""
    spans = _written(path, key, RECORDS[:4])  # the 3 000-byte record last
    start, end = spans[-1]
    data = bytearray(path.read_bytes())
    data[end - 600:end] = b"X" * 600
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (start, 3)


def test_a_last_record_with_only_the_first_byte_of_its_last_sector_is_damage(path, key):
    """A disk writes whole sectors: a sector holding one byte of the record and zeros after
    it was written (changed), not left unwritten."""
    spans = _written(path, key, RECORDS[:4])
    start, end = spans[-1]
    last_boundary = (end - 1) // SECTOR * SECTOR
    assert start < last_boundary < end - 1
    data = bytearray(path.read_bytes())
    data[last_boundary + 1:] = bytes(len(data) - last_boundary - 1)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (start, 3)


def test_a_changed_last_record_ending_on_a_sector_boundary_is_damage(path, key):
    records = _placed(100, 1024 - 100)  # ends on a boundary
    spans = _written(path, key, records)
    start, end = spans[-1]
    assert end % SECTOR == 0
    data = bytearray(path.read_bytes())
    data[start + 300] ^= 0x01 if data[start + 300] != 0x01 else 0x02
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.offset, err.value.seq) == (start, 2)


def test_headers_it_cannot_read_are_refused(path, key):
    _written(path, key, RECORDS[:1])
    data = path.read_bytes()
    path.write_bytes(data[:HEADER.size - 1])
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.path, err.value.offset, err.value.reason) == (str(path), 0, "header is truncated")
    path.write_bytes(b"FKJ0" + data[4:])
    with pytest.raises(StoreCorrupt) as err:
        _read(path, key)
    assert (err.value.path, err.value.offset, err.value.reason) == (str(path), 0, "not a fieldkit journal")
    path.write_bytes(data[:4] + struct.pack(">I", FORMAT + 1) + data[8:])
    with pytest.raises(UnsupportedVersion) as version:
        _read(path, key)
    assert str(version.value) == f"{path} was written by a newer fieldkit (journal format 2); upgrade fieldkit"
    path.write_bytes(data)
    assert _read(path, key) == RECORDS[:1] and (MAGIC, FORMAT) == (b"FKJ1", 1)


# -- compaction ----------------------------------------------------------------------------

def test_compaction_keeps_every_live_record_and_reserves_room_ahead(path, key, seam):
    _written(path, key, RECORDS + [{"i": n, "pad": "old" * 50} for n in range(20)])
    journal, _ = _opened(path, key, reserve=3000)
    before = journal.append({"i": "before"})
    live = RECORDS + [{"i": "live"}]
    old_id = path.read_bytes()[8:24]
    calls_before = len(seam.calls)
    journal.compact(iter(live))
    data = path.read_bytes()
    end = journal.size
    assert len(data) == end + 3000 + PREALLOC and not any(data[end:])
    assert journal.reserve_left == 3000 + PREALLOC and journal.size_after_compaction == end
    assert data[8:24] != old_id  # a new file, its records framed and sealed as documented
    assert [Sealer(key).open(sealed, data[8:24] + struct.pack(">Q", seq))
            for seq, (_, _, sealed) in enumerate(_frames(data, end))] == [
        json.dumps(r, separators=(",", ":")).encode() for r in live]
    # made under the temp name an interrupted compaction leaves (removed at open), synced whole
    # before it replaced the journal, and the rename made durable
    replaced = seam.calls.index(("replace", "journal.fkj.tmp", "journal.fkj"), calls_before)
    tmp_fd = [c[2] for c in seam.calls[:replaced] if c[:2] == ("open", "journal.fkj.tmp")][-1]
    last_write = max(i for i, c in enumerate(seam.calls[:replaced]) if c[:2] == ("write", tmp_fd))
    assert ("fsync", tmp_fd) in seam.calls[last_write:replaced] and ("fsync_dir", "db") in seam.calls[replaced:]
    syncs = len(seam.named("fdatasync"))
    journal.wait_durable(before)  # a ticket of the old file: the new one is durable whole
    assert len(seam.named("fdatasync")) == syncs
    after = journal.append({"i": "after"})
    assert after > before  # tickets keep growing across compactions
    journal.wait_durable(after)
    assert len(seam.named("fdatasync")) == syncs + 1
    journal.close()
    assert _read(path, key) == live + [{"i": "after"}]
    assert not path.with_name("journal.fkj.tmp").exists()


def test_compaction_without_spare_ends_at_its_last_record(path, key):
    _written(path, key)
    journal, records = _opened(path, key, reserve=3000)
    journal.compact(iter(records[1:]), spare=False)
    assert len(path.read_bytes()) == journal.size and journal.reserve_left == 0
    journal.close()
    assert _read(path, key) == RECORDS[1:]


def test_compaction_of_a_large_state_writes_its_zeros_in_whole_steps(path, key):
    journal, _ = _opened(path, key, reserve=2 * PREALLOC + 5)
    journal.compact(iter(RECORDS))
    data = path.read_bytes()
    assert len(data) == journal.size + 3 * PREALLOC + 5 and not any(data[journal.size:])
    journal.close()
    assert _read(path, key) == RECORDS


def test_needs_compaction_once_twice_its_compacted_size_and_over_the_minimum(path, key):
    journal, _ = _opened(path, key)
    journal.compact(iter(RECORDS))
    size = journal.size
    assert not journal.needs_compaction(0)
    while journal.size < 2 * size:
        assert not journal.needs_compaction(0)
        journal.append({"pad": "z" * 10})
    assert journal.needs_compaction(0) == (journal.size > 2 * size)
    journal.append({"pad": "z"})
    assert journal.needs_compaction(0) and not journal.needs_compaction(journal.size)
    journal.close()
    journal, _ = _opened(path, key)  # measured again from the size found at open
    assert not journal.needs_compaction(0)
    journal.close()


@pytest.mark.parametrize("fail", ["header", "record", "zeros", "fsync"])
def test_a_failed_compaction_leaves_the_journal_and_its_records_as_they_were(path, key, seam, fail):
    _written(path, key, RECORDS[:3])
    journal, records = _opened(path, key, reserve=100)
    data = path.read_bytes()
    state = (journal.size, journal.reserve_left, journal.size_after_compaction)
    if fail == "fsync":
        seam.fail_on("fsync", 2)  # the temp file's header sync passes, its whole sync fails
    else:
        seam.fail_on("write", {"header": 1, "record": 2, "zeros": 6}[fail])
    with pytest.raises(StorageFull, match="disk full") as err:
        journal.compact(iter(records + [{"i": "more"}]))
    assert str(err.value).startswith(f"disk full while writing {path}:")
    assert path.read_bytes() == data and not path.with_name("journal.fkj.tmp").exists()
    assert (journal.size, journal.reserve_left, journal.size_after_compaction) == state
    journal.wait_durable(journal.append({"i": "next"}))  # still sealed for the file that was kept
    journal.close()
    assert _read(path, key) == RECORDS[:3] + [{"i": "next"}]


def test_a_failed_directory_sync_after_compaction_is_logged_and_the_compaction_stands(path, key, seam, caplog):
    _written(path, key, RECORDS[:3])
    journal, records = _opened(path, key)
    seam.fail_on("fsync_dir", 1)
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        journal.compact(iter(records[:1]))
    assert [r.getMessage() for r in caplog.records] == [
        "journal compaction: directory fsync failed: [Errno 28] No space left on device"]
    journal.close()
    assert _read(path, key) == RECORDS[:1]


def test_a_leftover_temp_file_does_not_stop_a_compaction(path, key):
    _written(path, key, RECORDS[:2])
    journal, records = _opened(path, key)
    path.with_name("journal.fkj.tmp").write_bytes(b"left by a failed compaction")
    journal.compact(iter(records))
    journal.close()
    assert _read(path, key) == RECORDS[:2] and not path.with_name("journal.fkj.tmp").exists()


def test_tickets_keep_growing_over_compactions_that_shrink_the_journal(path, key, seam):
    journal, _ = _opened(path, key)
    tickets = [journal.append({"pad": "big" * 2000}) for _ in range(5)]
    for _ in range(3):
        journal.compact(iter([{"i": "small"}]))
        tickets.append(journal.append({"i": "after"}))
    assert tickets == sorted(set(tickets))
    syncs = len(seam.named("fdatasync"))
    journal.wait_durable(tickets[-1])  # the last record, appended after the last compaction, needs a sync
    assert len(seam.named("fdatasync")) == syncs + 1
    journal.close()
    assert _read(path, key) == [{"i": "small"}, {"i": "after"}]


def _salvage(path, key) -> tuple[list[dict], list[dict]]:
    """Salvage the journal at `path`: the records kept and the losses reported."""
    losses: list[dict] = []
    journal = Journal(path, Sealer(key))
    try:
        kept = list(journal.salvage_records(losses))
    finally:
        journal.close()
    return kept, losses


def _salvage_with_second_header_broken(path, key, spans) -> tuple[list[dict], list[dict]]:
    """Break the second record's length (its header's checksum then fails) and salvage."""
    data = bytearray(path.read_bytes())
    data[spans[1][0] + 1] ^= 0x10
    path.write_bytes(bytes(data))
    return _salvage(path, key)


@pytest.mark.parametrize("gap", [1 << 20, (1 << 20) + 2])
def test_salvage_finds_the_next_record_a_mebibyte_past_a_broken_header(path, key, gap):
    """Past a record whose header is broken, salvage scans byte by byte in blocks of 1 MiB:
    a record starting 1 MiB after the broken one (the first block's last position) or two
    bytes further (the second block's first) is found and kept."""
    before, after = {"i": 0}, {"i": 2}
    spans = _written(path, key, [before, _sized(gap), after])
    assert spans[2][0] - spans[1][0] == gap
    kept, losses = _salvage_with_second_header_broken(path, key, spans)
    assert kept == [before, after]
    assert [(loss["seq"], loss["last_seq"], loss["offset"]) for loss in losses] == [(1, 1, spans[1][0])]


@pytest.mark.parametrize("gap, found", [(1 << 16, True), ((1 << 16) + 10, False)])
def test_salvage_looks_for_the_next_record_up_to_scan_bytes_past_the_damage(path, key, monkeypatch, gap, found):
    """The search past damage is bounded (SCAN_BYTES, 64 KiB here): a record starting at the
    bound is found; one starting 10 bytes past it is not looked for, and the loss says it
    does not know how many records were lost."""
    monkeypatch.setattr(journal_module, "SCAN_BYTES", 1 << 16)
    before, after = {"i": 0}, {"i": 2}
    spans = _written(path, key, [before, _sized(gap), after])
    kept, losses = _salvage_with_second_header_broken(path, key, spans)
    assert kept == ([before, after] if found else [before])
    assert [(loss["seq"], loss["last_seq"]) for loss in losses] == [(1, 1 if found else None)]

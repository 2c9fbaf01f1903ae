"""The encrypted journal store: durability, damage detection, the queue, and bad input."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fieldkit.errors import KeyUnavailable, NotFound, StorageFull, StoreBusy, StoreCorrupt, UnsupportedVersion
from fieldkit.records import DONE, FAILED, LEASED
from fieldkit.kit import open_kit
from kitproc import open_files, wait_until


def _journal(data_dir: Path) -> Path:
    return data_dir / "db" / "journal.fkj"


def _fill(store, n: int, prefix: str = "p") -> None:
    for i in range(n):
        store.write(lambda db, i=i: db.table("patients").insert({"id": f"{prefix}{i}", "n": i}))


def test_records_and_blobs_survive_reopen(data_dir):
    kit = open_kit(data_dir)
    _fill(kit.store, 20)
    kit.store.write(lambda db: db.table("patients").update({"n": -1}, doc_ids=[3]))
    kit.store.write(lambda db: db.table("patients").remove(doc_ids=[5]))
    big = os.urandom(3 * (1 << 20) + 17)
    ref = kit.store.blobs.put_bytes(big)
    kit.close()

    kit = open_kit(data_dir)
    docs = kit.store.read(lambda db: {d["id"]: d["n"] for d in db.table("patients").all()})
    assert len(docs) == 19 and docs["p2"] == -1 and "p4" not in docs
    assert kit.store.blobs.get_bytes(ref.addr) == big
    # a new insert gets a fresh doc id, never a reused one
    new_id = kit.store.write(lambda db: db.table("patients").insert({"id": "new"}))
    assert new_id == 21
    kit.close()


def test_identical_blobs_are_stored_once(store):
    a = store.blobs.put_bytes(b"same content" * 1000)
    b = store.blobs.put_stream([b"same content" * 500, b"same content" * 500])
    assert a == b
    files = [p for p in (store.data_dir / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"]
    assert len(files) == 1


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99])
def test_torn_tail_is_cut_and_everything_before_it_kept(data_dir, fraction):
    kit = open_kit(data_dir)
    _fill(kit.store, 10)
    good_size = kit.store.journal_bytes
    _fill(kit.store, 1, prefix="torn")
    full_size = kit.store.journal_bytes
    kit.close()
    path = _journal(data_dir)
    cut_at = good_size + 1 + int(fraction * (full_size - good_size - 2))
    with open(path, "r+b") as fh:  # a crash mid-append leaves a prefix of the last record
        fh.truncate(cut_at)
    kit = open_kit(data_dir)
    ids = kit.store.read(lambda db: sorted(d["id"] for d in db.table("patients").all()))
    assert ids == sorted(f"p{i}" for i in range(10))
    # cut at the last whole record; past it only zeros (the reserve preallocated at open)
    assert kit.store.journal_bytes == good_size and not any(path.read_bytes()[good_size:])
    _fill(kit.store, 1, prefix="after")  # appends continue cleanly after the cut
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 11
    kit.close()
    # the cut bytes are kept aside (sealed), not silently thrown away
    assert len(list(path.parent.glob("journal.fkj.torn-*"))) == 1


def test_bytes_past_unwritten_sectors_after_the_end_are_cut_and_kept_aside(data_dir):
    """Whole zero sectors between the last record and a stray write: that write is an
    unsynced one a power cut kept out of order, never acknowledged. The kit opens with every
    record and keeps the stray bytes aside."""
    kit = open_kit(data_dir)
    _fill(kit.store, 3)
    end = kit.store.journal_bytes
    kit.close()
    path = _journal(data_dir)
    with open(path, "r+b") as fh:  # a stray byte in the preallocated zeros, far past the end
        fh.seek(end + 5000)
        fh.write(b"\x07")
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 3
    kit.close()
    assert not any(path.read_bytes()[end:])
    kept = list(path.parent.glob("journal.fkj.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes().rstrip(b"\0").endswith(b"\x07")


def test_zero_filled_tail_is_cut(data_dir):
    kit = open_kit(data_dir)
    _fill(kit.store, 3)
    kit.close()
    with open(_journal(data_dir), "ab") as fh:
        fh.write(bytes(4096))
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 3
    _fill(kit.store, 1, prefix="after")
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 4
    kit.close()


def test_flipped_byte_mid_file_is_refused_naming_file_and_offset(data_dir):
    kit = open_kit(data_dir)
    _fill(kit.store, 10)
    used = kit.store.journal_bytes
    kit.close()
    path = _journal(data_dir)
    data = bytearray(path.read_bytes())
    middle = used // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        open_kit(data_dir)
    assert str(path) in str(err.value)
    assert err.value.offset <= middle
    # nothing was cut or rewritten by the failed open, and it left no file of the kit open
    assert path.read_bytes() == bytes(data)
    assert open_files(under=data_dir) == []


def test_flipped_byte_in_a_blob_is_refused(store):
    ref = store.blobs.put_bytes(os.urandom(5000))
    path = store.blobs.path(ref.addr)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        store.blobs.get_bytes(ref.addr)


def test_truncated_blob_is_refused(store):
    ref = store.blobs.put_bytes(os.urandom(3 << 20))
    path = store.blobs.path(ref.addr)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - (1 << 20) - 100)
    with pytest.raises(StoreCorrupt):
        store.blobs.get_bytes(ref.addr)


def test_unknown_blob_is_not_found(store):
    with pytest.raises(NotFound):
        store.blobs.get_bytes("0" * 64)
    with pytest.raises(NotFound):
        store.blobs.get_bytes("../../etc/passwd")


def test_queue_lifecycle_priorities_and_idempotency(store):
    q = store.queue
    low = q.enqueue("infer", {"n": "low"}, priority=90)
    high = q.enqueue("infer", {"n": "high"}, priority=10)
    again = q.enqueue("sync", {"sop": "1.2"}, key="1.2")
    assert q.enqueue("sync", {"sop": "1.2"}, key="1.2") == again  # one live row per key
    first = q.lease("infer")
    assert first.id == high and first.state == LEASED and first.attempts == 1
    q.fail(first.id, "link down", retry_in=3600)
    assert q.lease("infer").id == low  # the failed one waits for its next attempt
    q.ack(low)
    sync = q.lease("sync")
    q.fail(sync.id, "hospital refused: bad SOP class", permanent=True)
    counts = q.counts()
    assert counts["infer"] == {"ready": 1, "leased": 0, "done": 1, "failed": 0}
    assert counts["sync"] == {"ready": 0, "leased": 0, "done": 0, "failed": 1}
    failed = q.rows(state=FAILED)
    assert [r.last_error for r in failed] == ["hospital refused: bad SOP class"]
    q.retry(sync.id)
    assert q.lease("sync").id == sync.id
    q.fail(sync.id, "still refused", permanent=True)
    q.dismiss(sync.id)
    assert q.get(sync.id).state == DONE  # dismissed, still visible


def test_queue_reprioritise(store):
    q = store.queue
    a = q.enqueue("sync", {"n": "a"}, priority=50)
    b = q.enqueue("sync", {"n": "b"}, priority=60)
    q.set_priority(b, 5)
    assert q.lease("sync").id == b
    assert q.lease("sync").id == a


def test_leases_left_by_a_crash_return_to_ready(data_dir):
    kit = open_kit(data_dir)
    row = kit.store.queue.enqueue("infer", {"sop": "x"})
    assert kit.store.queue.lease("infer").id == row
    kit.close()  # as if the process died with the lease held
    kit = open_kit(data_dir)
    assert kit.store.resumed_leases == 1
    again = kit.store.queue.lease("infer")
    assert again.id == row and again.attempts == 2
    kit.close()


def test_expired_lease_is_reclaimed_while_running(store):
    q = store.queue
    row = q.enqueue("infer", {})
    q.lease("infer", lease_seconds=0.01)
    time.sleep(0.05)
    again = q.lease("infer")
    assert again is not None and again.id == row


def test_compaction_keeps_everything_and_shrinks_the_journal(data_dir):
    kit = open_kit(data_dir)
    _fill(kit.store, 50)
    for _ in range(20):
        kit.store.write(lambda db: db.table("patients").update({"n": 0}, doc_ids=list(range(1, 51))))
    before = kit.store.journal_bytes
    kit.store.compact()
    after = kit.store.journal_bytes
    assert after < before
    _fill(kit.store, 1, prefix="late")
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 51
    kit.close()


def _journal_with(tmp_path, n: int):
    from fieldkit.security.crypto import Sealer
    from fieldkit.store.journal import Journal

    journal = Journal(tmp_path / "journal.fkj", Sealer(os.urandom(32)))
    list(journal.open())
    for i in range(n):
        journal.append({"i": i, "pad": "x" * 200})
    return journal


def test_a_ticket_from_before_a_compaction_is_durable_after_it(tmp_path):
    """A writer whose record went into the old file, waiting after a compaction shrank the
    journal, returns at once (the new file holds its record and was fsynced)."""
    import threading

    journal = _journal_with(tmp_path, 50)
    ticket = journal.append({"i": "last"})
    journal.compact(iter([{"i": "live state"}]))  # much smaller than what the ticket names
    waiter = threading.Thread(target=journal.wait_durable, args=(ticket,), daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "a ticket of the old file waits forever"
    assert journal.wait_durable(journal.append({"i": "after"})) is None
    journal.close()


def test_compaction_waits_for_a_group_commit_in_progress(tmp_path, monkeypatch):
    """Compaction closes the old file: never while another writer's fdatasync uses it."""
    import threading

    from fieldkit import fsio

    journal = _journal_with(tmp_path, 20)
    ticket = journal.append({"i": "waiting"})
    real, entered, release = fsio.fdatasync, threading.Event(), threading.Event()

    def slow_fdatasync(fd):  # the group commit is slow (a busy disk)
        entered.set()
        release.wait(10)
        return real(fd)

    monkeypatch.setattr(fsio, "fdatasync", slow_fdatasync)
    errors: list[BaseException] = []

    def wait():
        try:
            journal.wait_durable(ticket)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    syncer = threading.Thread(target=wait, daemon=True)
    syncer.start()
    assert entered.wait(10)
    compactor = threading.Thread(target=journal.compact, args=(iter([{"i": "live"}]),), daemon=True)
    compactor.start()
    compactor.join(0.5)
    assert compactor.is_alive(), "compaction swapped the file under a running fdatasync"
    release.set()
    syncer.join(10)
    compactor.join(10)
    assert not syncer.is_alive() and not compactor.is_alive()
    assert errors == []
    journal.close()


def test_write_cost_does_not_grow_with_the_store(store):
    """A write appends a record the size of the change, not of the database."""
    _fill(store, 2000)
    before = store.journal_bytes
    store.write(lambda db: db.table("patients").update({"n": 1}, doc_ids=[7]))
    assert store.journal_bytes - before < 400


def test_second_open_is_refused(data_dir):
    kit = open_kit(data_dir)
    with pytest.raises(StoreBusy, match="in use by another fieldkit process"):
        open_kit(data_dir)
    kit.close()


def test_wrong_passphrase(data_dir):
    with pytest.raises(KeyUnavailable, match="wrong passphrase"):
        open_kit(data_dir, passphrase="not the passphrase")


def test_right_passphrase_opens(data_dir, passphrase):
    open_kit(data_dir, passphrase=passphrase).close()


def test_missing_and_corrupt_key_files(data_dir):
    device = data_dir / "keys" / "device.key"
    saved = device.read_bytes()
    device.write_bytes(os.urandom(32))
    with pytest.raises(KeyUnavailable, match="does not match"):
        open_kit(data_dir)
    device.unlink()
    with pytest.raises(KeyUnavailable, match="missing"):
        open_kit(data_dir)
    device.write_bytes(saved)
    ring = data_dir / "keys" / "keyring.json"
    ring.write_text("{not json")
    with pytest.raises(KeyUnavailable, match="corrupt"):
        open_kit(data_dir)


def test_data_dir_from_a_newer_version_is_refused(data_dir):
    (data_dir / "FORMAT").write_text('{"format": 999}\n')
    with pytest.raises(UnsupportedVersion, match="newer fieldkit"):
        open_kit(data_dir)


def test_disk_full_acknowledges_nothing_and_damages_nothing(data_dir, monkeypatch):
    kit = open_kit(data_dir)
    _fill(kit.store, 5)
    import fieldkit.store.journal as journal

    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 1:
            real_pwrite(fd, bytes(data)[: len(data) // 2], offset)  # half lands, then ENOSPC
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(journal.os, "pwrite", full_disk)
    with pytest.raises(StorageFull, match="disk full"):
        kit.store.write(lambda db: db.table("patients").insert({"id": "lost"}))
    monkeypatch.setattr(journal.os, "pwrite", real_pwrite)
    # memory went back to what is durable; the store keeps working
    assert kit.store.read(lambda db: len(db.table("patients"))) == 5
    _fill(kit.store, 1, prefix="after")
    kit.close()
    kit = open_kit(data_dir)
    ids = kit.store.read(lambda db: sorted(d["id"] for d in db.table("patients").all()))
    assert ids == ["after0", "p0", "p1", "p2", "p3", "p4"]
    kit.close()


def test_read_only_journal_file(data_dir, monkeypatch):
    """A journal that cannot be written (read-only media) fails with one clear message."""
    kit = open_kit(data_dir)
    import fieldkit.store.journal as journal

    def read_only(fd, data, offset):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(journal.os, "pwrite", read_only)
    with pytest.raises(StorageFull, match="read-only"):
        kit.store.write(lambda db: db.table("patients").insert({"id": "x"}))
    kit.close()


def test_encrypted_spool_holds_no_plaintext(store):
    canary = b"SPOOL-CANARY-7f3a" * 1000
    with store.blobs.open_spool() as spool:
        spool.write(canary)
        for path in (store.data_dir / "blobs" / "tmp").iterdir():
            assert b"SPOOL-CANARY" not in path.read_bytes()
        assert spool.read_all() == canary
    assert not any((store.data_dir / "blobs" / "tmp").iterdir())


@pytest.mark.parametrize("sizes", [[0], [1], [1 << 20], [(1 << 20) + 1], [(1 << 20) - 1, 1, 1],
                                   [3 * (1 << 20) + 5], [10, 2 << 20, 7, (1 << 20) - 17, 1 << 20]])
def test_blobs_round_trip_across_chunk_boundaries(store, sizes):
    parts = [os.urandom(n) for n in sizes]
    ref = store.blobs.put_stream(parts)
    assert ref.size == sum(sizes)
    assert store.blobs.get_bytes(ref.addr) == b"".join(parts)
    assert store.blobs.put_bytes(b"".join(parts)) == ref  # the address depends on content only


def test_oldest_waiting_row_follows_the_queue(store):
    q = store.queue
    assert q.oldest("sync") is None
    first = q.enqueue("sync", {"n": 1})
    time.sleep(0.01)
    second = q.enqueue("sync", {"n": 2})
    created = {r.id: r.created for r in q.rows(kind="sync")}
    assert q.oldest("sync") == created[first]
    row = q.lease("sync")
    assert row.id == first and q.oldest("sync") == created[first]  # leased still waits
    q.ack(first)
    assert q.oldest("sync") == created[second]
    q.fail(q.lease("sync").id, "refused", permanent=True)
    assert q.oldest("sync") is None  # a quarantined row is shown, not waiting
    q.retry(second)
    assert q.oldest("sync") == created[second]


def test_blob_reader_seeks_and_reads_a_header_without_the_rest(store):
    data = os.urandom(3 * (1 << 20) + 123)
    ref = store.blobs.put_bytes(data)
    with store.blobs.open(ref.addr, ref.size) as fh:
        assert fh.read(132) == data[:132]
        fh.seek(2 * (1 << 20) + 7)
        assert fh.read(50) == data[2 * (1 << 20) + 7: 2 * (1 << 20) + 57]
        fh.seek(0)
        assert fh.read() == data


def test_batched_blobs_are_durable_and_readable_after_wait(store):
    batch = store.blobs.batch()
    datas = [os.urandom(n) for n in (10, 1 << 20, (1 << 20) + 3)]
    refs = [batch.put_bytes(d) for d in datas]
    batch.wait()
    for ref, data in zip(refs, datas):
        assert store.blobs.get_bytes(ref.addr) == data
    # every blob moved into place; what is left in tmp is empty files made ahead for the next batch
    assert all(p.stat().st_size == 0 for p in (store.data_dir / "blobs" / "tmp").iterdir())
    assert store.blobs.put_bytes(datas[0]) == refs[0]  # same address as an unbatched write


def test_batched_blob_that_cannot_be_synced_fails_the_wait(store, monkeypatch):
    import fieldkit.store.blobs as blobs

    batch = store.blobs.batch()
    real = os.fsync

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs.os, "fsync", failing)
    batch.put_bytes(b"x" * 100)
    with pytest.raises(StorageFull):
        batch.wait()
    monkeypatch.setattr(blobs.os, "fsync", real)


def test_a_store_opened_and_closed_again_and_again_keeps_no_descriptor(data_dir):
    """The CLI, a restore and the tests open and close stores in one process: each close must
    give back every file it held (the spare blob files made ahead for batched writers too)."""
    def cycle(i: int) -> None:
        kit = open_kit(data_dir)
        try:
            batch = kit.store.blobs.batch()
            for j in range(3):
                with batch.writer() as w:
                    w.write(os.urandom(2000 + 10 * i + j))
            batch.wait()
            wait_until(lambda: kit.store.blobs._spare, 10, step=0.01)  # made in the background
        finally:
            kit.close()

    cycle(0)  # first use: thread pools and imports
    before = len(open_files())
    for i in range(1, 21):
        cycle(i)
    assert len(open_files()) <= before
    assert list((data_dir / "blobs" / "tmp").iterdir()) == []

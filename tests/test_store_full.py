"""A full disk is a state, not a disaster: a failed journal write rolls memory back to what
is durable and leaves the journal as it was; the reserve keeps acknowledgements and leases
going; watermarks refuse captures before the disk is full and lift by themselves."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fieldkit.errors import StorageFull
from fieldkit.records import LEASED, READY
from fieldkit.kit import open_kit
from fieldkit.store.documents import MemoryStorage
from fieldkit.store.journal import Journal
from fieldkit.store.space import CapturesRefused, DiskSpace
from fixtures.durability import fill_disk
from kitproc import set_config


def _durable_state(store) -> dict:
    """What a fresh open would read from the journal file (leases not reset)."""
    journal = Journal(store._journal.path, store._journal._sealer)
    memory = MemoryStorage(lambda record: None)
    for record in journal.open():
        memory.apply(record)
    journal.close()
    return memory.data


def _offsets(store) -> tuple:
    j = store._journal
    return j._end, j._seq, j._alloc, j._file_id


def _enospc(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def _busy_store(kit):
    """Patients, a leased sync row and a ready infer row: a busy kit."""
    store = kit.store
    for i in range(5):
        store.write(lambda db, i=i: db.table("patients").insert({"id": f"p{i}", "n": i}))
    sync_row = store.queue.enqueue("sync", {"sop": "a"}, key="a")
    store.queue.enqueue("infer", {"sop": "b"})
    leased = store.queue.lease("sync")
    assert leased.id == sync_row
    return leased


def test_failed_append_with_a_lease_held_rolls_back_in_memory(data_dir, monkeypatch):
    import fieldkit.store.journal as journal

    kit = open_kit(data_dir)
    store = kit.store
    leased = _busy_store(kit)
    before_offsets = _offsets(store)
    before_file = store._journal.path.read_bytes()
    before_counts = store.queue.counts()
    opened = []
    monkeypatch.setattr(Journal, "open", lambda self: opened.append(self) or iter(()))
    real_pwrite = os.pwrite
    calls = []

    def half_then_full(fd, data, offset):
        calls.append(len(data))
        if len(calls) == 1:
            real_pwrite(fd, bytes(data)[: len(data) // 2], offset)  # half lands, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    def one_write(db):
        # every kind of change at once: insert, update, delete, a queue ack and an enqueue
        db.table("patients").insert({"id": "lost"})
        db.table("patients").update({"n": 99}, doc_ids=[1])
        db.table("patients").remove(doc_ids=[2])
        store.queue.ack(leased.id)
        store.queue.enqueue("infer", {"sop": "lost"})

    monkeypatch.setattr(journal.os, "pwrite", half_then_full)
    with pytest.raises(StorageFull, match="disk full"):
        store.write(one_write)
    monkeypatch.setattr(journal.os, "pwrite", real_pwrite)

    assert opened == []  # no reload, no recursion
    assert _offsets(store) == before_offsets
    assert store._journal.path.read_bytes() == before_file  # the half record was zeroed
    monkeypatch.undo()
    assert store._storage.data == _durable_state(store)
    assert store.queue.counts() == before_counts
    assert store.queue.get(leased.id).state == LEASED
    ids = store.read(lambda db: sorted((d["id"], d["n"]) for d in db.table("patients").all()))
    assert ids == [("p0", 0), ("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4)]

    # space is back: the same work goes through, and the queue index is right
    store.write(one_write)
    assert store.queue.counts()["sync"]["done"] == 1
    assert store.queue.counts()["infer"]["ready"] == 2
    assert store.queue.lease("infer") is not None
    assert store._storage.data == _durable_state(store)
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 5
    assert kit.store.queue.counts()["sync"]["done"] == 1
    kit.close()


def test_leases_are_reset_in_memory_at_open_without_writing(data_dir):
    kit = open_kit(data_dir)
    row = kit.store.queue.enqueue("sync", {"sop": "a"})
    kit.store.queue.lease("sync")
    kit.close()
    path = data_dir / "db" / "journal.fkj"
    kit = open_kit(data_dir)
    end = kit.store.journal_bytes
    assert kit.store.resumed_leases == 1
    assert kit.store.queue.get(row).state == READY
    assert kit.store.journal_bytes == end
    assert _durable_state(kit.store)["queue"] != kit.store._storage.data["queue"]  # memory only
    kit.close()
    data = path.read_bytes()
    kit = open_kit(data_dir)  # an open with nothing to do writes nothing either
    assert path.read_bytes() == data and kit.store.resumed_leases == 1
    kit.close()


def test_failed_compaction_leaves_the_journal_as_it_was(data_dir, monkeypatch):
    import fieldkit.store.journal as journal

    kit = open_kit(data_dir)
    store = kit.store
    leased = _busy_store(kit)
    for _ in range(10):
        store.write(lambda db: db.table("patients").update({"n": 7}, doc_ids=[1, 2, 3]))
    before = _offsets(store)
    real_write = os.write
    calls = []

    def full_after_header(fd, data):
        calls.append(1)
        if len(calls) > 1:  # the temp file's header lands, its first record does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal.os, "write", full_after_header)
    with pytest.raises(StorageFull, match="disk full"):
        store.compact()
    monkeypatch.setattr(journal.os, "write", real_write)
    assert _offsets(store) == before  # file id included: later records seal for this file
    assert not (data_dir / "db" / "journal.fkj.tmp").exists()
    store.queue.ack(leased.id)
    store.write(lambda db: db.table("patients").insert({"id": "after"}))
    assert store._storage.data == _durable_state(store)
    store.compact()  # and compaction works once there is space
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 6
    assert kit.store.queue.counts()["sync"]["done"] == 1
    kit.close()


class _FakeStat:
    def __init__(self, free_mb: float, total_mb: float = 100_000):
        self.f_frsize = 4096
        self.f_bavail = int(free_mb * (1 << 20)) // 4096
        self.f_blocks = int(total_mb * (1 << 20)) // 4096


def test_watermarks_refuse_below_warn_below_resume_above(data_dir):
    """The levels follow free space (statvfs given in: the real one is the tmpfs tests')."""
    set_config(data_dir, store__warn_free_mb=1000, store__refuse_free_mb=200)
    kit = open_kit(data_dir)
    free = {"mb": 5000.0}
    now = {"t": 0.0}
    reads = []

    def statvfs(path):
        reads.append(path)
        return _FakeStat(free["mb"])

    space = DiskSpace(data_dir, kit.config, statvfs=statvfs, clock=lambda: now["t"])
    assert space.state()["level"] == "ok" and "message" not in space.state()
    space.check_capture()
    assert len(reads) == 1  # plenty of space: statvfs is read at most once a second
    free["mb"] = 900
    assert space.state()["level"] == "ok"
    now["t"] += 1.0
    low = space.state()
    assert low["level"] == "low" and "sync to the hospital" in low["message"] and low["accepting_captures"]
    space.check_capture()
    free["mb"] = 150  # under the warn mark every capture looks again, within the second
    with pytest.raises(CapturesRefused, match="new captures are refused") as err:
        space.check_capture()
    assert err.value.http_status == 507 and "150 MiB free" in str(err.value)[:64]
    assert space.state()["accepting_captures"] is False
    free["mb"], now["t"] = 1500, now["t"] + 1.0
    space.check_capture()  # space came back: captures resume, no restart
    assert space.state()["level"] == "ok"
    # the kit's status carries the same block
    assert kit.status()["disk"]["level"] in ("ok", "low", "full")
    kit.close()


def test_real_full_disk_keeps_acks_and_leases_going_on_the_reserve(small_disk):
    from kitproc import init_kit

    data_dir = init_kit(small_disk / "kit")
    set_config(data_dir, store__reserve_mb=2, store__refuse_free_mb=0, store__warn_free_mb=0)
    kit = open_kit(data_dir)
    store = kit.store
    leased = _busy_store(kit)
    assert store._journal.reserve_left >= 2 << 20
    filler = small_disk / "filler"
    fill_disk(filler)

    # blobs can no longer be written, and leave nothing behind
    tmp_before = sorted(p.name for p in (data_dir / "blobs" / "tmp").iterdir())
    with pytest.raises(StorageFull, match="disk full"):
        store.blobs.put_bytes(os.urandom(3 << 20))
    with pytest.raises(StorageFull, match="disk full"):
        with store.blobs.open_spool() as spool:
            for _ in range(4):
                spool.write(os.urandom(1 << 20))
    assert sorted(p.name for p in (data_dir / "blobs" / "tmp").iterdir()) == tmp_before

    # the journal still records acks, leases, operator actions: they go into the reserve
    store.queue.ack(leased.id)
    row = store.queue.lease("infer")
    store.queue.fail(row.id, "hospital unreachable", permanent=True)
    store.queue.retry(row.id)
    # a record bigger than what is left fails cleanly and is rolled back
    before = _offsets(store)
    big = "x" * (store._journal.reserve_left + (1 << 20))
    with pytest.raises(StorageFull):
        store.write(lambda db: db.table("patients").insert({"id": "big", "blob": big}))
    assert _offsets(store) == before
    assert store._storage.data == _durable_state(store)

    # space returns: everything works again, and the reserve is topped up
    filler.unlink()
    store.write(lambda db: db.table("patients").insert({"id": "big", "blob": big}))
    store.blobs.put_bytes(b"after")
    assert store._journal.reserve_left >= 2 << 20
    kit.close()
    kit = open_kit(data_dir)
    assert kit.store.read(lambda db: len(db.table("patients"))) == 6
    assert kit.store.queue.counts()["sync"]["done"] == 1
    assert kit.store.queue.counts()["infer"]["ready"] == 1
    kit.close()


def test_watermarks_through_the_web_api(data_dir):
    """The same levels as a tablet and a STOW client see them (free space given in)."""
    from fieldkit.web import create_app
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from kitproc import dataset_bytes, run_cli

    tokens = {role: run_cli("token", "create", "--data-dir", data_dir, "--role", role).stdout.strip().splitlines()[-1]
              for role in ("probe", "sync")}  # machine tokens (sync reads the status)
    set_config(data_dir, store__warn_free_mb=1000, store__refuse_free_mb=200)
    kit = open_kit(data_dir)
    free = {"mb": 150.0}
    kit.store.space._statvfs = lambda path: _FakeStat(free["mb"])
    kit.store.space._checked_at = float("-inf")
    client = create_app(kit, testing=True).test_client()

    def get(path, role="sync"):
        return client.get(path, base_url="https://localhost", headers={"Authorization": f"Bearer {tokens[role]}"})

    def stow():
        ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(ds) + b"\r\n--b--\r\n"
        return client.post("/dicom-web/studies", base_url="https://localhost", data=body, headers={
            "Authorization": f"Bearer {tokens['probe']}", "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})

    answer = stow()
    assert answer.status_code == 507 and "new captures are refused" in answer.json["error"]
    device = get("/api/v1/ui/device").json["disk"]
    assert device["level"] == "full" and "purge studies the hospital confirmed" in device["message"]
    assert get("/api/v1/status").json["disk"]["accepting_captures"] is False
    free["mb"] = 500
    kit.store.space._checked_at = float("-inf")
    assert get("/api/v1/status").json["disk"]["level"] == "low"
    assert stow().status_code == 200  # above the refuse mark: captures are taken again
    free["mb"] = 5000
    kit.store.space._checked_at = float("-inf")
    assert get("/api/v1/status").json["disk"]["level"] == "ok"
    kit.close()


def test_blob_and_spool_writes_that_fail_leave_no_file_behind(store, monkeypatch):
    import fieldkit.store.blobs as blobs

    tmp = store.data_dir / "blobs" / "tmp"
    monkeypatch.setattr(blobs, "_write_all", _enospc)  # not even the file header lands
    with pytest.raises(StorageFull, match="disk full"):
        store.blobs.put_bytes(b"x" * 100)
    with pytest.raises(StorageFull, match="disk full"):
        store.blobs.open_spool()
    monkeypatch.undo()
    with store.blobs.open_spool() as spool:
        spool.write(b"y" * 100)
        monkeypatch.setattr(blobs, "_write_all", _enospc)
        with pytest.raises(StorageFull, match="disk full"):
            spool.write(os.urandom(3 << 20))  # a cine's worth: whole chunks are sealed and written
    monkeypatch.undo()
    batch = store.blobs.batch()
    monkeypatch.setattr(blobs.os, "fsync", lambda fd: _enospc())
    batch.put_bytes(b"z" * 100)
    with pytest.raises(StorageFull, match="disk full"):
        batch.wait()
    monkeypatch.undo()
    # what is left in tmp is only the empty files made ahead for the next batch
    assert all(p.stat().st_size == 0 for p in tmp.iterdir())
    assert store.blobs.get_bytes(store.blobs.put_bytes(b"after").addr) == b"after"

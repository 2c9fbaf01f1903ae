"""The store workload the power-cut tests run under the recorder, and the check of a crash
image against what was acknowledged before the cut."""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
import threading
import zlib
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from fieldkit.config import Config
from fieldkit.errors import NotFound, StoreCorrupt
from fieldkit.records import DONE
from fieldkit.security.crypto import random_key
from fieldkit.store import Store, instances, patients, write_format
from fieldkit.store.journal import FRAME, HEADER

from powercut import Recorder

KEY = random_key()
# compaction as soon as the journal doubles: cuts land in the middle of many compactions
CONFIG = {"store.compact_min_mb": 0}
JOURNAL = ("db", "journal.fkj")
_QUEUE_RANK = {"ready": 0, "leased": 0, "failed": 0, DONE: 1}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dicom(rng: random.Random) -> bytes:
    """A real single-frame capture (pydicom's RGB test file) with a fresh identity."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(rng.random())])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"PC{rng.randrange(10**6)}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class Writer:
    """One writer thread's operations; each acknowledges after the store call returned."""

    def __init__(self, store: Store, rec: Recorder, rng: random.Random, name: str):
        self.store, self.rec, self.rng, self.name = store, rec, rng, name
        self.patients: list[str] = []
        self.n = 0

    def step(self) -> None:
        self.n += 1
        op = self.rng.choices(("patient", "triage", "blob", "batch", "queue", "instance", "compact"),
                              weights=(4, 2, 4, 2, 4, 1, 0.3))[0]
        getattr(self, "_" + op)()

    def _patient(self) -> None:
        tag = f"{self.name}-{self.n}"
        row = patients.create_patient(self.store, tag=tag, name=f"name {tag}")
        self.patients.append(tag)
        self.rec.ack(("patient", tag), {"name": row["name"], "triage": row["triage"]})

    def _triage(self) -> None:
        if not self.patients:
            return self._patient()
        tag = self.rng.choice(self.patients)
        category = self.rng.choice(("red", "yellow", "green"))
        value = {"name": f"name {tag}", "triage": category}
        self.rec.attempt(("patient", tag), value)
        patients.set_triage(self.store, tag, category)
        self.rec.ack(("patient", tag), value)

    def _payload(self) -> bytes:
        # now and then more than one 1 MiB chunk, so that a cut can tear a blob between chunks
        size = self.rng.choices((1, 700, 5000, 40_000, 1_100_000), weights=(3, 3, 3, 3, 1))[0]
        return self.rng.randbytes(size)

    def _blob(self) -> None:
        data = self._payload()
        ref = self.store.blobs.put_bytes(data)
        self.rec.ack(("blob", ref.addr), _sha(data))

    def _batch(self) -> None:
        batch = self.store.blobs.batch()
        items = [(batch.put_bytes(d), d) for d in (self._payload() for _ in range(self.rng.randint(1, 3)))]
        batch.wait()
        for ref, data in items:
            self.rec.ack(("blob", ref.addr), _sha(data))

    def _queue(self) -> None:
        kind = self.rng.choice(("infer", "sync"))
        if self.rng.random() < 0.5:
            row_id = self.store.queue.enqueue(kind, {"by": self.name, "n": self.n})
            self.rec.ack(("queue", row_id), "ready")
            return
        row = self.store.queue.lease(kind)
        if row is not None:
            self.rec.attempt(("queue", row.id), DONE)
            self.store.queue.ack(row.id)
            self.rec.ack(("queue", row.id), DONE)

    def _instance(self) -> None:
        result = instances.put_instance(self.store, _dicom(self.rng), "stow")
        assert result["status"] == "stored", result
        row = result["instance"]
        self.rec.ack(("instance", row["sop_instance_uid"]),
                     (row["blob"], _sha(self.store.blobs.get_bytes(row["blob"]))))

    def _compact(self) -> None:
        self.store.compact()


def run_workload(root: Path, seed: int, threads: int = 2, steps: int = 10,
                 recorder: type[Recorder] = Recorder) -> Recorder:
    """A fresh store in `root`, written by `threads` writers under a recorder."""
    root.mkdir()
    write_format(root)
    rec = recorder(root).install()
    errors: list[BaseException] = []
    try:
        store = Store.open(root, KEY, Config(CONFIG))
        try:
            def work(t: int) -> None:
                w = Writer(store, rec, random.Random(f"{seed}-{t}"), f"T{t}")
                try:
                    for _ in range(steps):
                        w.step()
                except BaseException as exc:  # reported below, in the test's thread
                    errors.append(exc)

            pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in pool), "a writer did not finish in 120 s"
        finally:
            store.close()
    finally:
        rec.uninstall()
    if errors:
        raise errors[0]
    return rec


# -- checking a crash image --------------------------------------------------------------

def records_end(journal: bytes | None) -> int:
    """End of the last whole record in a journal's bytes (by framing only)."""
    if not journal:
        return 0
    off = HEADER.size
    while off + FRAME.size <= len(journal):
        length, crc = FRAME.unpack_from(journal, off)
        if length == 0 or zlib.crc32(journal[off:off + 4]) != crc or off + FRAME.size + length > len(journal):
            break
        off += FRAME.size + length
    return off


def record_offsets(journal: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each whole record."""
    out, off, end = [], HEADER.size, records_end(journal)
    while off < end:
        (length,) = struct.unpack_from(">I", journal, off)
        out.append((off, length))
        off += FRAME.size + length
    return out


def check_image(image: Path, state, stats: dict) -> list[str]:
    """Open the kit on a crash image; return what was acknowledged and is not there."""
    try:
        store = Store.open(image, KEY, Config(CONFIG))
    except StoreCorrupt as exc:
        # Allowed only for data past what was ever synced, when writes that were never
        # acknowledged reached the disk out of order (a later record without an earlier
        # one): the kit cannot tell that from damage. Never when writeback kept order.
        m = re.search(r"store file (\S+) is damaged at byte offset (\d+)", exc.message)
        synced = records_end(state.durable_bytes(*JOURNAL))
        if state.mode == "scatter" and m and m.group(1).endswith("journal.fkj") and int(m.group(2)) >= synced:
            stats["refused_unsynced"] = stats.get("refused_unsynced", 0) + 1
            return []
        return [f"refused to open: {exc.message} (synced records end at {synced})"]
    problems = []
    try:
        torn = bool(store._journal.cut_bytes)
        for key, (acked, newer) in state.expected.items():
            problem = _check(store, key, acked, newer)
            if problem:
                problems.append(f"{key}: {problem}")
    finally:
        store.close()
    stats["opened"] = stats.get("opened", 0) + 1
    if torn:  # the cut is final: the next start finds nothing more to cut
        stats["torn_cut"] = stats.get("torn_cut", 0) + 1
        store = Store.open(image, KEY, Config(CONFIG))
        if store._journal.cut_bytes:
            problems.append("a second open cut the journal again")
        store.close()
    return problems


def _check(store: Store, key: tuple, acked, newer: list) -> str | None:
    kind, name = key
    try:
        if kind == "patient":
            row = patients.get_patient(store, name, follow_merges=False)
            got = None if row is None else {"name": row["name"], "triage": row["triage"]}
            return None if got == acked or got in newer else f"acknowledged {acked}, found {got}"
        if kind == "blob":
            got = _sha(store.blobs.get_bytes(name))
            return None if got == acked else "blob content differs"
        if kind == "queue":
            state = store.queue.get(name).state
            return None if _QUEUE_RANK[state] >= _QUEUE_RANK[acked] else f"acknowledged {acked}, found {state}"
        if kind == "instance":
            row = instances.get_instance(store, name)
            if row is None:
                return "instance row lost"
            addr, sha = acked
            if row["blob"] != addr or _sha(store.blobs.get_bytes(addr)) != sha:
                return "instance file differs"
            return None
    except (NotFound, StoreCorrupt) as exc:
        return f"lost: {exc}"
    raise AssertionError(f"unknown key {key}")


def damaged_blob_is_refused(image: Path, state) -> bool | None:
    """Flip one byte of an acknowledged blob: reading it must fail, never return other
    bytes. None when nothing was acknowledged."""
    addrs = [key[1] for key in state.expected if key[0] == "blob"]
    if not addrs:
        return None
    store = Store.open(image, KEY, Config(CONFIG))
    try:
        path = store.blobs.path(addrs[0])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)
        try:
            store.blobs.get_bytes(addrs[0])
        except StoreCorrupt:
            return True
        return False
    finally:
        store.close()


def damage_is_refused(image: Path) -> bool | None:
    """Flip one byte inside a record that has another after it: the kit must refuse to
    open. None when the image has fewer than two records."""
    path = image.joinpath(*JOURNAL)
    data = bytearray(path.read_bytes())
    recs = record_offsets(bytes(data))
    if len(recs) < 2:
        return None
    off, length = recs[len(recs) // 2 - 1]
    data[off + FRAME.size + length // 2] ^= 0x40
    path.write_bytes(data)
    try:
        Store.open(image, KEY, Config(CONFIG)).close()
    except StoreCorrupt:
        return True
    return False

"""Damage is detected, localised and salvaged: flipped bytes in journal records and record
headers, a real torn tail (as a crash leaves it, in the preallocated zeros), and
`fieldkit store salvage` / `fieldkit doctor` on the results."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fieldkit.errors import StoreCorrupt
from fieldkit.kit import open_kit
from kitproc import run_cli

SECTOR = 512


def _journal(data_dir: Path) -> Path:
    return data_dir / "db" / "journal.fkj"


def _fill(kit, n: int) -> list[tuple[int, int]]:
    """n patients p0..p{n-1}, one journal record each, over two sectors long (so it holds a
    whole sector wherever it starts); returns each record's (start, end)."""
    spans = []
    for i in range(n):
        start = kit.store.journal_bytes
        kit.store.write(lambda db, i=i: db.table("patients").insert({"id": f"p{i}", "n": i, "pad": "x" * 1400}))
        spans.append((start, kit.store.journal_bytes))
        assert spans[-1][1] - start > 2 * SECTOR
    return spans


def _patients(data_dir: Path) -> list[str]:
    kit = open_kit(data_dir)
    try:
        return sorted(d["id"] for d in kit.store.read(lambda db: db.table("patients").all()))
    finally:
        kit.close()


def _flip(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    return bytes(data)


def _doctor_store_check(data_dir: Path) -> dict:
    out = run_cli("doctor", "--data-dir", data_dir, "--json", "--timeout", "1", check=False)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    return out.returncode, checks


# where the flipped byte lands: (which record, offset inside the record)
CASES = {
    "payload of the middle record": (5, 40),
    "header (length) of a middle record": (5, 2),
    "header (checksum) of a middle record": (4, 6),
    "payload of the last complete record": (9, 300),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flipped_byte_is_refused_then_salvaged(data_dir, case):
    which, within = CASES[case]
    kit = open_kit(data_dir)
    spans = _fill(kit, 10)
    kit.close()
    path = _journal(data_dir)
    at = spans[which][0] + within
    damaged = _flip(path, at)

    # the kit refuses to start: file, offset and the salvage command in the message, exit 8
    served = run_cli("serve", "--data-dir", data_dir, "--http-port", "0", "--dicom-port", "0", check=False, timeout=60)
    assert served.returncode == 8, served.stderr
    assert str(path) in served.stderr and f"byte offset {spans[which][0]}" in served.stderr
    assert "fieldkit store salvage" in served.stderr
    with pytest.raises(StoreCorrupt) as err:
        open_kit(data_dir)
    assert err.value.offset == spans[which][0] and err.value.seq is not None
    assert path.read_bytes() == damaged  # never cut, never rewritten by the refusal

    # doctor fails on it, naming the salvage command, without queue advice
    code, checks = _doctor_store_check(data_dir)
    assert code == 1
    assert checks["store"]["status"] == "fail" and "fieldkit store salvage" in checks["store"]["fix"]
    assert checks["queue"]["fix"] == ""

    # salvage keeps every other record, names the lost one, keeps the original aside
    out = run_cli("store", "salvage", "--data-dir", data_dir)
    assert f"lost record {err.value.seq} at byte offset {spans[which][0]}" in out.stdout
    assert "the salvaged store opens: 9 patients" in out.stdout
    aside = list(path.parent.glob("journal.fkj.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert _patients(data_dir) == sorted(f"p{i}" for i in range(10) if i != which)
    # a second salvage finds nothing to do
    again = run_cli("store", "salvage", "--data-dir", data_dir)
    assert "nothing to salvage" in again.stdout
    code, checks = _doctor_store_check(data_dir)
    assert checks["store"]["status"] == "ok", checks["store"]


def _zeros_from(path, offset: int) -> bool:
    data = path.read_bytes()
    return len(data) >= offset and not any(data[offset:])


def test_torn_tail_as_a_crash_leaves_it_is_cut(data_dir):
    """A crash mid-append: the record's sectors from some 512-byte boundary on never reached
    the disk, so they are still the preallocated zeros, and nothing follows them."""
    kit = open_kit(data_dir)
    _fill(kit, 10)
    start = kit.store.journal_bytes
    kit.store.write(lambda db: db.table("patients").insert({"id": "torn", "pad": "t" * 3000}))
    end = kit.store.journal_bytes
    kit.close()
    path = _journal(data_dir)
    size = path.stat().st_size
    boundary = (start // SECTOR + 2) * SECTOR  # a sector of the record did reach the disk
    assert start + 8 < boundary < end - 16
    with open(path, "r+b") as fh:
        fh.seek(boundary)
        fh.write(bytes(end - boundary))
    assert path.stat().st_size == size  # written in place, not truncated
    assert _patients(data_dir) == sorted(f"p{i}" for i in range(10))
    assert _zeros_from(path, start)  # cut there (the reserve is preallocated zeros again)
    assert len(list(path.parent.glob("journal.fkj.torn-*"))) == 1


def test_torn_record_header_as_a_crash_leaves_it_is_cut(data_dir):
    """The header's second half was in a sector that never reached the disk."""
    kit = open_kit(data_dir)
    _fill(kit, 3)

    def pad(n: int) -> int:
        before = kit.store.journal_bytes
        kit.store.write(lambda db: db.table("padding").insert({"pad": "y" * n}))
        return kit.store.journal_bytes - before

    overhead = pad(100) - 100  # the same for the next record of this table (doc id 2)
    size = (-(kit.store.journal_bytes + 4)) % SECTOR
    size += SECTOR if size < overhead + 10 else 0
    pad(size - overhead)
    start = kit.store.journal_bytes
    assert (start + 4) % SECTOR == 0  # the next record header straddles a sector boundary
    kit.store.write(lambda db: db.table("patients").insert({"id": "torn", "pad": "z" * 900}))
    kit.close()
    path = _journal(data_dir)
    boundary = start + 4
    with open(path, "r+b") as fh:
        fh.seek(boundary)
        fh.write(bytes(2000))
    assert _patients(data_dir) == ["p0", "p1", "p2"]
    assert _zeros_from(path, start)


def test_a_zeroed_sector_with_writes_after_it_is_an_unsynced_tail_and_is_cut(data_dir):
    """A power cut may keep later unsynced writes and lose an earlier one: a record with a
    whole sector still zero was never completely written, so nothing from it on was ever
    acknowledged (an acknowledgement waits for an fsync covering every earlier record).
    Its bytes and everything after are cut and kept aside; the kit opens."""
    kit = open_kit(data_dir)
    spans = _fill(kit, 6)
    kit.close()
    path = _journal(data_dir)
    start, end = spans[2]
    boundary = (start // SECTOR + 1) * SECTOR
    assert boundary + SECTOR <= end  # a whole sector inside the record
    with open(path, "r+b") as fh:
        fh.seek(boundary)
        fh.write(bytes(SECTOR))
    assert _patients(data_dir) == ["p0", "p1"]
    assert _zeros_from(path, start)
    kept = list(path.parent.glob("journal.fkj.torn-*"))
    assert len(kept) == 1 and kept[0].stat().st_size > end - boundary  # the later records too


def test_a_flipped_byte_next_to_zeros_is_still_damage(data_dir):
    """Zeros a record never had are the sign of a crash; a flipped byte makes none."""
    kit = open_kit(data_dir)
    spans = _fill(kit, 6)
    kit.close()
    path = _journal(data_dir)
    start, end = spans[2]
    with open(path, "r+b") as fh:
        fh.seek(start + 40)
        byte = fh.read(1)
        fh.seek(start + 40)
        fh.write(bytes([byte[0] ^ 0x04]))
    with pytest.raises(StoreCorrupt) as err:
        open_kit(data_dir)
    assert err.value.offset == start
    out = run_cli("store", "salvage", "--data-dir", data_dir)
    assert "lost record" in out.stdout
    assert _patients(data_dir) == ["p0", "p1", "p3", "p4", "p5"]


def test_salvage_on_a_healthy_store_changes_nothing(data_dir):
    kit = open_kit(data_dir)
    _fill(kit, 4)
    kit.close()
    path = _journal(data_dir)
    before = path.read_bytes()
    files = sorted(p.name for p in path.parent.iterdir())
    out = run_cli("store", "salvage", "--data-dir", data_dir)
    assert out.returncode == 0
    assert "nothing to salvage" in out.stdout and "nothing was changed" in out.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == files


def test_salvage_refuses_while_the_kit_runs(kit_server):
    out = run_cli("store", "salvage", "--data-dir", kit_server.data_dir, check=False)
    assert out.returncode == 7
    assert "stop `fieldkit serve` first" in out.stderr


def test_record_number_is_in_the_refusal(data_dir):
    kit = open_kit(data_dir)
    spans = _fill(kit, 3)
    kit.close()
    path = _journal(data_dir)
    # count the records before the damaged one by walking the frames
    data = path.read_bytes()
    off, n = 24, 0
    while off < spans[1][0]:
        (length,) = struct.unpack(">I", data[off:off + 4])
        off, n = off + 8 + length, n + 1
    _flip(path, spans[1][0] + 100)
    with pytest.raises(StoreCorrupt) as err:
        open_kit(data_dir)
    assert err.value.seq == n and f"(record {n})" in str(err.value)


def test_salvage_puts_back_captures_whose_catalogue_rows_were_lost(data_dir):
    from pydicom.data import get_testdata_file

    from fieldkit.store import instances
    kit = open_kit(data_dir)
    spans, uids = [], []
    for name in ("examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm"):
        start = kit.store.journal_bytes
        result = instances.put_instance(kit.store, open(get_testdata_file(name), "rb").read(), "upload")
        spans.append((start, kit.store.journal_bytes))
        uids.append(result["sop_instance_uid"])
    kit.close()
    path = _journal(data_dir)
    _flip(path, spans[1][0] + 60)  # the record that catalogued the second capture
    out = run_cli("store", "salvage", "--data-dir", data_dir)
    assert "lost record" in out.stdout
    assert f"put back 1 capture(s) whose catalogue rows were lost (their files were whole): {uids[1]}" in out.stdout
    kit = open_kit(data_dir)
    try:
        assert sorted(r["sop_instance_uid"] for r in instances.instance_rows(kit.store)) == sorted(uids)
        assert instances.read_dataset(kit.store, uids[1]).pixel_array.shape
    finally:
        kit.close()

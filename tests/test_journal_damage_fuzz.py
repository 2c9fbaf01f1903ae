"""The journal's torn/damaged rule under random damage (seeded, bounded): every flipped byte
is refused and never cut; salvage then loses exactly the record it hit and keeps every
other one; every crash-shaped tail (a record's sectors unwritten from a random 512-byte
boundary on, in the preallocated zeros) is cut with everything before it kept."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from fieldkit.errors import StoreCorrupt
from fieldkit.security.crypto import Sealer, random_key
from fieldkit.store.journal import HEADER, SECTOR, Journal

ROUNDS = 60


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A journal of 40 records of random sizes (some span several sectors), as appended."""
    path = tmp_path_factory.mktemp("journal") / "journal.fkj"
    key = random_key()
    rng = random.Random(7)
    journal = Journal(path, Sealer(key))
    list(journal.open())
    spans, records = [], []
    for i in range(40):
        record = {"i": i, "pad": "r" * rng.randrange(10, 2500)}
        start = journal.size
        journal.wait_durable(journal.append(record))
        spans.append((start, journal.size))
        records.append(record)
    journal.close()
    return path, key, spans, records


def _copy(written, tmp_path: Path) -> Path:
    path = tmp_path / "db" / "journal.fkj"
    path.parent.mkdir(parents=True)
    shutil.copy(written[0], path)
    return path


def _open(path: Path, key: bytes) -> list[dict]:
    journal = Journal(path, Sealer(key))
    try:
        return list(journal.open())
    finally:
        journal.close()


def _salvage(path: Path, key: bytes) -> tuple[list[dict], list[dict]]:
    losses: list[dict] = []
    journal = Journal(path, Sealer(key))
    try:
        return list(journal.salvage_records(losses)), losses
    finally:
        journal.close()


def test_every_flipped_byte_is_refused_and_salvage_loses_only_its_record(written, tmp_path):
    _, key, spans, records = written
    rng = random.Random(11)
    for round_ in range(ROUNDS):
        path = _copy(written, tmp_path / str(round_))
        data = bytearray(path.read_bytes())
        at = rng.randrange(HEADER.size, spans[-1][1])
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        hit = next(i for i, (start, end) in enumerate(spans) if start <= at < end)
        with pytest.raises(StoreCorrupt) as err:
            _open(path, key)
        assert err.value.offset == spans[hit][0] and err.value.seq == hit, (round_, at)
        assert path.read_bytes() == bytes(data)  # refused, not cut
        kept, losses = _salvage(path, key)
        assert kept == records[:hit] + records[hit + 1:], (round_, at)
        assert [(loss["seq"], loss["last_seq"]) for loss in losses] == [(hit, hit)]


def test_a_stray_byte_past_unwritten_sectors_is_cut_and_loses_nothing(written, tmp_path):
    """Past whole zero sectors, a stray byte is an unsynced write kept out of order."""
    _, key, spans, records = written
    path = _copy(written, tmp_path)
    data = bytearray(path.read_bytes())
    data[spans[-1][1] + 3000] = 0x42
    path.write_bytes(bytes(data))
    assert _open(path, key) == records
    assert not any(path.read_bytes()[spans[-1][1]:])


def test_every_crash_shaped_tail_is_cut(written, tmp_path):
    _, key, spans, records = written
    rng = random.Random(13)
    long_ones = [i for i, (s, e) in enumerate(spans) if (s // SECTOR + 1) * SECTOR < e - 16]
    for round_ in range(ROUNDS):
        last = rng.choice(long_ones)  # the journal as it was when this record was the last one
        start, end = spans[last]
        path = _copy(written, tmp_path / str(round_))
        data = bytearray(path.read_bytes())
        data[end:] = bytes(len(data) - end)
        boundaries = list(range((start // SECTOR + 1) * SECTOR, end - 16, SECTOR))
        cut = rng.choice(boundaries)
        data[cut:end] = bytes(end - cut)  # the sectors of the record that never reached the disk
        path.write_bytes(bytes(data))
        assert _open(path, key) == records[:last], (round_, cut)
        assert not any(path.read_bytes()[start:])  # cut there; the reserve is zeros again


# -- salvage, case by case: what it keeps and what it reports lost --------------------------

def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _salvaged(path: Path, key: bytes, records: list[dict]) -> tuple[list[int], list[tuple]]:
    kept, losses = _salvage(path, key)
    return [r["i"] for r in kept], [(loss["seq"], loss["last_seq"]) for loss in losses]


def test_a_damaged_record_header_loses_only_that_record(written, tmp_path):
    """A broken length or checksum: salvage finds the next record by scanning for it."""
    _, key, spans, records = written
    for k in (0, 5, 20, 38):
        for at in (spans[k][0] + 1, spans[k][0] + 6):  # the length, the checksum
            path = _copy(written, tmp_path / f"{k}-{at}")
            _flip(path, at)
            with pytest.raises(StoreCorrupt) as err:
                _open(path, key)
            assert (err.value.offset, err.value.seq) == (spans[k][0], k)
            assert _salvaged(path, key, records) == ([i for i in range(40) if i != k], [(k, k)])


def test_damage_to_the_last_record_loses_it_alone(written, tmp_path):
    _, key, spans, records = written
    for at in (spans[39][0] + 1, spans[39][1] - 5):  # its header, its sealed bytes
        path = _copy(written, tmp_path / str(at))
        _flip(path, at)
        kept, losses = _salvaged(path, key, records)
        assert kept == list(range(39)) and [seq for seq, _ in losses] == [39]


def test_a_journal_ending_at_its_last_record_keeps_it_after_damage_before(written, tmp_path):
    """No preallocated zeros after the last record (a journal copied off the kit)."""
    _, key, spans, records = written
    path = _copy(written, tmp_path)
    path.write_bytes(path.read_bytes()[:spans[39][1]])
    _flip(path, spans[38][0] + 1)
    assert _salvaged(path, key, records) == ([i for i in range(40) if i != 38], [(38, 38)])


@pytest.mark.parametrize("lost", [2, 16, 17])
def test_damage_over_several_records_loses_exactly_those_up_to_sixteen(written, tmp_path, lost):
    """Salvage looks for the next 16 record numbers after damage (SCAN_RECORDS): damage over
    more records than that ends the salvage there, and says it does not know how many."""
    _, key, spans, records = written
    k = 3
    path = _copy(written, tmp_path)
    data = bytearray(path.read_bytes())
    start, end = spans[k][0] + 20, spans[k + lost - 1][1] - 5  # sealed bytes of the first to the last
    data[start:end] = random.Random(lost).randbytes(end - start)
    path.write_bytes(bytes(data))
    kept, losses = _salvaged(path, key, records)
    if lost <= 16:
        assert (kept, losses) == ([i for i in range(40) if not k <= i < k + lost], [(k, k + lost - 1)])
    else:
        assert (kept, losses) == (list(range(k)), [(k, None)])


def test_a_record_after_damage_with_a_broken_header_is_counted_lost_with_it(written, tmp_path):
    _, key, spans, records = written
    path = _copy(written, tmp_path)
    _flip(path, spans[10][1] - 5)  # record 10's sealed bytes
    _flip(path, spans[11][0] + 6)  # record 11's header checksum
    assert _salvaged(path, key, records) == ([i for i in range(40) if i not in (10, 11)], [(10, 11)])


def test_a_copy_of_another_record_is_not_taken_for_the_next_one(written, tmp_path):
    """Bytes of an earlier record inside damage, or of the next record over a damaged one,
    are not read as records in their place: each record is kept once, in order."""
    _, key, spans, records = written
    sizes = [end - start for start, end in spans]
    k = next(i for i in range(5, 38) if sizes[i] > max(sizes[:5]) + 40 and sizes[i + 1] < sizes[i] - 40)
    raw = written[0].read_bytes()
    for case, (source, at) in {"earlier, inside": (min(range(5), key=lambda j: sizes[j]), spans[k][0] + 16),
                               "next, over": (k + 1, spans[k][0])}.items():
        path = _copy(written, tmp_path / case.replace(", ", "-"))
        data = bytearray(path.read_bytes())
        if case.startswith("earlier"):
            data[spans[k][0] + 1] ^= 0x10  # record k's header broken: salvage scans byte by byte
        copy = raw[spans[source][0]:spans[source][1]]
        data[at:at + len(copy)] = copy
        path.write_bytes(bytes(data))
        assert _salvaged(path, key, records) == ([i for i in range(40) if i != k], [(k, k)]), case


def test_a_cut_tail_is_kept_aside_private_and_whole_and_logged(written, tmp_path, caplog):
    """What is cut is not thrown away: the torn bytes (sealed) go to a file beside the
    journal, readable by the kit's user only, up to the last byte written ("X" here, a byte
    a careless strip would also take), and the log says what was cut and where it went."""
    _, key, spans, records = written
    path = _copy(written, tmp_path)
    data = bytearray(path.read_bytes())
    end = spans[-1][1]
    data[end + 3000] = ord("X")
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="fieldkit.store.journal"):
        assert _open(path, key) == records
    (kept,) = path.parent.glob("journal.fkj.torn-*")
    assert kept.name.endswith(f"-{end}") and kept.stat().st_mode & 0o777 == 0o600
    assert kept.read_bytes() == bytes(data[end:end + 3001])
    assert [r.getMessage() for r in caplog.records if r.name == "fieldkit.store.journal"] == [
        f"journal journal.fkj: cut a torn final write at offset {end} ({len(data) - end} bytes, "
        f"a record that never reached the disk, with later unsynced bytes after it); kept in {kept.name}"]


def test_a_record_with_a_sector_that_never_reached_the_disk_ends_the_journal(written, tmp_path):
    """A whole 512-byte sector of zeros inside a record (written out of order, the power cut
    before the rest): that record and everything after it were never acknowledged, so the
    journal is cut there, not refused; a shorter run of zeros is damage."""
    _, key, spans, records = written
    rng = random.Random(17)
    inside = [i for i, (s, e) in enumerate(spans) if (s // SECTOR + 2) * SECTOR + SECTOR < e - 1]
    for k in rng.sample(inside, 6):
        start, end = spans[k]
        path = _copy(written, tmp_path / str(k))
        data = bytearray(path.read_bytes())
        first = (start // SECTOR + 1) * SECTOR
        sector = rng.choice(range(first, end - SECTOR, SECTOR))
        data[sector:sector + SECTOR] = bytes(SECTOR)
        path.write_bytes(bytes(data))
        assert _open(path, key) == records[:k], (k, sector)
        assert not any(path.read_bytes()[start:])
    k = inside[0]
    path = _copy(written, tmp_path / "short")
    data = bytearray(path.read_bytes())
    at = (spans[k][0] // SECTOR + 1) * SECTOR
    data[at:at + SECTOR - 1] = bytes(SECTOR - 1)  # one byte short of a sector: damage
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        _open(path, key)
    path = _copy(written, tmp_path / "unaligned")
    data = bytearray(path.read_bytes())
    data[at + 100:at + 100 + SECTOR] = bytes(SECTOR)  # a sector's worth, not on a sector: damage
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        _open(path, key)


def test_zeros_from_a_record_start_to_its_sector_end_are_a_torn_write(written, tmp_path):
    """The head of a record up to the end of its first sector never written (at least
    MIN_TORN bytes of it), the rest of the record there: torn, cut, nothing after it kept."""
    _, key, spans, records = written
    k = next(i for i, (s, e) in enumerate(spans)
             if 16 <= (s // SECTOR + 1) * SECTOR - s <= SECTOR - 8 and e - s > 3 * SECTOR and i > 0)
    start, _ = spans[k]
    boundary = (start // SECTOR + 1) * SECTOR
    path = _copy(written, tmp_path)
    data = bytearray(path.read_bytes())
    data[start:boundary] = bytes(boundary - start)
    path.write_bytes(bytes(data))
    assert _open(path, key) == records[:k]


def _journal_with_record_at(tmp_path: Path, *, start: int | None = None, end: int | None = None):
    """A journal whose record "target" starts (or ends) at the given offset modulo 512,
    followed by one more record: (path, key, (start, end) of the target, records)."""
    key = random_key()
    path = tmp_path / "db" / "journal.fkj"
    path.parent.mkdir(parents=True)
    journal = Journal(path, Sealer(key))
    list(journal.open())
    records = []

    def add(record):
        before = journal.size
        journal.wait_durable(journal.append(record))
        records.append(record)
        return before, journal.size

    b, a = add({"i": 0, "pad": ""})
    fixed = a - b  # a record's size is this plus its pad's length
    if start is not None:  # a filler that ends where the target should start
        pad = (start - journal.size - fixed) % SECTOR
        add({"i": 1, "pad": "f" * pad})
        span = add({"i": 2, "pad": "t" * 1500})
    else:
        add({"i": 1, "pad": "f" * 100})
        pad = (end - journal.size - fixed) % SECTOR
        if fixed + pad <= SECTOR:
            pad += SECTOR  # longer than one sector, shorter than two: one whole sector inside it
        span = add({"i": 2, "pad": "t" * pad})
    add({"i": 3, "pad": "after"})
    journal.close()
    return path, key, span, records


def test_exactly_sixteen_zero_bytes_before_a_sector_end_are_a_torn_head(tmp_path):
    path, key, (start, end), records = _journal_with_record_at(tmp_path, start=SECTOR - 16)
    assert start % SECTOR == SECTOR - 16
    data = bytearray(path.read_bytes())
    data[start:start + 16] = bytes(16)  # the least that counts as never written (MIN_TORN)
    path.write_bytes(bytes(data))
    assert _open(path, key) == records[:2]


def test_a_zero_last_sector_of_a_record_ending_on_a_sector_is_torn(tmp_path):
    path, key, (start, end), records = _journal_with_record_at(tmp_path, end=0)
    assert end % SECTOR == 0 and SECTOR < end - start <= 2 * SECTOR
    data = bytearray(path.read_bytes())
    data[end - SECTOR:end] = bytes(SECTOR)  # its last sector, the next record after it written
    path.write_bytes(bytes(data))
    assert _open(path, key) == records[:2]

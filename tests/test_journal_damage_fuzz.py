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

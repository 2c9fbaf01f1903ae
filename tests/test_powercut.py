"""Simulated power cuts: what was acknowledged survives, byte-identical (see powercut.py).

`make test` runs POWERCUT_CUTS=1000 cuts; `make soak` runs 20 000 and prints cuts per second.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from fieldkit.config import Config, render_toml
from fieldkit.errors import KeyUnavailable
from fieldkit.security.keys import Keyring
from fieldkit.store import Store, write_format
from fieldkit.store.journal import Journal

from powercut import Recorder, scratch_root
from powercut_workload import (KEY, Writer, check_image, damage_is_refused, damaged_blob_is_refused,
                               run_workload)

CUTS = int(os.environ.get("POWERCUT_CUTS", "1000"))
CUTS_PER_RUN = 40


@pytest.fixture
def scratch():
    path = Path(tempfile.mkdtemp(prefix="powercut-", dir=scratch_root()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cut_points(log: list, n: int, rng: random.Random) -> list[int]:
    """Half anywhere, half just before a sync (where the most is unsynced)."""
    syncs = [i for i, entry in enumerate(log) if entry[0] == "sync"]
    anywhere = rng.sample(range(len(log) + 1), n - n // 2)
    return anywhere + rng.sample(syncs, min(n // 2, len(syncs)))


def _cut_runs(scratch: Path, total: int, recorder=Recorder, stop_at_first=False):
    """Run workloads and check crash images until `total` cuts; returns (problems, stats)."""
    problems, stats, seed = [], {"cuts": 0, "damage_refused": 0}, 0
    while stats["cuts"] < total:
        root = scratch / f"run{seed}"
        rec = run_workload(root, seed, recorder=recorder)
        assert rec.unknown_writes == 0, "a file under the data dir was written outside the seam"
        rng = random.Random(seed)
        n = min(CUTS_PER_RUN, total - stats["cuts"], len(rec.log) + 1)
        for pos, state in rec.crash_images(_cut_points(rec.log, n, rng), scratch / "image", rng):
            opened = stats.get("opened", 0)
            found = check_image(scratch / "image", state, stats)
            problems += [f"seed {seed} cut at {pos}/{len(rec.log)} ({state.mode}): {p}" for p in found]
            opened = stats.get("opened", 0) > opened
            if opened and not found and (scratch / "image" / "db").exists() and stats["cuts"] % 10 == 0:
                refused = damaged_blob_is_refused(scratch / "image", state)
                assert refused is not False, f"seed {seed} cut {pos}: a damaged blob was read"
                stats["damage_refused"] += bool(refused)
                refused = damage_is_refused(scratch / "image")
                assert refused is not False, f"seed {seed} cut {pos}: a damaged record was accepted"
                stats["damage_refused"] += bool(refused)
            stats["cuts"] += 1
            if problems and stop_at_first:
                return problems, stats
        shutil.rmtree(root)
        seed += 1
    return problems, stats


def test_power_cuts_lose_nothing_acknowledged(scratch):
    t0 = time.perf_counter()
    problems, stats = _cut_runs(scratch, CUTS)
    elapsed = time.perf_counter() - t0
    print(f"\nsimulated power cuts: {stats['cuts']} in {elapsed:.1f} s ({stats['cuts'] / elapsed:.0f}/s); "
          f"opened {stats.get('opened', 0)}, torn tails cut {stats.get('torn_cut', 0)}, "
          f"refused over unsynced data {stats.get('refused_unsynced', 0)}, "
          f"damage refused {stats['damage_refused']}")
    assert not problems, "\n".join(problems[:20])
    assert stats["cuts"] >= CUTS
    # the cuts reach the code they are meant to prove
    assert stats.get("torn_cut", 0) > 0, "no cut left a torn final record"
    assert stats["damage_refused"] > 0


# -- the simulator catches the bugs it exists for ------------------------------------------

class NoDataSync(Recorder):
    """Planted bug: the journal's group-commit fdatasync is gone."""

    def fdatasync(self, fd):
        pass


class SyncsTheWrongFile(Recorder):
    """Planted bug: the journal's commit syncs its directory, not the journal file."""

    def fdatasync(self, fd):
        self.fsync_dir(self.root / "db")


class NoBlobSync(Recorder):
    """Planted bug: a blob's content is not fsynced before it is moved into place."""

    def fsync(self, fd):
        if f"{os.sep}blobs{os.sep}" not in os.readlink(f"/proc/self/fd/{fd}"):
            super().fsync(fd)


class NoBlobDirSync(Recorder):
    """Planted bug: the fan-out directory that names a new blob is not fsynced."""

    def fsync_dir(self, path):
        if Path(path).parent.name != "blobs":
            super().fsync_dir(path)


@pytest.fixture
def ack_before_sync(monkeypatch):
    """Planted bug: write() returns at once; the record is synced at the next commit."""
    real_wait, real_append = Journal.wait_durable, Journal.append

    def append(self, record):
        real_wait(self, self._end)
        return real_append(self, record)

    monkeypatch.setattr(Journal, "wait_durable", lambda self, ticket: None)
    monkeypatch.setattr(Journal, "append", append)


PLANTS = {"no_sync": NoDataSync, "wrong_file": SyncsTheWrongFile, "ack_before_sync": Recorder,
          "no_blob_sync": NoBlobSync, "no_blob_dir_sync": NoBlobDirSync}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_durability_bugs_are_caught(scratch, plant, request):
    recorder = PLANTS[plant]
    if plant == "ack_before_sync":
        request.getfixturevalue("ack_before_sync")
    problems, stats = _cut_runs(scratch, 400, recorder=recorder, stop_at_first=True)
    assert any("acknowledged" in p or "lost" in p for p in problems), \
        f"{plant}: {stats['cuts']} cuts found no lost acknowledgement"


# -- cuts in the middle of the operations that rewrite a whole file ------------------------

def _every_cut(rec: Recorder, start: int, scratch: Path, images_per_cut: int = 4):
    """Crash images at every log position from `start`, several random ones per position."""
    rng = random.Random(start)
    for _ in range(images_per_cut):
        yield from rec.crash_images(range(start, len(rec.log) + 1), scratch / "image", rng)


def test_cut_during_compaction_keeps_every_acknowledged_object(scratch):
    root = scratch / "kit"
    root.mkdir()
    write_format(root)
    with Recorder(root) as rec:
        store = Store.open(root, KEY, Config({"store.compact_min_mb": 64}))  # no automatic compaction
        try:
            writer = Writer(store, rec, random.Random(7), "C")
            for _ in range(30):
                writer.step()
            start = len(rec.log)
            store.compact()
            end = len(rec.log)
        finally:
            store.close()
    assert any(e[0] == "rename" for e in rec.log[start:end])
    stats, checked = {}, 0
    for pos, state in _every_cut(rec, start, scratch):
        assert not check_image(scratch / "image", state, stats), f"cut at {pos} during compaction"
        checked += 1
    assert checked >= 4 * (end - start)


def _kit_with_objects(root: Path, passphrase: str) -> tuple[bytes, list]:
    """A kit with a keyring (cheap scrypt) and some acknowledged objects, all synced."""
    root.mkdir()
    write_format(root)
    data_key = Keyring(root).create(passphrase, scrypt_n=2**10)
    store = Store.open(root, data_key, Config())
    try:
        refs = [(store.blobs.put_bytes(bytes([i]) * 3000), bytes([i]) * 3000) for i in range(3)]
        store.write(lambda db: db.table("patients").insert({"id": "P1", "name": "kept"}))
    finally:
        store.close()
    return data_key, refs


def _kit_opens_with(image: Path, data_key: bytes, refs: list) -> None:
    store = Store.open(image, data_key, Config())
    try:
        assert store.read(lambda db: db.table("patients").all())[0]["name"] == "kept"
        for ref, data in refs:
            assert store.blobs.get_bytes(ref.addr) == data
    finally:
        store.close()


def test_cut_during_passphrase_change_opens_with_the_right_key(scratch):
    root = scratch / "kit"
    data_key, refs = _kit_with_objects(root, "old passphrase 1")
    with Recorder(root) as rec:
        Keyring(root).change_passphrase("old passphrase 1", "new passphrase 2")
        rec.ack("passphrase", "new passphrase 2")
    seen = set()
    for pos, state in _every_cut(rec, 0, scratch):
        ring = Keyring(scratch / "image")
        assert ring.unlock_with_device_key() == data_key, f"cut at {pos}: the device key no longer opens"
        opened_by = []
        for phrase in ("old passphrase 1", "new passphrase 2"):
            try:
                assert ring.unlock_with_passphrase(phrase) == data_key
                opened_by.append(phrase)
            except KeyUnavailable:
                pass
        assert len(opened_by) == 1, f"cut at {pos}: passphrases that open: {opened_by}"
        if "passphrase" in state.expected:
            assert opened_by == ["new passphrase 2"], f"cut at {pos}: acknowledged change lost"
        seen.add(opened_by[0])
        _kit_opens_with(scratch / "image", data_key, refs)
    assert seen == {"old passphrase 1", "new passphrase 2"}  # cuts landed on both sides


def test_cut_during_key_creation_leaves_a_kit_or_none(scratch):
    """Wrapping the new data key at init: after a cut the keyring opens with the
    passphrase and the device key, or there is no keyring (init is run again)."""
    root = scratch / "kit"
    root.mkdir()
    with Recorder(root) as rec:
        data_key = Keyring(root).create("first passphrase 1", scrypt_n=2**10)
        rec.ack("keyring", True)
    outcomes = set()
    for pos, state in _every_cut(rec, 0, scratch):
        ring = Keyring(scratch / "image")
        if not ring.exists():
            assert "keyring" not in state.expected, f"cut at {pos}: acknowledged keyring lost"
            outcomes.add("none")
            continue
        assert ring.unlock_with_passphrase("first passphrase 1") == data_key, f"cut at {pos}"
        assert ring.unlock_with_device_key() == data_key, f"cut at {pos}: device key does not match"
        outcomes.add("kit")
    assert outcomes == {"none", "kit"}


def test_cut_during_provisioning_writes_keeps_the_kit(scratch):
    from fieldkit.provision.answers import Answers
    from fieldkit.provision.steps import STATE_FILE, Provisioner

    host = scratch / "root"
    data_dir = host / "var" / "lib" / "fieldkit"
    data_dir.parent.mkdir(parents=True)
    data_key, refs = _kit_with_objects(data_dir, "provision passphrase")
    config = data_dir / "fieldkit.toml"
    config.write_text(render_toml({"kit.id": "K-PC"}))
    old = config.read_bytes()
    prov = Provisioner(Answers(kit_id="K-PC", network_mode="none", http_port=9443), root=host, source=host, echo=lambda s: None)
    with Recorder(host) as rec:
        prov.step_config()
        rec.ack("config", True)
        prov._write_state(prov.host(STATE_FILE), {"state": "complete", "kit_id": "K-PC"})
    new = config.read_bytes()
    assert new != old
    image_dir = Path("var/lib/fieldkit")
    for pos, state in _every_cut(rec, 0, scratch):
        image = scratch / "image"
        got = (image / image_dir / "fieldkit.toml").read_bytes()
        assert got in (old, new), f"cut at {pos}: the config is half written"
        if "config" in state.expected:
            assert got == new, f"cut at {pos}: acknowledged config lost"
        Config.load(image / image_dir / "fieldkit.toml")
        state_file = image / STATE_FILE
        if state_file.exists():
            assert json.loads(state_file.read_text())["state"] == "complete", f"cut at {pos}"
        assert Keyring(image / image_dir).unlock_with_device_key() == data_key
        _kit_opens_with(image / image_dir, data_key, refs)

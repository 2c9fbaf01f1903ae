"""Backup, restore and data-format upgrade, with real processes and real file systems:
a backup taken from a running `fieldkit serve` while dcmtk's storescu sends, restored on a
fresh data dir and synced to a real Orthanc; bad targets on small tmpfs mounts; damaged,
truncated and foreign backups; the committed format-1 data dir opening with this release."""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import tarfile
import time
from pathlib import Path

import pydicom
import pytest

from fieldkit import DATA_FORMAT_VERSION
from fieldkit.errors import FieldkitError
from fieldkit.records import T_INSTANCES, T_META
from fieldkit.kit import open_kit
from fieldkit.store import backup as store_backup
from fixtures.dcmtk import pydicom_file, store_responses, storescu
from fixtures.sync import add_to_store, corpus
from kitproc import PASSPHRASE, KitProcess, init_kit, run_cli, set_config, wait_until
from proxy import Proxy

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "format1-kit.tar.gz"


# -- helpers --------------------------------------------------------------------------------

@contextlib.contextmanager
def small_fs(mountpoint: Path, size: str, readonly: bool = False):
    """A tmpfs of `size` mounted at `mountpoint` for the test (root only), always unmounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {proc.stderr}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def passphrase_file(tmp_path: Path, text: str = PASSPHRASE) -> Path:
    path = tmp_path / f"pp-{abs(hash(text))}"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under root -> (size, inode, mtime_ns): shows what a command changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def kit_blobs(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "blobs").glob("??/*")}


def backup_cli(data_dir: Path, target: Path, check: bool = True):
    return run_cli("backup", "--data-dir", data_dir, "--to", target, check=check)


def restore_cli(source: Path, data_dir: Path, pp: Path, check: bool = True):
    return run_cli("restore", "--from", source, "--data-dir", data_dir, "--passphrase-file", pp, check=check)


def sop_uids(data_dir: Path) -> set[str]:
    kit = open_kit(data_dir)
    try:
        return set(kit.store.read(lambda db: [d["sop_instance_uid"] for d in db.table(T_INSTANCES).all()]))
    finally:
        kit.close()


def write_captures(dirpath: Path, n: int, patient: str) -> list[Path]:
    """n single-frame ultrasound captures with fresh UIDs (pydicom's palette example)."""
    dirpath.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study
        ds.PatientID = patient
        path = dirpath / f"{i:03}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _configure_hospital(data_dir: Path, url: str) -> None:
    run_cli("hospital", "set", "--data-dir", data_dir, "--url", url)
    set_config(data_dir, sync__backoff_max_seconds=1.0, hospital__read_timeout_seconds=5.0,
               hospital__connect_timeout_seconds=2.0)


# -- the whole path with real peers --------------------------------------------------------

def test_backup_while_storescu_sends_restores_every_acknowledged_object_and_syncs_no_duplicate(
        tmp_path, orthanc, need):
    need("storescu")
    need("Orthanc")
    src = init_kit(tmp_path / "kit")
    held_before = {orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.rest("/instances")}
    link = Proxy(orthanc.http_port)
    _configure_hospital(src, link.url())
    first = write_captures(tmp_path / "first", 4, "BK-1")
    burst = write_captures(tmp_path / "burst", 120, "BK-2")
    target = tmp_path / "stick" / "fieldkit-backup"
    target.parent.mkdir()
    kit = KitProcess(src).start()
    try:
        auth = kit.auth("admin")
        qido = {"Authorization": f"Bearer {kit.token('dicomweb-client')}", "Accept": "application/dicom+json"}

        def status():
            return kit.get("/api/v1/status", headers=auth).json()

        assert store_responses(storescu(kit.dicom_port, first, "-xe")) == ["Success"] * 4
        # the hospital confirms the first captures (and any finding made of them) ...
        assert wait_until(lambda: (s := status())["sync"]["counts"]["confirmed"] >= 4
                          and s["sync"]["counts"]["queued"] == 0 and s["queue"]["infer"]["ready"] == 0
                          and s["queue"]["infer"]["leased"] == 0, 120), status()
        # ... then the link goes down, and the probe sends a burst during the backup
        link.refuse = True
        link.cut_all()
        probe = subprocess.Popen(["storescu", "-v", "-aet", "PROBE", "-aec", "FIELDKIT", "-xe", "127.0.0.1",
                                  str(kit.dicom_port), *map(str, burst)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        try:
            assert wait_until(lambda: status()["instances"] >= 4 + 5, 60), "the burst did not start"
            found = kit.get("/dicom-web/instances", headers=qido).json()
            before = {d["00080018"]["Value"][0] for d in found}  # catalogued (so acknowledged or about to be)
            assert probe.poll() is None, "the burst ended before the backup started"
            out = backup_cli(src, target).stdout
        finally:
            probe_out = probe.communicate(timeout=180)[0]
        assert store_responses(subprocess.CompletedProcess([], 0, probe_out, "")) == ["Success"] * len(burst)
        assert "backup 1 written" in out
        first_manifest_blobs = kit_blobs(target)

        # restore on a fresh data dir: every object catalogued before the backup is there, whole
        restored = tmp_path / "restored"
        res = restore_cli(target, restored, passphrase_file(tmp_path)).stdout
        assert "all verified" in res
        assert (restored / "keys" / "device.key").exists()  # a fresh one: restarts unattended
        assert (restored / "keys" / "device.key").read_bytes() != (src / "keys" / "device.key").read_bytes()
        back = open_kit(restored)  # device key, no passphrase
        try:
            rows = back.store.read(lambda db: {d["sop_instance_uid"]: dict(d) for d in db.table(T_INSTANCES).all()})
            assert before <= set(rows), before - set(rows)
            for uid in before:
                ds = pydicom.dcmread(io.BytesIO(back.store.blobs.get_bytes(rows[uid]["blob"])))
                assert str(ds.SOPInstanceUID) == uid
            sync_before = back.store.queue.counts()["sync"]
            confirmed = {uid for uid, row in rows.items() if row.get("sync_state") == "confirmed"}
        finally:
            back.close()
        assert sync_before["done"] >= 4 and sync_before["leased"] == 0

        # a second backup copies only the blobs that are new since the first
        kit_now = kit_blobs(src)
        first_files = {k: v for k, v in tree(target).items() if k.startswith("blobs/")}
        out2 = backup_cli(src, target).stdout
        second = kit_blobs(target)
        assert kit_now <= second <= kit_blobs(src)  # inference may add blobs meanwhile
        new = second - first_manifest_blobs
        assert new and f"{len(new)} new blob files" in out2, out2
        assert f"{len(first_manifest_blobs)} already there" in out2, out2
        after = tree(target)
        assert all(after[k] == v for k, v in first_files.items())  # not copied again
    finally:
        kit.stop()
        link.stop()

    # sync from the restored kit: the hospital gets what it lacked, nothing twice
    assert confirmed >= {str(pydicom.dcmread(f).SOPInstanceUID) for f in first}
    link2 = Proxy(orthanc.http_port)
    sent_again, bodies = [], []

    def watch(head: bytes, body: bytes):  # every instance on its way to the hospital
        if head.startswith(b"POST"):
            uids = _stow_part_uids(head, body)
            sent_again.extend(uid for uid in uids if uid in confirmed)
            bodies.append(uids)
        return None  # forward it

    link2.intercept = watch
    _configure_hospital(restored, link2.url())
    kit2 = KitProcess(restored).start()
    try:
        auth2 = kit2.auth("admin")
        assert wait_until(lambda: (s := kit2.get("/api/v1/status", headers=auth2).json())["queue"]["sync"]["ready"] == 0
                          and s["queue"]["sync"]["leased"] == 0 and s["queue"]["infer"]["ready"] == 0
                          and s["queue"]["infer"]["leased"] == 0, 120), kit2.log()
    finally:
        kit2.stop()
        link2.stop()
    held = {orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.rest("/instances")}
    restored_uids = sop_uids(restored)
    assert held - held_before == restored_uids
    back = open_kit(restored)
    try:
        from fieldkit.sync.progress import status as sync_status
        st = sync_status(back.store)
        counts = back.store.queue.counts()["sync"]
    finally:
        back.close()
    assert counts["failed"] == 0 and counts["done"] == len(restored_uids)
    assert st["counts"]["confirmed"] == len(restored_uids)
    # what the hospital had confirmed before the backup was not sent again
    assert sent_again == []
    to_send = restored_uids - confirmed  # and what it lacked was seen on the way (the check can see UIDs)
    assert to_send and all(any(uid in b for b in bodies) for uid in to_send)


def _stow_part_uids(head: bytes, body: bytes) -> list[str]:
    """The SOP Instance UID of every part of a STOW-RS request (a report that merely
    references a confirmed instance is not that instance sent again)."""
    import re

    match = re.search(rb'boundary="?([^";\r\n]+)', head)
    if not match:
        return []
    uids = []
    for part in body.split(b"--" + match.group(1))[1:]:
        _, sep, payload = part.partition(b"\r\n\r\n")
        if not sep or not payload.strip(b"-\r\n"):
            continue
        ds = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True, force=True)
        if "SOPInstanceUID" in ds:
            uids.append(str(ds.SOPInstanceUID))
    return uids


# -- in-process backups of a store (fast) --------------------------------------------------

@pytest.fixture
def filled(data_dir):
    kit = open_kit(data_dir)
    try:
        add_to_store(kit.store, corpus("BK-0001"), triage="red")
    finally:
        kit.close()
    return data_dir


def test_backup_holds_no_device_key_and_nothing_in_clear(filled, tmp_path):
    set_config(filled, hospital__url="https://pacs.hospital.example/dicom-web")
    target = tmp_path / "b"
    backup_cli(filled, target)
    blobs = b"".join(p.read_bytes() for p in target.rglob("*") if p.is_file())
    # the marker names the kit (so a person can tell sticks apart); nothing else is readable
    secrets = [(filled / "keys" / "device.key").read_bytes(), b"BK-0001", b"PRIVATE KEY", b"BEGIN CERT",
               b"pacs.hospital", b"1.2.840.10008",
               # a DICOM file's header: "DICM" and its first file-meta tag (0002,xxxx); "DICM"
               # alone is 4 bytes that random ciphertext holds about once in 4 GiB
               b"DICM\x02\x00"]
    for s in secrets:
        assert s not in blobs, s
    keyring = json.loads((target / "keys" / "keyring.json").read_text())
    assert set(keyring["wrapped"]) == {"passphrase"}
    assert not list(target.rglob("device.key"))


def test_a_restored_backup_opens_with_every_row_and_a_wrong_passphrase_restores_nothing(filled, tmp_path):
    target = tmp_path / "b"
    backup_cli(filled, target)
    wrong = restore_cli(target, tmp_path / "r", passphrase_file(tmp_path, "not the kit passphrase"), check=False)
    assert wrong.returncode == 6 and "passphrase does not open the backup" in wrong.stderr
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.restoring-*"))
    restore_cli(target, tmp_path / "r", passphrase_file(tmp_path))
    assert sop_uids(tmp_path / "r") == sop_uids(filled)
    kit = open_kit(tmp_path / "r")
    try:
        assert kit.config["kit.id"] == "TEST1"
        assert kit.store.queue.counts()["sync"]["ready"] == 4
    finally:
        kit.close()


def test_backup_target_that_is_full_leaves_nothing_behind_and_the_previous_backup_whole(filled, tmp_path):
    stick = tmp_path / "stick"
    with small_fs(stick, "64k"):  # the corpus is ~1.9 MB of blobs
        r = backup_cli(filled, stick / "b", check=False)
        assert r.returncode == 10 and "is full" in r.stderr and "MiB free" in r.stderr, r.stderr
        assert list(stick.iterdir()) == []
    with small_fs(stick, "2500k"):
        backup_cli(filled, stick / "b")
        kept = tree(stick / "b")
        kit = open_kit(filled)
        try:  # a capture the stick has no room for
            kit.store.blobs.put_bytes(random.randbytes(1 << 20))
        finally:
            kit.close()
        r = backup_cli(filled, stick / "b", check=False)
        assert r.returncode == 10 and "nothing there was changed" in r.stderr, r.stderr
        assert tree(stick / "b") == kept
        restore_cli(stick / "b", tmp_path / "r", passphrase_file(tmp_path))
    assert sop_uids(tmp_path / "r") == sop_uids(filled)


def test_enospc_in_the_middle_of_a_copy_is_undone(filled, tmp_path, monkeypatch):
    """Free space that the check saw can be gone by the time the copy runs (another writer)."""
    stick = tmp_path / "stick"
    with small_fs(stick, "2500k"):
        filler = stick / "other-program"
        orig_copy = store_backup._copy_hashing
        calls = []

        def copy_then_fill(src, dest):  # another program fills the stick after the first blob
            calls.append(src)
            if len(calls) == 2:
                with open(filler, "wb") as fh:
                    with contextlib.suppress(OSError):
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
            return orig_copy(src, dest)

        monkeypatch.setattr(store_backup, "_copy_hashing", copy_then_fill)
        kit = open_kit(filled)
        try:
            with pytest.raises(FieldkitError, match="is full"):
                store_backup.backup(kit.store, stick / "b", ["fieldkit.toml"], "TEST1")
        finally:
            kit.close()
        assert sorted(p.name for p in stick.iterdir()) == ["other-program"]


def test_read_only_target_is_refused_with_nothing_written(filled, tmp_path):
    stick = tmp_path / "stick"
    with small_fs(stick, "1m", readonly=True):
        for target in (stick, stick / "b"):
            r = backup_cli(filled, target, check=False)
            assert r.returncode == 10 and "read-only" in r.stderr, r.stderr
        assert list(stick.iterdir()) == []


def test_target_not_empty_or_of_another_kit_is_refused(filled, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "shopping.txt").write_text("milk\n")
    kept = tree(other)
    r = backup_cli(filled, other, check=False)
    assert r.returncode == 2 and "not empty and holds no fieldkit backup" in r.stderr
    assert tree(other) == kept
    r = backup_cli(filled, filled / "backup", check=False)
    assert r.returncode == 2 and "inside the data dir" in r.stderr and not (filled / "backup").exists()
    another = init_kit(tmp_path / "another")
    backup_cli(another, tmp_path / "b")
    kept = tree(tmp_path / "b")
    r = backup_cli(filled, tmp_path / "b", check=False)
    assert r.returncode == 2 and "holds a backup of another kit" in r.stderr
    assert tree(tmp_path / "b") == kept


def test_restore_into_an_existing_kit_is_refused_and_it_is_unchanged(filled, tmp_path):
    another = init_kit(tmp_path / "another")
    backup_cli(another, tmp_path / "b")
    kept = tree(filled)
    r = restore_cli(tmp_path / "b", filled, passphrase_file(tmp_path), check=False)
    assert r.returncode == 2 and "already holds a kit" in r.stderr and "never overwrites" in r.stderr
    assert tree(filled) == kept


@pytest.mark.parametrize("damage", ["no-manifest", "missing-blob", "truncated-blob", "truncated-journal",
                                    "no-keyring", "other-kits-manifest"])
def test_truncated_or_damaged_backup_restores_nothing(filled, tmp_path, damage):
    target = tmp_path / "b"
    backup_cli(filled, target)
    blob = sorted((target / "blobs").glob("??/*"))[0]
    if damage == "no-manifest":
        (target / "manifest.sealed").unlink()
    elif damage == "missing-blob":
        blob.unlink()
    elif damage == "truncated-blob":
        blob.write_bytes(blob.read_bytes()[:-100])
    elif damage == "truncated-journal":
        journal = next((target / "db").glob("journal-*.fkj"))
        journal.write_bytes(journal.read_bytes()[:-7])
    elif damage == "no-keyring":
        (target / "keys" / "keyring.json").unlink()
    elif damage == "other-kits-manifest":  # same passphrase, another kit's data key
        another = init_kit(tmp_path / "another")
        backup_cli(another, tmp_path / "b2")
        (target / "manifest.sealed").write_bytes((tmp_path / "b2" / "manifest.sealed").read_bytes())
    r = restore_cli(target, tmp_path / "r", passphrase_file(tmp_path), check=False)
    assert r.returncode == 2 and "incomplete or damaged" in r.stderr and "nothing was restored" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.restoring-*"))


def test_flipped_bytes_anywhere_in_a_backup_give_a_clear_error_or_a_whole_restore(filled, tmp_path):
    target = tmp_path / "b"
    backup_cli(filled, target)
    want = sop_uids(filled)
    files = sorted(p for p in target.rglob("*") if p.is_file())
    rng = random.Random(1717)
    for i in range(24):
        path = rng.choice(files)
        original = path.read_bytes()
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        dest = tmp_path / f"r{i}"
        try:
            store_backup.restore(target, dest, PASSPHRASE)
        except FieldkitError as exc:
            assert exc.message and "\n" not in exc.message
            assert not dest.exists()
        else:  # only the clear marker is not covered by the manifest; a flip there is harmless
            assert path.name == store_backup.MARKER
            assert sop_uids(dest) == want
        finally:
            path.write_bytes(original)


# -- scheduled backups --------------------------------------------------------------------

def test_scheduled_backup_runs_and_its_result_is_on_the_status_and_the_device_page(tmp_path, need):
    need("chromium")
    from playwright.sync_api import sync_playwright

    from fixtures.ui import launch_chromium, new_context, sign_in
    from kitproc import ADMIN_PASSWORD, ADMIN_USER

    target = tmp_path / "stick" / "b"
    target.parent.mkdir()

    def prepare(data_dir):
        kit = open_kit(data_dir)
        try:
            add_to_store(kit.store, corpus("BK-0002"))
        finally:
            kit.close()
        set_config(data_dir, backup__path=str(target), backup__every_hours=1.0)

    from fixtures.ui import start_ui_kit
    (tmp_path / "ui").mkdir()
    kit = start_ui_kit(tmp_path / "ui", before_serve=prepare)
    try:
        auth = kit.auth("admin")
        assert wait_until(lambda: (kit.get("/api/v1/status", headers=auth).json().get("backup") or {}).get("ok"),
                          60), kit.log()
        st = kit.get("/api/v1/status", headers=auth).json()["backup"]
        assert st["target"] == str(target) and st["generation"] == 1 and st["scheduled"] is True
        assert st["next_at"] > st["at"] + 3500  # the next one in an hour, not again now
        with sync_playwright() as pw:
            browser = launch_chromium(pw, kit.data_dir)
            try:
                page = new_context(browser, kit).new_page()
                sign_in(page, ADMIN_USER, ADMIN_PASSWORD, "/device")
                page.goto("/device")
                page.wait_for_function("() => document.getElementById('dv-backup').textContent.endsWith(': ok')")
                assert str(target) in page.locator("#dv-backup").inner_text()
            finally:
                browser.close()
    finally:
        kit.stop()
    restore_cli(target, tmp_path / "r", passphrase_file(tmp_path))
    assert sop_uids(tmp_path / "r") == sop_uids(kit.data_dir)


# -- data format and migrations -----------------------------------------------------------

def _old_kit(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "kit"


def test_a_data_dir_written_by_format_1_opens_and_migrates(tmp_path):
    old = _old_kit(tmp_path)
    assert json.loads((old / "FORMAT").read_text())["format"] == 1
    out = json.loads(run_cli("status", "--data-dir", old, "--json").stdout)
    assert (out["patients"], out["instances"], out["findings"]) == (2, 4, 4)
    assert json.loads((old / "FORMAT").read_text())["format"] == DATA_FORMAT_VERSION
    assert (old / "db" / "journal.fkj.format-1").exists()  # kept aside before the first step
    kit = open_kit(old, passphrase=PASSPHRASE)
    try:
        meta = kit.store.read(lambda db: [dict(d) for d in db.table(T_META).all()])
        assert {"name": "data_format", "format": DATA_FORMAT_VERSION} in meta
        rows = kit.store.read(lambda db: [dict(d) for d in db.table(T_INSTANCES).all()])
        for row in rows:  # every capture and report still decrypts and parses
            ds = pydicom.dcmread(io.BytesIO(kit.store.blobs.get_bytes(row["blob"])))
            assert str(ds.SOPInstanceUID) == row["sop_instance_uid"]
        journal_size = kit.store.journal_bytes
    finally:
        kit.close()
    kit = open_kit(old)  # a second open migrates nothing (no new journal record)
    try:
        assert kit.store.journal_bytes == journal_size
    finally:
        kit.close()


def test_a_data_dir_of_a_newer_format_is_refused_and_left_alone(tmp_path, data_dir):
    (data_dir / "FORMAT").write_text(json.dumps({"format": DATA_FORMAT_VERSION + 1}) + "\n")
    kept = tree(data_dir)
    r = run_cli("status", "--data-dir", data_dir, check=False)
    assert r.returncode == 9 and "written by a newer fieldkit" in r.stderr and "upgrade fieldkit" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert tree(data_dir) == kept


def test_a_store_noting_a_newer_format_is_refused(data_dir):
    from fieldkit.store.migrations import _set_format
    kit = open_kit(data_dir)
    try:
        kit.store.write(lambda db: _set_format(db, DATA_FORMAT_VERSION + 1))
    finally:
        kit.close()
    r = run_cli("status", "--data-dir", data_dir, check=False)
    assert r.returncode == 9 and f"holds format {DATA_FORMAT_VERSION + 1}" in r.stderr


def test_an_upgrade_cut_before_format_was_rewritten_finishes_at_the_next_open(tmp_path):
    """The migration's journal record landed, the FORMAT file did not (a power cut between)."""
    old = _old_kit(tmp_path)
    kit = open_kit(old)
    size = kit.store.journal_bytes
    kit.close()
    (old / "FORMAT").write_text(json.dumps({"format": 1}) + "\n")
    kit = open_kit(old)
    try:
        assert kit.store.journal_bytes == size  # no step ran twice: the store knew its format
        meta = kit.store.read(lambda db: [dict(d) for d in db.table(T_META).all()])
        assert [d for d in meta if d.get("name") == "data_format"] == [{"name": "data_format", "format": DATA_FORMAT_VERSION}]
    finally:
        kit.close()
    assert json.loads((old / "FORMAT").read_text())["format"] == DATA_FORMAT_VERSION

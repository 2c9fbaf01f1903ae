"""security/keys.py by itself: the data key wrapped by the passphrase and per key mode
(device key file, a real software TPM, or nothing), what each mode opens with, and one clear
refusal for every damaged or missing key file."""

from __future__ import annotations

import base64
import json
import os

import pytest

from fieldkit.errors import BadInput, KeyUnavailable, UnsupportedVersion
from fieldkit.security.crypto import Sealer
from fieldkit.security.keys import KEYRING_VERSION, Keyring
from fieldkit.security.tpm import Tpm2Sealer

N = 2**10  # scrypt cost kept small in tests; the production default is 2**15


def doc(ring: Keyring) -> dict:
    return json.loads(ring.path.read_text())


def rewrite(ring: Keyring, change) -> None:
    d = doc(ring)
    change(d)
    ring.path.write_text(json.dumps(d))


def test_device_mode_wraps_one_key_twice_and_opens_either_way(tmp_path):
    ring = Keyring(tmp_path)
    assert not ring.exists()
    key = ring.create("correct horse", scrypt_n=N)
    assert len(key) == 32 and ring.exists() and ring.mode == "device"
    d = doc(ring)
    assert d["version"] == KEYRING_VERSION == 2
    assert d["kdf"] == {"name": "scrypt", "n": N, "r": 8, "p": 1, "salt": d["kdf"]["salt"]}
    assert len(base64.b64decode(d["kdf"]["salt"])) == 16
    assert set(d["wrapped"]) == {"passphrase", "device"} and "tpm_sealed" not in d
    assert key.hex() not in ring.path.read_text() and key not in ring.path.read_bytes()
    assert ring.unlock("correct horse") == key
    assert ring.unlock() == key == ring.unlock_with_device_key()
    assert ring.device_key_path.stat().st_mode & 0o777 == 0o600
    assert ring.dir.stat().st_mode & 0o777 == 0o700
    # the wrapping is bound to its purpose: the device-wrapped key does not open as the passphrase one
    device_key = ring.device_key_path.read_bytes()
    assert Sealer(device_key).open(base64.b64decode(d["wrapped"]["device"]), b"device") == key


def test_wrong_passphrase_is_refused_in_so_many_words(tmp_path):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    with pytest.raises(KeyUnavailable, match="^wrong passphrase$"):
        ring.unlock("wrong horse")


def test_passphrase_mode_keeps_no_key_on_disk(tmp_path):
    ring = Keyring(tmp_path)
    key = ring.create("correct horse", scrypt_n=N, mode="passphrase")
    assert ring.mode == "passphrase" and set(doc(ring)["wrapped"]) == {"passphrase"}
    assert not ring.device_key_path.exists()
    with pytest.raises(KeyUnavailable, match=r"^this kit keeps no key on its disk \(key mode passphrase\): start `fieldkit serve` and unlock it \(unlock page or `fieldkit unlock`\), or give --passphrase-file$"):
        ring.unlock()
    assert ring.unlock("correct horse") == key
    ring.add_device_key(key)  # a restored passphrase kit stays one
    assert ring.mode == "passphrase" and not ring.device_key_path.exists()


def test_unknown_mode_and_tpm_without_a_tpm_are_refused_before_anything_is_written(tmp_path):
    ring = Keyring(tmp_path)
    with pytest.raises(BadInput, match="unknown key mode 'usb': choose one of tpm, passphrase, device"):
        ring.create("correct horse", scrypt_n=N, mode="usb")
    with pytest.raises(KeyUnavailable, match=r"^key mode tpm needs a TPM \(setting security\.tpm_tcti\)$"):
        ring.create("correct horse", scrypt_n=N, mode="tpm")
    assert not ring.dir.exists()


def test_tpm_mode_opens_on_its_own_tpm_only(tmp_path, swtpm_factory):
    tpm = Tpm2Sealer(swtpm_factory("own").tcti)
    ring = Keyring(tmp_path, sealer=tpm)
    key = ring.create("correct horse", scrypt_n=N, mode="tpm")
    d = doc(ring)
    assert ring.mode == "tpm" and set(d["wrapped"]) == {"passphrase", "tpm"} and d["tpm_sealed"]
    assert not ring.device_key_path.exists()
    assert ring.unlock() == key and ring.unlock("correct horse") == key
    with pytest.raises(KeyUnavailable, match=r"^this kit's device key is sealed to a TPM and no TPM is configured \(setting security\.tpm_tcti\); unlock it with the kit passphrase$"):
        Keyring(tmp_path).unlock()
    other = Keyring(tmp_path, sealer=Tpm2Sealer(swtpm_factory("other").tcti))
    with pytest.raises(KeyUnavailable):
        other.unlock()
    assert other.unlock("correct horse") == key  # the disk in another box: passphrase only
    rewrite(ring, lambda d: d.pop("tpm_sealed"))
    with pytest.raises(KeyUnavailable, match=r"^key file .*keyring\.json is corrupt \(no TPM-sealed key\)$"):
        ring.unlock()


def test_a_tpm_key_that_does_not_open_the_wrapping_is_refused(tmp_path, swtpm_factory):
    tpm = Tpm2Sealer(swtpm_factory("own").tcti)
    ring = Keyring(tmp_path, sealer=tpm)
    ring.create("correct horse", scrypt_n=N, mode="tpm")
    rewrite(ring, lambda d: d.update(tpm_sealed=base64.b64encode(tpm.seal(os.urandom(32))).decode()))
    with pytest.raises(KeyUnavailable, match=r"^the TPM unsealed a key that does not open this kit's key file$"):
        ring.unlock()


def test_passphrase_change_rewraps_the_same_key_with_a_fresh_salt(tmp_path):
    ring = Keyring(tmp_path)
    key = ring.create("correct horse", scrypt_n=N)
    before = doc(ring)
    ring.change_passphrase("correct horse", "battery staple")
    after = doc(ring)
    assert after["kdf"]["salt"] != before["kdf"]["salt"] and after["kdf"]["n"] == N
    assert after["wrapped"]["device"] == before["wrapped"]["device"]
    assert ring.unlock("battery staple") == key and ring.unlock() == key
    with pytest.raises(KeyUnavailable, match="wrong passphrase"):
        ring.unlock("correct horse")
    with pytest.raises(KeyUnavailable, match="wrong passphrase"):
        ring.change_passphrase("correct horse", "x" * 12)


def test_a_backup_holds_the_passphrase_wrapping_only_and_a_restore_adds_a_device_key(tmp_path, swtpm_factory):
    ring = Keyring(tmp_path / "a", sealer=Tpm2Sealer(swtpm_factory().tcti))
    key = ring.create("correct horse", scrypt_n=N, mode="tpm")
    backup = json.loads(ring.passphrase_only())
    assert set(backup["wrapped"]) == {"passphrase"} and "tpm_sealed" not in backup
    restored = Keyring(tmp_path / "b")
    restored.dir.mkdir(parents=True)
    restored.path.write_bytes(ring.passphrase_only())
    assert restored.unlock("correct horse") == key
    restored.add_device_key(key)
    d = doc(restored)
    assert d["mode"] == "device" and set(d["wrapped"]) == {"passphrase", "device"} and "tpm_sealed" not in d
    assert restored.unlock() == key
    old = Keyring(tmp_path / "c")
    old.create("correct horse", scrypt_n=N)
    rewrite(old, lambda d: (d.update(version=1), d.pop("mode")))  # format 1: no mode, a device keyring
    assert old.mode == "device" and old.unlock() == old.unlock("correct horse")
    old.add_device_key(old.unlock())
    assert doc(old)["version"] == KEYRING_VERSION and doc(old)["mode"] == "device"


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.path.unlink(), r"^key file .*keyring\.json is missing: this data dir cannot be opened \(was the kit erased\?\)$"),
    (lambda r: r.path.write_text("{not json"), r"^key file .*keyring\.json is corrupt \(not valid JSON\)$"),
    (lambda r: r.path.write_bytes(b"\xff\xfe"), r"is corrupt \(not valid JSON\)"),
    (lambda r: r.path.write_text("[1]"), r"^key file .*keyring\.json is corrupt \(no version\)$"),
    (lambda r: r.path.write_text('{"kdf": 1}'), r"is corrupt \(no version\)"),
    (lambda r: rewrite(r, lambda d: d.update(mode="usb")), "^key file names an unknown key mode 'usb'$"),
    (lambda r: rewrite(r, lambda d: d["wrapped"].pop("device")), r"^key file .*keyring\.json is corrupt$"),
    (lambda r: rewrite(r, lambda d: d["wrapped"].update(device="!!")), "is corrupt$"),
    (lambda r: r.device_key_path.unlink(), r"^device key .*device\.key is missing; start with --passphrase-file or unlock with the kit passphrase$"),
    (lambda r: r.device_key_path.write_bytes(b"k" * 31), r"^device key .*device\.key is corrupt \(wrong length\)$"),
    (lambda r: r.device_key_path.write_bytes(os.urandom(32)), r"^device key .*device\.key does not match this kit's key file$"),
])
def test_every_damaged_or_missing_key_file_gets_one_clear_refusal(tmp_path, damage, message):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    damage(ring)
    with pytest.raises(KeyUnavailable, match=message):
        ring.unlock()


@pytest.mark.parametrize("change", [
    lambda d: d.pop("kdf"), lambda d: d["kdf"].update(salt="!!"), lambda d: d["wrapped"].pop("passphrase"),
    lambda d: d.update(wrapped=None)])
def test_a_damaged_passphrase_wrapping_is_corrupt_not_a_crash(tmp_path, change):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    rewrite(ring, change)
    with pytest.raises(KeyUnavailable, match=r"^key file .*keyring\.json is corrupt$"):
        ring.unlock("correct horse")


def test_a_key_file_from_a_newer_fieldkit_is_refused(tmp_path):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    rewrite(ring, lambda d: d.update(version=KEYRING_VERSION + 1))
    with pytest.raises(UnsupportedVersion, match=r"^key file .*keyring\.json was written by a newer fieldkit \(format 3, this one reads 2\); upgrade fieldkit$"):
        ring.unlock()
    rewrite(ring, lambda d: d.update(version=KEYRING_VERSION))
    assert len(ring.unlock()) == 32


def test_destroy_overwrites_and_removes_both_key_files(tmp_path):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    # a second name for each file keeps its bytes reachable after the unlink: they must be noise
    before = {p: p.read_bytes() for p in (ring.path, ring.device_key_path)}
    for i, p in enumerate(before):
        os.link(p, tmp_path / f"link{i}")
    ring.destroy()
    for i, (p, old) in enumerate(before.items()):
        now = (tmp_path / f"link{i}").read_bytes()
        assert len(now) >= max(len(old), 64) and old not in now
    assert not ring.path.exists() and not ring.device_key_path.exists() and ring.dir.exists()
    with pytest.raises(KeyUnavailable, match="is missing"):
        ring.unlock("correct horse")
    ring.destroy()  # nothing left: nothing to do, no error


def test_a_new_passphrase_gets_a_new_16_byte_salt(tmp_path):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    ring.change_passphrase("correct horse", "battery staple")
    assert len(base64.b64decode(doc(ring)["kdf"]["salt"])) == 16


def test_a_device_kits_backup_key_file_opens_with_the_passphrase_only(tmp_path):
    ring = Keyring(tmp_path / "a")
    key = ring.create("correct horse", scrypt_n=N)
    backup = json.loads(ring.passphrase_only())
    assert set(backup["wrapped"]) == {"passphrase"} and backup["mode"] == "device"
    restored = Keyring(tmp_path / "b")
    restored.dir.mkdir(parents=True)
    restored.path.write_bytes(ring.passphrase_only())
    with pytest.raises(KeyUnavailable):
        restored.unlock()
    assert restored.unlock("correct horse") == key


def test_a_tpm_kit_given_a_device_key_forgets_its_tpm(tmp_path, swtpm_factory):
    ring = Keyring(tmp_path, sealer=Tpm2Sealer(swtpm_factory().tcti))
    key = ring.create("correct horse", scrypt_n=N, mode="tpm")
    ring.add_device_key(key)  # e.g. its disk moved to a box with another TPM
    d = doc(ring)
    assert d["mode"] == "device" and "tpm_sealed" not in d and set(d["wrapped"]) == {"passphrase", "device"}
    assert Keyring(tmp_path).unlock() == key  # no TPM needed any more


def test_destroy_removes_the_device_key_even_when_the_key_file_is_already_gone(tmp_path):
    ring = Keyring(tmp_path)
    ring.create("correct horse", scrypt_n=N)
    ring.path.unlink()
    ring.destroy()
    assert not ring.device_key_path.exists()

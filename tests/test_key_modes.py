"""Key modes (tpm, passphrase, device) and the stolen-disk test: a copy of a kit's data dir,
taken without the passphrase and without the box's TPM, gives up nothing."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from fieldkit.errors import KeyUnavailable
from fieldkit.kit import open_kit
from fieldkit.security.keys import Keyring
from fieldkit.store import instances
from fixtures.dcmtk import echoscu, store_responses, storescu
from fixtures.security import csrf_from
from keyscan import key_files
from kitproc import ADMIN_PASSWORD, ADMIN_USER, PASSPHRASE, KitProcess, init_kit, run_cli, set_config, wait_until
from test_canary import CANARY, _encodings, _files_containing

CANARY_ID = "ZZCANARYID"


def canary_dicom(tmp_path: Path) -> tuple[bytes, Path]:
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.PatientName = CANARY
    ds.PatientID = CANARY_ID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path = tmp_path / "canary.dcm"  # the probe's own file, outside the kit
    path.write_bytes(buf.getvalue())
    return buf.getvalue(), path


def make_kit(tmp_path: Path, mode: str, tpm=None) -> Path:
    extra = ["--key-mode", mode] + (["--tpm-tcti", tpm.tcti] if tpm is not None else [])
    return init_kit(tmp_path / f"kit-{mode}", *extra)


def open_own(data_dir: Path, mode: str):
    """The kit on its own box: unattended, except a passphrase kit (someone types it)."""
    return open_kit(data_dir, passphrase=PASSPHRASE if mode == "passphrase" else None)


@pytest.mark.parametrize("mode", ["tpm", "passphrase", "device"])
def test_a_stolen_disk_opens_only_in_device_mode_and_holds_the_canary_in_no_file(tmp_path, mode, swtpm_factory):
    started = time.time()
    tpm = swtpm_factory("box") if mode == "tpm" else None
    data_dir = make_kit(tmp_path, mode, tpm)
    assert Keyring(data_dir).mode == mode
    raw, _ = canary_dicom(tmp_path)
    kit = open_own(data_dir, mode)
    result = instances.put_instance(kit.store, raw, "dimse")
    kit.store.compact()
    kit.close()

    stolen = tmp_path / "stolen"
    shutil.copytree(data_dir, stolen)  # the disk: data dir and keys, never the box's TPM
    assert not (stolen / "keys" / "device.key").exists() or mode == "device"
    if mode == "tpm":
        set_config(stolen, security__tpm_tcti=swtpm_factory("thief").tcti)  # the thief's box has its own TPM

    needles = _encodings(CANARY) + [CANARY_ID.encode()]
    assert _files_containing(stolen, needles, started) == []
    # no private key lies on the disk in clear, but a passphrase kit's HTTPS key: it serves
    # the unlock page before anyone has typed the passphrase (README, threat table)
    assert sorted(p.relative_to(stolen).as_posix() for p in key_files(stolen)) == \
        (["tls/server.key"] if mode == "passphrase" else [])
    if mode == "device":
        # the unattended key file is on the disk: this mode protects nothing against theft
        kit = open_kit(stolen)
        assert instances.get_instance(kit.store, result["instance"]["sop_instance_uid"]) is not None
        kit.close()
        return
    with pytest.raises(KeyUnavailable) as refused:
        open_kit(stolen)
    expected = "sealed device key" if mode == "tpm" else "keeps no key on its disk"
    assert expected in refused.value.message
    # the command line says the same, in one line, with the key-unavailable exit code
    proc = run_cli("status", "--data-dir", stolen, check=False)
    assert proc.returncode == 6 and expected in proc.stderr and "Traceback" not in proc.stderr
    if mode == "tpm":  # and a box without any TPM
        set_config(stolen, security__tpm_tcti="swtpm:host=127.0.0.1,port=9")
        with pytest.raises(KeyUnavailable, match="TPM"):
            open_kit(stolen)
    # the passphrase still opens the copy: that is the owner's way back, not the thief's
    kit = open_kit(stolen, passphrase=PASSPHRASE)
    assert instances.get_instance(kit.store, result["instance"]["sop_instance_uid"]) is not None
    kit.close()


def test_a_tpm_kit_restarts_unattended_after_a_power_cut_and_refuses_another_tpm(tmp_path, swtpm_factory):
    tpm = swtpm_factory("box")
    data_dir = make_kit(tmp_path, "tpm", tpm)
    keyring = (data_dir / "keys" / "keyring.json").read_text()
    assert '"tpm_sealed"' in keyring and not (data_dir / "keys" / "device.key").exists()

    kit = KitProcess(data_dir).start()
    try:
        assert kit.get("/healthz").json()["locked"] is False
    finally:
        kit.kill()  # the power goes: the kit and the TPM both stop
    tpm.stop()
    tpm.start()  # same TPM state, new process (the box boots again)
    set_config(data_dir, security__tpm_tcti=tpm.tcti)
    kit = KitProcess(data_dir).start()
    try:
        assert kit.get("/healthz").json()["locked"] is False
    finally:
        kit.stop()

    set_config(data_dir, security__tpm_tcti=swtpm_factory("other").tcti)
    proc = run_cli("serve", "--data-dir", data_dir, "--http-port", "0", "--dicom-port", "0", check=False, timeout=60)
    assert proc.returncode == 6, proc.stderr
    assert "could not load the sealed device key" in proc.stderr and "Traceback" not in proc.stderr


def test_a_passphrase_kit_serves_locked_refuses_probes_and_runs_once_an_admin_unlocks_it(tmp_path, need):
    need("storescu")
    started = time.time()
    data_dir = make_kit(tmp_path, "passphrase")
    assert not (data_dir / "keys" / "device.key").exists()
    raw, canary_file = canary_dicom(tmp_path)
    kit = KitProcess(data_dir).start()
    try:
        assert kit.get("/healthz").json()["locked"] is True
        page = kit.get("/", allow_redirects=True)
        assert page.url.endswith("/unlock") and "Admin user name" in page.text
        assert kit.get("/api/v1/ui/board").status_code == 423

        # the probe hears why, and nothing it sent is kept
        assert echoscu(kit.dicom_port).returncode == 0
        refused = storescu(kit.dicom_port, [canary_file], "-d")
        statuses = store_responses(refused)
        assert statuses == ["Refused: Out of resources"], statuses
        assert "kit locked: an admin must unlock it" in refused.stdout + refused.stderr
        assert _files_containing(data_dir, _encodings(CANARY) + [CANARY_ID.encode()], started) == []

        web = requests.Session()
        web.trust_env = False  # the kit's CA, not a bundle from the environment
        web.verify = kit.ca
        form = kit.url + "/unlock"
        csrf = csrf_from(web.get(form, timeout=30).text)
        # the passphrase alone, or with a wrong admin sign-in, is not enough
        for name, secret in (("", ""), (ADMIN_USER, "not the password")):
            r = web.post(form, data={"csrf_token": csrf, "username": name, "password": secret,
                                     "passphrase": PASSPHRASE}, allow_redirects=False, timeout=60)
            assert r.status_code == 401 and "Wrong admin sign-in or kit passphrase" in r.text
        assert kit.get("/healthz").json()["locked"] is True
        r = web.post(form, data={"csrf_token": csrf, "username": ADMIN_USER, "password": ADMIN_PASSWORD,
                                 "passphrase": PASSPHRASE}, allow_redirects=False, timeout=60)
        assert r.status_code == 303, r.text
        assert kit.get("/healthz").json()["locked"] is False

        # the same port now stores, and the board shows the patient
        assert wait_until(lambda: store_responses(storescu(kit.dicom_port, [canary_file])) == ["Success"], 30)
        csrf = csrf_from(web.get(kit.url + "/login", timeout=30).text)
        r = web.post(kit.url + "/login", data={"csrf_token": csrf, "username": ADMIN_USER,
                                               "password": ADMIN_PASSWORD, "next": "/"}, timeout=60)
        assert r.status_code == 200
        board = web.get(kit.url + "/api/v1/ui/board", timeout=30)
        assert board.status_code == 200 and board.json()["total"] == 1 and CANARY in board.text
        assert _files_containing(data_dir, _encodings(CANARY) + [CANARY_ID.encode()], started) == []
    finally:
        kit.stop()


# ----------------------------------------------------------------------------- PIN pepper

def _user_doc(store, name: str) -> dict:
    return store.read(lambda db: next(d for d in db.table("users").all() if d["name"] == name))


def test_a_stored_pin_hash_does_not_verify_without_the_kits_pepper(sec_store):
    import os

    from fieldkit.security import passwords as pw
    from fieldkit.store import accounts

    accounts.create_user(sec_store, "nurse", "493817", "clinician")
    stolen_hash = _user_doc(sec_store, "nurse")["hash"]
    assert stolen_hash.startswith("$argon2id$")
    # what an offline attacker can test with the hash alone: the PIN itself
    assert not pw.verify_secret(stolen_hash, "493817")
    assert not pw.verify_secret(stolen_hash, "493817", os.urandom(32))  # another kit's pepper
    assert pw.verify_secret(stolen_hash, "493817", sec_store.pepper)
    assert accounts.verify_login(sec_store, "nurse", "493817").ok
    assert not accounts.verify_login(sec_store, "nurse", "493818").ok


def test_hashes_from_before_the_pepper_still_sign_in_and_are_rehashed_with_it(sec_store, fake_clock):
    from fieldkit.security import passwords as pw
    from fieldkit.store import accounts

    accounts.create_user(sec_store, "medic", "720461", "triage")
    old_hash = pw.hash_secret("720461")  # as the kit hashed PINs before the pepper
    sec_store.write(lambda db: db.table("users").update({"hash": old_hash, "peppered": False},
                                                        lambda d: d["name"] == "medic"))
    assert not accounts.verify_login(sec_store, "medic", "000000").ok  # a wrong PIN changes nothing
    assert _user_doc(sec_store, "medic")["hash"] == old_hash
    fake_clock.advance(60)
    assert accounts.verify_login(sec_store, "medic", "720461").ok  # no lock-out on upgrade
    doc = _user_doc(sec_store, "medic")
    assert doc["peppered"] is True and doc["hash"] != old_hash
    assert not pw.verify_secret(doc["hash"], "720461")
    assert accounts.verify_login(sec_store, "medic", "720461").ok


def test_a_kit_locked_while_running_answers_probes_locked_then_stores_on_the_same_port(kit, passphrase):
    from pynetdicom import AE
    from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage, Verification

    from fieldkit.kit.lock import lock_kit, unlock_kit

    kit.config = kit.config.with_overrides(dicom__port=0, dicom__bind="127.0.0.1")
    kit.start_services(["dicom"])
    port = kit.dicom_port
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))

    def send():
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(UltrasoundMultiFrameImageStorage, ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="FIELDKIT")
        assert assoc.is_established
        try:
            echo = assoc.send_c_echo()
            status = assoc.send_c_store(ds)
            return echo.Status, status.Status, str(status.get("ErrorComment", ""))
        finally:
            assoc.release()

    try:
        assert lock_kit(kit)
        assert send() == (0x0000, 0xA700, "kit locked: an admin must unlock it")
        assert unlock_kit(kit, passphrase)
        assert kit.dicom_port == port and not kit.locked_services
        assert send()[:2] == (0x0000, 0x0000)
        assert instances.get_instance(kit.store, ds.SOPInstanceUID) is not None
    finally:
        kit.stop_services()
        kit.stop_locked_services()


def test_damaged_key_files_get_one_clear_refusal(tmp_path):
    import json
    import os
    import random

    from fieldkit.security.tpm import Tpm2Sealer, _split

    class Unreachable(Tpm2Sealer):  # only _split runs: the blob is refused before any TPM call
        def _run(self, args, what, stdin=None):
            raise AssertionError("a damaged blob reached the TPM")

    rng = random.Random(14)
    for n in range(300):
        blob = b"FKTPM1" + os.urandom(rng.randrange(0, 40)) if n % 2 else os.urandom(rng.randrange(0, 300))
        try:
            pub, priv = _split(blob)
        except KeyUnavailable:
            continue
        assert len(pub) + len(priv) + 10 == len(blob)

    ring = Keyring(tmp_path / "kit", sealer=Unreachable("swtpm:host=127.0.0.1,port=9"))
    (tmp_path / "kit" / "keys").mkdir(parents=True)
    base = {"version": 2, "mode": "tpm", "kdf": {"name": "scrypt", "n": 1024, "r": 8, "p": 1, "salt": "AAAA"},
            "wrapped": {"passphrase": "AAAA", "tpm": "AAAA"}, "tpm_sealed": "AAAA"}
    for doc in (dict(base, mode="floppy"), dict(base, tpm_sealed="not base64!"), dict(base, tpm_sealed=None),
                {k: v for k, v in base.items() if k != "tpm_sealed"}, dict(base, version=3)):
        ring.path.write_text(json.dumps(doc))
        with pytest.raises((KeyUnavailable, __import__("fieldkit.errors").errors.UnsupportedVersion)) as refused:
            ring.unlock_with_device_key()
        assert "\n" not in refused.value.message and len(refused.value.message) < 300

"""Lock and crypto-erase on a real data dir and a real running kit."""

from __future__ import annotations

import pytest

from fieldkit.errors import KeyUnavailable
from fieldkit.store import accounts

from kitproc import PASSPHRASE, run_cli

CANARY = "CANARYERASE^Vb77q"


def _store_canary(data_dir):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    try:
        kit.store.write(lambda db: db.table("patients").insert({"id": "P1", "name": CANARY}))
        ref = kit.store.blobs.put_bytes(b"pixels of " + CANARY.encode() * 100)
        assert kit.store.blobs.get_bytes(ref.addr).startswith(b"pixels of")
    finally:
        kit.close()


def _files_containing(root, needle: bytes):
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_erase_needs_confirmation_and_then_nothing_opens(data_dir):
    from fieldkit.kit import open_kit

    _store_canary(data_dir)
    assert _files_containing(data_dir, CANARY.encode()) == []
    refused = run_cli("erase", "--data-dir", data_dir, "--confirm", "WRONG", check=False)
    assert refused.returncode != 0 and "nothing was erased" in refused.stderr
    no_tty = run_cli("erase", "--data-dir", data_dir, check=False, input="")
    assert no_tty.returncode != 0
    open_kit(data_dir).close()  # still intact
    run_cli("erase", "--data-dir", data_dir, "--confirm", "TEST1")
    assert not (data_dir / "keys" / "keyring.json").exists() and not (data_dir / "keys" / "device.key").exists()
    with pytest.raises(KeyUnavailable):
        open_kit(data_dir, passphrase=PASSPHRASE)
    with pytest.raises(KeyUnavailable):
        open_kit(data_dir)
    assert _files_containing(data_dir, CANARY.encode()) == []
    assert _files_containing(data_dir, b"CANARYERASE") == []
    again = run_cli("erase", "--data-dir", data_dir, "--confirm", "TEST1", check=False)
    assert again.returncode != 0 and "already erased" in again.stderr


def test_lock_and_erase_through_the_running_kit(kit_server, tmp_path):
    data_dir = kit_server.data_dir
    auth = kit_server.auth("admin")
    assert kit_server.get("/api/v1/status", headers=auth).status_code == 200
    run_cli("lock", "--data-dir", data_dir)
    assert kit_server.get("/api/v1/status", headers=auth).status_code == 423
    assert kit_server.get("/api/v1/users", headers=auth).status_code == 423
    assert kit_server.get("/healthz").json()["locked"] is True
    assert run_cli("token", "create", "--data-dir", data_dir, "--role", "probe", check=False).returncode != 0
    pp = tmp_path / "pp"
    pp.write_text("not the passphrase\n")
    assert run_cli("unlock", "--data-dir", data_dir, "--passphrase-file", pp, check=False).returncode != 0
    pp.write_text(PASSPHRASE + "\n")
    run_cli("unlock", "--data-dir", data_dir, "--passphrase-file", pp)
    assert kit_server.get("/api/v1/status", headers=auth).status_code == 401  # the lock signed everybody out
    auth = kit_server.auth("admin", again=True)
    assert kit_server.get("/api/v1/status", headers=auth).status_code == 200
    run_cli("erase", "--data-dir", data_dir, "--confirm", "TEST1")
    assert kit_server.get("/api/v1/status", headers=auth).status_code == 423
    assert run_cli("unlock", "--data-dir", data_dir, "--passphrase-file", pp, check=False).returncode != 0
    kit_server.stop()
    from fieldkit.kit import open_kit
    with pytest.raises(KeyUnavailable):
        open_kit(data_dir, passphrase=PASSPHRASE)

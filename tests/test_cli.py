"""The command line and `serve` as a user runs them: real processes, real HTTPS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from kitproc import FIELDKIT, run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help():
    from click.testing import CliRunner

    from fieldkit.cli import main

    runner = CliRunner()
    seen = []

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            result = runner.invoke(main, [*prefix, name, "--help"])
            assert result.exit_code == 0, result.output
            assert "Usage:" in result.output
            first_line = (cmd.help or "").strip().split("\n")[0]
            assert first_line, f"`fieldkit {' '.join(prefix + [name])}` has no help text"
            assert first_line[:20] in result.output
            seen.append(" ".join(prefix + [name]))
            if hasattr(cmd, "commands"):
                walk(cmd, prefix + [name])

    walk(main, [])
    for command in ("init", "serve", "status", "passphrase change", "demo"):
        assert command in seen
    assert "Usage:" in run_cli("--help").stdout  # and the real console entry point answers


def test_init_writes_a_documented_config_keys_and_tls(data_dir):
    from fieldkit.config import SETTINGS, Config

    text = (data_dir / "fieldkit.toml").read_text()
    for name, setting in SETTINGS.items():
        assert setting.help.split("(")[0].strip()[:30] in text, f"{name} is not documented in fieldkit.toml"
    Config.load(data_dir / "fieldkit.toml")
    assert oct((data_dir / "keys" / "device.key").stat().st_mode & 0o777) == "0o600"
    assert b"BEGIN CERTIFICATE" in (data_dir / "tls" / "ca.pem").read_bytes()
    # key mode device: the server key is sealed by the data key, like the CA's; no plaintext key file
    assert oct((data_dir / "tls" / "server.key.sealed").stat().st_mode & 0o777) == "0o600"
    assert not (data_dir / "tls" / "server.key").exists()
    # the data key is never stored bare: the keyring holds only wrapped forms
    ring = json.loads((data_dir / "keys" / "keyring.json").read_text())
    assert ring["kdf"]["name"] == "scrypt" and ring["kdf"]["n"] >= 2**14
    assert set(ring["wrapped"]) == {"passphrase", "device"}


def test_init_refuses_to_overwrite_a_kit(data_dir, tmp_path):
    pp = tmp_path / "pp"
    pp.write_text("another long passphrase\n")
    before = (data_dir / "keys" / "keyring.json").read_bytes()
    proc = run_cli("init", "--data-dir", data_dir, "--passphrase-file", pp, check=False)
    assert proc.returncode != 0 and "already holds a kit" in proc.stderr
    assert (data_dir / "keys" / "keyring.json").read_bytes() == before


def test_init_refuses_a_short_passphrase_and_leaves_nothing(tmp_path):
    pp = tmp_path / "pp"
    pp.write_text("short\n")
    proc = run_cli("init", "--data-dir", tmp_path / "k", "--passphrase-file", pp, check=False)
    assert proc.returncode == 2 and "at least" in proc.stderr
    assert not (tmp_path / "k").exists()


def test_serve_answers_over_https_and_a_second_serve_is_refused(kit_server):
    r = kit_server.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True
    # plain HTTP on the HTTPS port gets no page
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"http://127.0.0.1:{kit_server.http_port}/healthz", timeout=5).raise_for_status()
    second = subprocess.run(FIELDKIT + ["serve", "--data-dir", str(kit_server.data_dir), "--http-port", "0",
                                        "--dicom-port", "0"], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "in use by another fieldkit process" in second.stderr
    assert kit_server.get("/healthz").status_code == 200  # the first one is unharmed


def test_status_through_the_running_kit(kit_server):
    out = json.loads(run_cli("status", "--data-dir", kit_server.data_dir, "--json").stdout)
    for key in ("instances", "patients", "findings"):
        assert isinstance(out[key], int)
    for kind in ("infer", "sync"):
        assert set(out["queue"][kind]) == {"ready", "leased", "done", "failed"}


def test_status_without_a_running_kit(data_dir):
    out = json.loads(run_cli("status", "--data-dir", data_dir, "--json").stdout)
    assert out["instances"] == 0 and out["queue"]["infer"]["ready"] == 0


def test_serve_with_wrong_passphrase_exits_with_one_clear_line(data_dir, tmp_path):
    pp = tmp_path / "wrong"
    pp.write_text("this is not the passphrase\n")
    proc = run_cli("serve", "--data-dir", data_dir, "--passphrase-file", pp, check=False)
    assert proc.returncode == 6
    assert proc.stderr.strip() == "error: wrong passphrase"


def test_serve_with_missing_device_key(data_dir):
    (data_dir / "keys" / "device.key").unlink()
    proc = run_cli("serve", "--data-dir", data_dir, check=False)
    assert proc.returncode == 6 and "device key" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_on_a_data_dir_from_a_newer_version(data_dir):
    (data_dir / "FORMAT").write_text('{"format": 99}\n')
    proc = run_cli("serve", "--data-dir", data_dir, check=False)
    assert proc.returncode == 9 and "newer fieldkit" in proc.stderr and "Traceback" not in proc.stderr


def test_passphrase_change_rewraps_without_touching_data(data_dir, tmp_path, passphrase):
    from fieldkit.kit import open_kit

    kit = open_kit(data_dir)
    kit.store.write(lambda db: db.table("patients").insert({"id": "P1"}))
    kit.close()
    journal = (data_dir / "db" / "journal.fkj").read_bytes()
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(passphrase + "\n")
    new.write_text("a brand new passphrase\n")
    run_cli("passphrase", "change", "--data-dir", data_dir, "--old-file", old, "--new-file", new)
    assert (data_dir / "db" / "journal.fkj").read_bytes() == journal
    from fieldkit.errors import KeyUnavailable
    with pytest.raises(KeyUnavailable):
        open_kit(data_dir, passphrase=passphrase)
    kit = open_kit(data_dir, passphrase="a brand new passphrase")
    assert kit.store.read(lambda db: db.table("patients").all())[0]["id"] == "P1"
    kit.close()


def test_make_demo_serves_healthz_over_https(tmp_path):
    demo_dir = tmp_path / "demo-data"
    env = dict(os.environ, CI="")
    proc = subprocess.Popen(["make", "-s", "demo", f"DEMO_DATA={demo_dir}", "DEMO_PORT=0", "DEMO_DICOM_PORT=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        info = None
        while time.monotonic() < deadline and proc.poll() is None:
            run = demo_dir / "run.json"
            if run.exists():
                try:
                    info = json.loads(run.read_text())
                    break
                except ValueError:
                    pass
            time.sleep(0.2)
        assert info, f"make demo did not start a server: {proc.poll()}"
        r = requests.get(f"https://127.0.0.1:{info['http_port']}/healthz", verify=str(demo_dir / "tls" / "ca.pem"),
                         timeout=10)
        assert r.status_code == 200 and r.json()["ok"] is True
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
    assert "serving https://" in out and "passphrase" in out

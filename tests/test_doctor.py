"""`fieldkit doctor`: one line per check, a fix for each failure, non-zero exit on failure.

Every test runs the installed `fieldkit` command on a kit made by `fieldkit init`; only the
battery and temperature sensors are faked (through `power.fake_probe_file`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fieldkit.config import Config, render_toml

FIELDKIT = [str(Path(sys.executable).parent / "fieldkit")]
PASSPHRASE = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FIELDKIT, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def set_config(data_dir: Path, **dotted) -> None:
    path = data_dir / "fieldkit.toml"
    values = Config.load(path).as_dict()
    values.update({k.replace("__", "."): v for k, v in dotted.items()})
    path.write_text(render_toml(values))


@pytest.fixture
def doctor_kit(tmp_path) -> Path:
    """A fresh kit on free ports, with one valid model bundle and sensors faked healthy."""
    data_dir = tmp_path / "kit"
    (tmp_path / "pp").write_text(PASSPHRASE + "\n")
    result = run("init", "--data-dir", data_dir, "--passphrase-file", tmp_path / "pp", "--kit-id", "DOC1")
    assert result.returncode == 0, result.stderr
    set_config(data_dir, http__port=free_port(), dicom__port=free_port(), http__bind="127.0.0.1",
               power__fake_probe_file=str(tmp_path / "power.json"),
               hardware__profiles_dir=str(small_disk_profiles(tmp_path / "profiles")))
    write_power(data_dir, battery_percent=90, on_battery=False, temperature_c=45)
    make_model_bundle(data_dir)
    return data_dir


def small_disk_profiles(folder: Path) -> Path:
    """The shipped hardware profiles, asking 1 GB free instead of 10: the disk check reads
    the real disk this suite runs on, which need not have a deployed kit's headroom."""
    from fieldkit.hardware.profiles import default_profiles_dir
    folder.mkdir()
    for profile in default_profiles_dir().glob("*.toml"):
        text = profile.read_text()
        assert "min_free_gb = " in text, profile.name
        (folder / profile.name).write_text(re.sub(r"min_free_gb = [0-9.]+", "min_free_gb = 1", text))
    return folder


def write_power(data_dir: Path, **values) -> None:
    path = Path(Config.load(data_dir / "fieldkit.toml")["power.fake_probe_file"])
    path.write_text(json.dumps(values))


def make_model_bundle(data_dir: Path) -> Path:
    """A signed bundle in DIR/models, signed by a key the kit is told to trust."""
    from fieldkit.inference import bundle as B
    bundle = data_dir / "models" / "view-gate"
    bundle.mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(256))
    entry = {"name": "view-gate", "version": "1.0.0", "task": "gate", "file": "model.onnx",
             "input": {"shape": [1, 1, 64, 64]}, "preprocessing": {}, "outputs": {"p": "probability"},
             "labels": ["lung"], "thresholds": {}, "intended_views": ["lung"], "model_card": "test"}
    (bundle / B.MANIFEST).write_text(json.dumps(entry))
    key = B.new_private_key()
    B.sign_bundle(bundle, key)
    trusted = Config.load(data_dir / "fieldkit.toml")["inference.trusted_keys"]
    set_config(data_dir, inference__trusted_keys=[*trusted, B.public_key_text(key.public_key())])
    return bundle / "model.onnx"


def doctor(data_dir: Path, *extra) -> tuple[int, dict]:
    result = run("doctor", "--data-dir", data_dir, "--json", "--timeout", 3, *extra)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    return result.returncode, {c["name"]: c for c in report["checks"]}


def failed(checks: dict) -> set[str]:
    return {name for name, c in checks.items() if c["status"] == "fail"}


def test_healthy_kit_exits_zero_with_a_line_per_check(doctor_kit):
    kit = doctor_kit
    result = run("doctor", "--data-dir", kit)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("cpu", "memory", "disk", "clock", "battery", "temperature", "https port",
                 "dicom port", "tls", "models", "hospital", "queue"):
        assert sum(line.split("] ", 1)[-1].startswith(name + ":") for line in lines) == 1, name
    assert "[FAIL]" not in result.stdout
    assert "battery: 90%, on mains" in result.stdout
    assert "model bundle(s) verified" in result.stdout


def test_no_sensors_is_not_a_failure(doctor_kit):
    kit = doctor_kit
    set_config(doctor_kit, power__fake_probe_file="")   # the real probe: this machine has none or real ones
    code, checks = doctor(kit)
    assert checks["battery"]["status"] == "ok" and checks["temperature"]["status"] in ("ok", "warn")
    if "no battery sensor" not in checks["battery"]["message"]:
        assert "%" in checks["battery"]["message"]


def test_low_battery_fails_with_its_own_line(doctor_kit):
    kit = doctor_kit
    write_power(doctor_kit, battery_percent=12, on_battery=True, temperature_c=45)
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"battery"}
    assert "12%" in checks["battery"]["message"] and checks["battery"]["fix"]


def test_high_temperature_fails_with_its_own_line(doctor_kit):
    kit = doctor_kit
    write_power(doctor_kit, battery_percent=90, on_battery=False, temperature_c=91)
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"temperature"}
    assert "91 °C" in checks["temperature"]["message"] and "shade" in checks["temperature"]["fix"]


def test_full_disk_fails(doctor_kit):
    kit = doctor_kit
    write_power(doctor_kit, battery_percent=90, on_battery=False, temperature_c=45,
                disk_free_bytes=200_000_000, disk_total_bytes=128_000_000_000)
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"disk"}
    assert "0.2 GB free" in checks["disk"]["message"]


def _reissue_server_cert(data_dir: Path, not_before: dt.datetime, not_after: dt.datetime,
                         signer_key=None) -> None:
    tls = data_dir / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    from fieldkit.kit import unlock_data_key
    from fieldkit.security.secrets import SecretBox
    if signer_key is None:  # the kit CA's key is sealed by the data key
        signer_key = serialization.load_pem_private_key(
            SecretBox(unlock_data_key(data_dir)).open(tls / "ca.key.sealed"), None)
    ca_key = signer_key
    from fieldkit.security.tls import load_server_key
    key = load_server_key(data_dir, SecretBox(unlock_data_key(data_dir)))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kit")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(ca_key, hashes.SHA256()))
    (tls / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_expired_certificate_fails(doctor_kit):
    kit = doctor_kit
    now = dt.datetime.now(dt.timezone.utc)
    _reissue_server_cert(doctor_kit, now - dt.timedelta(days=400), now - dt.timedelta(days=2))
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"tls"}
    assert "expired" in checks["tls"]["message"]


def test_certificate_expiring_soon_warns(doctor_kit):
    kit = doctor_kit
    now = dt.datetime.now(dt.timezone.utc)
    _reissue_server_cert(doctor_kit, now - dt.timedelta(days=1), now + dt.timedelta(days=10))
    code, checks = doctor(kit)
    assert code == 0 and checks["tls"]["status"] == "warn" and "expires in" in checks["tls"]["message"]


def test_certificate_from_another_ca_fails(doctor_kit):
    kit = doctor_kit
    now = dt.datetime.now(dt.timezone.utc)
    _reissue_server_cert(doctor_kit, now, now + dt.timedelta(days=100), signer_key=ec.generate_private_key(ec.SECP256R1()))
    code, checks = doctor(kit)
    assert code == 1 and "not issued by the kit's CA" in checks["tls"]["message"]


def test_tampered_model_fails(doctor_kit):
    kit = doctor_kit
    onnx = kit / "models" / "view-gate" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"models"}
    assert "view-gate" in checks["models"]["message"] and "SHA-256 mismatch" in checks["models"]["message"]


def test_a_model_signed_by_a_key_the_kit_does_not_list_says_which_key_and_what_to_do(doctor_kit):
    kit = doctor_kit  # its bundle is signed by the key listed last: take that key out
    trusted = Config.load(kit / "fieldkit.toml")["inference.trusted_keys"]
    set_config(kit, inference__trusted_keys=trusted[:-1])
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"models"}
    assert "view-gate" in checks["models"]["message"] and "not in inference.trusted_keys" in checks["models"]["message"]
    assert "add it to inference.trusted_keys" in checks["models"]["fix"]
    assert "reinstall" not in checks["models"]["fix"]


def test_unreachable_hospital_fails(doctor_kit):
    kit = doctor_kit
    set_config(doctor_kit, hospital__url=f"http://127.0.0.1:{free_port()}/dicom-web")
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"hospital"}
    assert "does not answer" in checks["hospital"]["message"]


def test_port_taken_by_another_program_fails(doctor_kit):
    kit = doctor_kit
    port = Config.load(kit / "fieldkit.toml")["dicom.port"]
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", port))
        squatter.listen(1)
        code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"dicom port"}
    assert f"{port} is in use by process {os.getpid()}" in checks["dicom port"]["message"]


def test_clock_behind_the_kits_own_files_fails(doctor_kit):
    kit = doctor_kit
    future = time.time() + 3 * 3600
    os.utime(kit / "fieldkit.toml", (future, future))
    code, checks = doctor(kit)
    assert code == 1 and failed(checks) == {"clock"}
    assert "went backwards" in checks["clock"]["fix"]


def test_queue_backlog_and_oldest_unsent(doctor_kit):
    kit = doctor_kit
    from fieldkit.security.keys import Keyring
    from fieldkit.store import Store
    store = Store.open(doctor_kit, Keyring(kit).unlock_with_device_key(), Config.load(kit / "fieldkit.toml"))
    try:
        store.queue.enqueue("sync", {"what": "image"}, priority=90)
        store.queue.enqueue("sync", {"what": "finding"}, priority=15)
        store.queue.enqueue("infer", {"what": "cine"})
    finally:
        store.close()
    code, checks = doctor(kit)
    assert code == 0
    msg = checks["queue"]["message"]
    assert msg.startswith("2 item(s) waiting to sync, oldest unsent ") and "1 waiting for analysis" in msg


def test_missing_data_dir_is_a_clean_error(tmp_path):
    result = run("doctor", "--data-dir", tmp_path / "nope")
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_running_kit_ports_and_queue_through_the_kit(doctor_kit):
    from kitproc import KitProcess
    server = KitProcess(doctor_kit).start()
    try:
        code, checks = doctor(doctor_kit)
        for name in ("https port", "dicom port"):
            assert checks[name]["status"] == "ok", checks[name]
            assert "in use by the kit" in checks[name]["message"]
        assert str(server.http_port) in checks["https port"]["message"]
        assert checks["queue"]["status"] == "ok" and "waiting to sync" in checks["queue"]["message"]
        assert code == 0
    finally:
        server.stop()


def test_hospital_answers_and_checks_credentials(doctor_kit, tmp_path, need):
    kit = doctor_kit
    from fixtures.orthanc import start_orthanc
    need("Orthanc")
    hospital = start_orthanc(tmp_path / "orthanc", username="kit", password="s3cret-pass")
    try:
        pw = tmp_path / "hospital.pw"
        pw.write_text("s3cret-pass\n")
        r = run("hospital", "set", "--data-dir", kit, "--url", hospital.base_url, "--auth", "basic",
                "--username", "kit", "--password-file", pw)
        assert r.returncode == 0, r.stderr
        code, checks = doctor(kit)
        assert code == 0 and checks["hospital"]["status"] == "ok", checks["hospital"]
        assert "HTTP 200" in checks["hospital"]["message"]
        pw.write_text("wrong\n")
        assert run("hospital", "set", "--data-dir", kit, "--password-file", pw).returncode == 0
        code, checks = doctor(kit)
        assert code == 1 and failed(checks) == {"hospital"}
        assert "refuses the kit's credentials (HTTP 401)" in checks["hospital"]["message"]
        assert "s3cret" not in json.dumps(checks)
    finally:
        hospital.stop()

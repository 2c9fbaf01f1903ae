"""`fieldkit provision --root DIR`: end to end from an answers file, twice, then the kit starts."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fieldkit.provision.systemd import check_unit_keys, verify_unit
from fieldkit.config import Config

REPO = Path(__file__).resolve().parents[1]
FIELDKIT = str(Path(sys.executable).parent / "fieldkit")
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def answers(tmp_path) -> Path:
    """The shipped example answers, with its secret files, pointing at a closed hospital port."""
    work = tmp_path / "answers"
    work.mkdir()
    (work / "kit-passphrase.txt").write_text("correct horse battery staple\n")
    (work / "admin-password.txt").write_text("admin password 123\n")
    (work / "wifi-passphrase.txt").write_text("wifi secret 42\n")
    (work / "hospital-password.txt").write_text("hospital-secret\n")
    text = (REPO / "provisioning" / "answers.example.toml").read_text()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    text = text.replace("https://pacs.hospital.example/dicom-web", f"http://127.0.0.1:{closed}/dicom-web")
    (work / "kit.toml").write_text(text)
    return work / "kit.toml"


def provision(answers: Path, root: Path, *extra) -> subprocess.CompletedProcess:
    args = [FIELDKIT, "provision", "--answers", str(answers), "--root", str(root), "--use-venv", str(VENV), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
    return out


def test_provision_twice_then_the_kit_serves_https(answers, tmp_path, need):
    root = tmp_path / "root"
    root.mkdir()
    first = provision(answers, root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "kit K-0042 provisioned" in first.stdout
    assert "does not answer" in first.stdout or "cannot reach" in first.stdout  # the hospital is down: a warning
    data = root / "var/lib/fieldkit"
    unit = root / "etc/systemd/system/fieldkit.service"
    for rel, mode in [("var/lib/fieldkit", 0o700), ("var/lib/fieldkit/fieldkit.toml", 0o600),
                      ("var/lib/fieldkit/hospital-password", 0o600), ("etc/hostapd/fieldkit.conf", 0o600),
                      ("etc/systemd/system/fieldkit.service", 0o644), ("etc/dnsmasq.d/fieldkit.conf", 0o644),
                      ("etc/chrony/conf.d/fieldkit.conf", 0o644), ("etc/logrotate.d/fieldkit", 0o644),
                      ("usr/lib/sysusers.d/fieldkit.conf", 0o644)]:
        assert stat.S_IMODE((root / rel).stat().st_mode) == mode, rel
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/fieldkit.service") == \
        "/etc/systemd/system/fieldkit.service"
    config = Config.load(data / "fieldkit.toml")
    assert config["kit.id"] == "K-0042" and config["hardware.profile"] == "generic-x86-2c4g"
    assert config["onboarding.kit_url"] == "https://fieldkit.lan:8443/"
    assert config["hospital.auth"] == "basic" and config["hospital.password_file"] == "hospital-password"
    assert "hospital-secret" not in (data / "fieldkit.toml").read_text()
    hostapd = (root / "etc/hostapd/fieldkit.conf").read_text()
    assert "ssid=fieldkit-K-0042" in hostapd and "wpa_passphrase=wifi secret 42" in hostapd
    assert "country_code=KE" in hostapd

    before = snapshot(root)
    second = provision(answers, root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed" in second.stdout
    assert not [ln for ln in second.stdout.splitlines() if ln.strip().startswith(("created", "changed"))]
    assert snapshot(root) == before

    # the unit: our own key check always, systemd's verifier where it is installed
    text = unit.read_text()
    assert check_unit_keys(text) == []
    assert "ReadWritePaths=/var/lib/fieldkit" in text and "SocketBindAllow=tcp:8443" in text
    need("systemd-analyze")
    assert verify_unit(unit, root) == []

    # the provisioned kit starts and answers over HTTPS with its own certificate
    from kitproc import KitProcess
    kit = KitProcess(data).start()
    try:
        response = requests.get(f"https://localhost:{kit.http_port}/healthz",
                                verify=str(data / "tls" / "ca.pem"), timeout=10)
        assert response.status_code == 200 and response.json()["ok"] is True
    finally:
        kit.stop()


def test_provision_fixes_what_drifted(answers, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert provision(answers, root).returncode == 0
    (root / "etc/hostapd/fieldkit.conf").unlink()
    os.chmod(root / "etc/systemd/system/fieldkit.service", 0o666)
    (root / "etc/logrotate.d/fieldkit").write_text("garbage\n")
    again = provision(answers, root)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert any(ln.split() == ["created", "/etc/hostapd/fieldkit.conf"] for ln in lines)
    assert any(ln.split() == ["changed", "/etc/systemd/system/fieldkit.service"] for ln in lines)
    assert any(ln.split() == ["changed", "/etc/logrotate.d/fieldkit"] for ln in lines)
    assert stat.S_IMODE((root / "etc/systemd/system/fieldkit.service").stat().st_mode) == 0o644
    assert "weekly" in (root / "etc/logrotate.d/fieldkit").read_text()
    assert "3 change(s)" in again.stdout


@pytest.mark.parametrize("edit,messages", [
    (lambda t: t.replace('id = "K-0042"', ""), ["kit.id is required"]),
    (lambda t: t.replace("http_port = 8443", 'http_port = "eighty"'), ["service.http_port must be a whole number"]),
    (lambda t: t.replace('id = "K-0042"', 'id = "K 42/../x"').replace('country = "KE"', 'country = "Kenya"'),
     ["kit.id", "network.country must be a two-letter"]),
    (lambda t: t + "\n[extras]\nfoo = 1\n", ["unknown table [extras]"]),
    (lambda t: t.replace('auth = "basic"', 'auth = "kerberos"'), ["hospital.auth must be one of"]),
    (lambda t: t.replace('url = "http', 'url = "ftp'), ["hospital.url must be http(s)"]),
    (lambda t: t.replace('dhcp_start = "10.42.0.10"', 'dhcp_start = "192.168.1.10"'), ["network.dhcp_start"]),
    (lambda t: t.replace("admin-password.txt", "missing.txt"), ["secrets.admin_password_file: file", "does not exist"]),
    (lambda t: t.replace("[kit]", "[kit\n"), ["not valid TOML"]),
])
def test_bad_answers_stop_before_anything_is_written(answers, tmp_path, edit, messages):
    answers.write_text(edit(answers.read_text()))
    root = tmp_path / "root"
    root.mkdir()
    result = provision(answers, root)
    assert result.returncode == 2, result.stdout + result.stderr
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(root.iterdir()) == []


def test_short_passphrase_is_refused_by_policy(answers, tmp_path):
    (answers.parent / "kit-passphrase.txt").write_text("short\n")
    (answers.parent / "wifi-passphrase.txt").write_text("1234567\n")
    root = tmp_path / "root"
    root.mkdir()
    result = provision(answers, root)
    assert result.returncode == 2
    assert "the kit passphrase" in result.stderr and "at least 12" in result.stderr
    assert "Wi-Fi passphrase must be 8 to 63" in result.stderr
    assert list(root.iterdir()) == []


def test_non_root_user_gets_a_clear_stop(answers, tmp_path):
    # The interpreter may live where an unprivileged user cannot read, so the process starts
    # as root, loads the command line, then drops to nobody before provisioning begins.
    script = ("import os, sys; from fieldkit.cli import main; os.setegid(65534); os.seteuid(65534); "
              "main(['provision', '--answers', sys.argv[1]])")
    result = subprocess.run([sys.executable, "-c", script, str(answers)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "run it as root" in result.stderr and "--root DIR" in result.stderr


def test_half_done_run_says_so_and_the_next_run_finishes(answers, tmp_path):
    root = tmp_path / "root"
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/system").write_text("in the way")  # a file where a directory must be
    result = provision(answers, root)
    assert result.returncode == 2
    assert "stopped at step 'systemd unit'" in result.stderr and "NOT ready" in result.stderr
    state = (root / "etc/fieldkit/provisioning.json").read_text()
    assert '"incomplete"' in state and "systemd unit" in state
    (root / "etc/systemd/system").unlink()
    again = provision(answers, root)
    assert again.returncode == 0, again.stderr
    assert "previous run stopped at step 'systemd unit'" in again.stdout
    assert '"complete"' in (root / "etc/fieldkit/provisioning.json").read_text()


def test_refuses_a_data_dir_holding_another_kit(answers, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert provision(answers, root).returncode == 0
    answers.write_text(answers.read_text().replace('id = "K-0042"', 'id = "K-0043"'))
    result = provision(answers, root)
    assert result.returncode == 2
    assert "already holds kit 'K-0042'" in result.stderr


def test_networkmanager_and_timesyncd_variant(answers, tmp_path):
    answers.write_text(answers.read_text().replace('mode = "hostapd"', 'mode = "networkmanager"')
                       .replace('mode = "chrony"', 'mode = "timesyncd"'))
    root = tmp_path / "root"
    root.mkdir()
    result = provision(answers, root)
    assert result.returncode == 0, result.stderr
    nm = root / "etc/NetworkManager/system-connections/fieldkit-ap.nmconnection"
    assert stat.S_IMODE(nm.stat().st_mode) == 0o600
    text = nm.read_text()
    assert "mode=ap" in text and "method=shared" in text and "address1=10.42.0.1/24" in text
    assert "NTP=pool.ntp.org" in (root / "etc/systemd/timesyncd.conf.d/fieldkit.conf").read_text()
    assert not (root / "etc/hostapd").exists()


def test_unit_key_check_catches_missing_hardening():
    text = (REPO / "provisioning/templates/fieldkit.service").read_text()
    good = text.replace("${", "{").format(http_port=8443, dicom_port=11112, user="fieldkit",
                                          data_dir="/var/lib/fieldkit", log_dir="/var/log/fieldkit",
                                          fieldkit_bin="/opt/fieldkit/venv/bin/fieldkit",
                                          device_access="PrivateDevices=yes", dicom_tls_allow="")
    assert check_unit_keys(good) == []
    assert check_unit_keys(good, {8443, 11112}) == []
    assert any("SocketBindAllow" in p for p in check_unit_keys(good, {8443, 11112, 2762}))
    assert "[Service] NoNewPrivileges=yes is missing" in check_unit_keys(good.replace("NoNewPrivileges=yes\n", ""))
    assert any("ReadWritePaths" in p for p in check_unit_keys(good.replace(
        "ReadWritePaths=/var/lib/fieldkit", "ReadWritePaths=/var/lib/fieldkit /etc")))
    assert any("User" in p for p in check_unit_keys(good.replace("User=fieldkit", "User=root")))


def test_key_mode_passphrase_is_provisioned_and_the_tpm_unit_sees_only_the_tpm(answers, tmp_path, need):
    from fieldkit.provision.systemd import DEVICE_ACCESS
    from fieldkit.security.keys import Keyring

    answers.write_text(answers.read_text().replace('key_mode = "device"', 'key_mode = "passphrase"'))
    root = tmp_path / "root"
    root.mkdir()
    result = provision(answers, root)
    assert result.returncode == 0, result.stdout + result.stderr
    data = root / "var/lib/fieldkit"
    assert Keyring(data).mode == "passphrase" and not (data / "keys" / "device.key").exists()
    unit = root / "etc/systemd/system/fieldkit.service"
    assert "PrivateDevices=yes" in unit.read_text()

    tpm_unit = tmp_path / "fieldkit.service"
    tpm_unit.write_text(unit.read_text().replace("PrivateDevices=yes", DEVICE_ACCESS["tpm"]))
    assert check_unit_keys(tpm_unit.read_text()) == []
    assert "DeviceAllow=/dev/tpmrm0 rw" in tpm_unit.read_text()
    need("systemd-analyze")
    assert verify_unit(tpm_unit, root) == []


def test_the_unit_allows_the_dicom_tls_port_when_it_is_set(answers, tmp_path, need):
    root = tmp_path / "root"
    root.mkdir()
    unit = root / "etc/systemd/system/fieldkit.service"
    data = root / "var/lib/fieldkit"
    assert provision(answers, root).returncode == 0
    text = unit.read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("SocketBindAllow=")] == \
        ["SocketBindAllow=tcp:8443", "SocketBindAllow=tcp:11112"]

    # from the answers file
    answers.write_text(answers.read_text().replace("dicom_port = 11112", "dicom_port = 11112\ndicom_tls_port = 2762"))
    again = provision(answers, root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert any(ln.split() == ["changed", "/etc/systemd/system/fieldkit.service"] for ln in again.stdout.splitlines())
    assert Config.load(data / "fieldkit.toml")["dicom.tls_port"] == 2762
    text = unit.read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("SocketBindAllow=")] == \
        ["SocketBindAllow=tcp:8443", "SocketBindAllow=tcp:11112", "SocketBindAllow=tcp:2762"]
    assert check_unit_keys(text, {8443, 11112, 2762}) == []
    need("systemd-analyze")
    assert verify_unit(unit, root, {8443, 11112, 2762}) == []

    # set by hand in fieldkit.toml (answers silent about it): the next run follows it
    answers.write_text(answers.read_text().replace("dicom_tls_port = 2762\n", ""))
    from kitproc import set_config
    set_config(data, dicom__tls_port=11113)
    assert provision(answers, root).returncode == 0
    assert "SocketBindAllow=tcp:11113" in unit.read_text() and "tcp:2762" not in unit.read_text()
    assert verify_unit(unit, root, {8443, 11112, 11113}) == []

    # "any free port" cannot be allowed in advance: a clear stop, and the unit is untouched
    set_config(data, dicom__tls_port=0)
    before = unit.read_text()
    stopped = provision(answers, root)
    assert stopped.returncode == 2 and "dicom.tls_port = 0" in stopped.stderr, stopped.stderr
    assert unit.read_text() == before


@pytest.mark.parametrize("value,message", [
    (0, "service.dicom_tls_port must be between 1 and 65535"),
    (11112, "service.dicom_tls_port must differ"),
])
def test_a_bad_dicom_tls_port_answer_stops_before_anything_is_written(answers, tmp_path, value, message):
    answers.write_text(answers.read_text().replace("dicom_port = 11112", f"dicom_port = 11112\ndicom_tls_port = {value}"))
    root = tmp_path / "root"
    root.mkdir()
    result = provision(answers, root)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(root.iterdir()) == []

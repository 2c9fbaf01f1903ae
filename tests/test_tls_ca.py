"""The kit CA: name-constrained, its key never a plaintext file, `tls renew` from the same CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fieldkit.security.keys import Keyring
from fieldkit.security.secrets import SecretBox
from fieldkit.security.tls import CA_KEY, CA_KEY_SEALED

from keyscan import containing, key_files, public_der
from kitproc import KitProcess, run_cli


def _openssl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)


def _ca_key(data_dir):
    box = SecretBox(Keyring(data_dir).unlock_with_device_key())
    return serialization.load_pem_private_key(box.open(data_dir / "tls" / CA_KEY_SEALED), password=None)


def _server_cert(data_dir) -> x509.Certificate:
    return x509.load_pem_x509_certificates((data_dir / "tls" / "server.pem").read_bytes())[0]


def test_the_ca_is_name_constrained_and_its_key_is_in_no_file(data_dir):
    text = _openssl("x509", "-in", data_dir / "tls" / "ca.pem", "-text", "-noout")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "X509v3 Name Constraints: critical" in out
    permitted = out.split("Permitted:")[1].split("X509v3")[0]
    for entry in ("DNS:localhost", "DNS:fieldkit-TEST1.local", "IP:127.0.0.0/255.0.0.0",
                  "IP:10.42.0.0/255.255.255.0"):
        assert entry in permitted, permitted
    assert "CA:TRUE, pathlen:0" in out
    # the served certificate validates against it with OpenSSL's own constraint checks
    ok = _openssl("verify", "-CAfile", data_dir / "tls" / "ca.pem", data_dir / "tls" / "server.pem")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr

    ca_key = _ca_key(data_dir)  # the data key opens it...
    assert public_der(ca_key) == public_der_of_cert(data_dir / "tls" / "ca.pem")
    assert not (data_dir / "tls" / CA_KEY).exists()
    assert key_files(data_dir) == {}  # ...but no file holds it, nor the server's key (sealed too)
    scalar = ca_key.private_numbers().private_value.to_bytes(32, "big")
    assert containing(data_dir, scalar) == []


def public_der_of_cert(path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_openssl_refuses_a_certificate_the_ca_signs_for_another_site(data_dir, tmp_path):
    """Whoever got the CA key could still not impersonate a hospital site to a tablet."""
    ca_key = _ca_key(data_dir)
    ca = x509.load_pem_x509_certificate((data_dir / "tls" / "ca.pem").read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    for i, san in enumerate([x509.DNSName("pacs.hospital.example"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        path = tmp_path / f"impostor{i}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        r = _openssl("verify", "-CAfile", data_dir / "tls" / "ca.pem", path)
        assert r.returncode != 0 and "permitted subtree violation" in r.stdout + r.stderr, r.stdout + r.stderr


def test_init_takes_the_wifi_subnet(tmp_path):
    from kitproc import init_kit
    data_dir = init_kit(tmp_path / "kit", "--subnet", "192.168.50.0/24")
    out = _openssl("x509", "-in", data_dir / "tls" / "ca.pem", "-text", "-noout").stdout
    assert "IP:192.168.50.0/255.255.255.0" in out and "IP:10.42.0.0/255.255.255.0" not in out
    bad = run_cli("init", "--data-dir", tmp_path / "kit2", "--passphrase-file", tmp_path / ".kit-secrets" / "passphrase",
                  "--subnet", "not-a-subnet", check=False)
    assert bad.returncode == 2 and "not an IP address or subnet" in bad.stderr
    assert not (tmp_path / "kit2").exists()


def test_tls_renew_issues_from_the_same_ca_and_the_kit_serves_it_after_a_restart(data_dir):
    ca_before = (data_dir / "tls" / "ca.pem").read_bytes()
    old = _server_cert(data_dir)
    kit = KitProcess(data_dir).start()
    try:
        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate(("127.0.0.1", kit.http_port)).encode())
        assert served.serial_number == old.serial_number
        r = run_cli("tls", "renew", "--data-dir", data_dir, "--days", "30")
        assert "issued by the same kit CA" in r.stdout and "restart `fieldkit serve`" in r.stdout
        new = _server_cert(data_dir)
        assert new.serial_number != old.serial_number
        assert new.not_valid_after_utc < old.not_valid_after_utc  # 30 days instead of 825
        assert (new.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days in (29, 30)
        assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert (data_dir / "tls" / "ca.pem").read_bytes() == ca_before  # tablets keep trusting it
        ok = _openssl("verify", "-CAfile", data_dir / "tls" / "ca.pem", data_dir / "tls" / "server.pem")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        kit.stop()
        kit.start()
        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate(("127.0.0.1", kit.http_port)).encode())
        assert served.serial_number == new.serial_number
        assert kit.get("/healthz").status_code == 200  # verified against the unchanged ca.pem
        auth = kit.auth("admin")
        shown = kit.get("/api/v1/ui/device", headers=auth).json()["tls"]["server_expires"]
        assert shown == new.not_valid_after_utc.timestamp()  # the device page shows the expiry
    finally:
        kit.stop()
    doctor = run_cli("doctor", "--data-dir", data_dir, "--json", check=False)
    assert "server certificate expires in 29 days" in doctor.stdout or \
        "server certificate expires in 30 days" in doctor.stdout, doctor.stdout[-2000:]


def test_tls_renew_refuses_clearly_without_the_ca_key(data_dir, tmp_path):
    (data_dir / "tls" / CA_KEY_SEALED).unlink()
    r = run_cli("tls", "renew", "--data-dir", data_dir, check=False)
    assert r.returncode == 2 and "kit CA's key" in r.stderr and "Traceback" not in r.stderr
    pp = tmp_path / "pp"
    pp.write_text("wrong passphrase\n")
    r = run_cli("tls", "renew", "--data-dir", data_dir, "--passphrase-file", pp, check=False)
    assert r.returncode == 6 and "wrong passphrase" in r.stderr


def test_a_plaintext_ca_key_from_an_older_kit_is_sealed_at_the_first_open(data_dir):
    from fieldkit.kit import open_kit
    ca_key = _ca_key(data_dir)
    pem = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    (data_dir / "tls" / CA_KEY_SEALED).unlink()
    (data_dir / "tls" / CA_KEY).write_bytes(pem)  # as `init` wrote it before
    assert data_dir / "tls" / CA_KEY in key_files(data_dir)
    open_kit(data_dir).close()
    assert not (data_dir / "tls" / CA_KEY).exists()
    assert key_files(data_dir) == {}
    assert public_der(_ca_key(data_dir)) == public_der(ca_key)
    run_cli("tls", "renew", "--data-dir", data_dir)
    assert _openssl("verify", "-CAfile", data_dir / "tls" / "ca.pem", data_dir / "tls" / "server.pem").returncode == 0


def test_a_plaintext_server_key_from_an_older_kit_is_sealed_at_the_first_open_and_still_served(data_dir):
    """Key mode device: the HTTPS key is sealed by the data key like the CA's; a kit made
    before keeps serving the same key, now sealed, and its plaintext file is gone."""
    from fieldkit.kit import open_kit
    from fieldkit.security.tls import SERVER_KEY, SERVER_KEY_SEALED, load_server_key

    tls = data_dir / "tls"
    key = load_server_key(data_dir, SecretBox(Keyring(data_dir).unlock_with_device_key()))
    (tls / SERVER_KEY_SEALED).unlink()
    (tls / SERVER_KEY).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))  # as `init` wrote it before
    assert list(key_files(data_dir)) == [tls / SERVER_KEY]
    open_kit(data_dir).close()
    assert key_files(data_dir) == {} and not (tls / SERVER_KEY).exists()
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert containing(data_dir, scalar) == []
    kit = KitProcess(data_dir).start()
    try:  # the kit serves the certificate of that same key, from the sealed copy
        served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", kit.http_port)).encode())
        assert served.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo) == public_der(key)
        assert kit.get("/healthz").status_code == 200
    finally:
        kit.stop()
    r = run_cli("tls", "renew", "--data-dir", data_dir)  # a renewed key is sealed too
    assert "issued by the same kit CA" in r.stdout and key_files(data_dir) == {}

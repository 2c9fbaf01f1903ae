"""Hospital credentials: sealed by the data key, checked and audited at `hospital set`,
opened in memory only by the sync client (real Orthanc with Basic auth; a real TLS server
that requires a client certificate)."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings, strategies as st

from fieldkit.errors import BadInput, ConfigError
from fieldkit.security.secrets import is_sealed
from fixtures.orthanc import _require_orthanc, start_orthanc
from fixtures.sync import add_to_store, corpus
from keyscan import containing, files, key_files
from kitproc import run_cli, set_config

PASSWORD = "s3cret-Hospital-pw-77"
TOKEN = "tok-9f8e7d6c5b4a-SECRET"


def _capture_then_sync_once(data_dir, patient_id: str):
    """Four captures of one patient into the (stopped) kit, then `fieldkit sync --once`."""
    from fieldkit.kit import open_kit
    kit = open_kit(data_dir)
    try:
        add_to_store(kit.store, corpus(patient_id), triage="yellow")
    finally:
        kit.close()
    return run_cli("sync", "--once", "--data-dir", data_dir, "--timeout", "60")


def _toml(data_dir) -> str:
    return (data_dir / "fieldkit.toml").read_text()


def _audit_events(data_dir) -> list[dict]:
    return json.loads(run_cli("audit", "export", "--data-dir", data_dir).stdout)["events"]


def test_basic_password_is_sealed_audited_and_sync_still_sends_to_orthanc(data_dir, tmp_path, need):
    need("Orthanc")
    h = start_orthanc(tmp_path / "o", username="kit", password=PASSWORD)
    try:
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD + "\n")
        r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", h.base_url, "--auth", "basic",
                    "--username", "kit", "--password-file", pw, "--window", "00:00-23:59")
        assert PASSWORD not in r.stdout + r.stderr
        assert containing(data_dir, PASSWORD.encode()) == []
        sealed = data_dir / "secrets" / "hospital-password"
        assert is_sealed(sealed) and 'password_file = "secrets/hospital-password"' in _toml(data_dir)
        events = [e for e in _audit_events(data_dir) if e["action"] == "hospital.set"]
        assert len(events) == 1 and events[0]["object"] == h.base_url
        assert "hospital.password_file" in json.dumps(events[0]["detail"]) and PASSWORD not in json.dumps(events)
        assert "hospital OK" in run_cli("hospital", "test", "--data-dir", data_dir).stdout
        out = _capture_then_sync_once(data_dir, "T-0601")
        assert "4 confirmed" in out.stdout and PASSWORD not in out.stdout + out.stderr
        assert h.instance_count() == 4
        doctor = run_cli("doctor", "--data-dir", data_dir, "--json", check=False)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["hospital"]["status"] == "ok", checks["hospital"]
        assert containing(data_dir, PASSWORD.encode()) == []
    finally:
        h.stop()


def test_credentials_in_the_url_are_refused_and_never_echoed(data_dir):
    before = _toml(data_dir)
    r = run_cli("hospital", "set", "--data-dir", data_dir, "--url",
                f"https://kit:{PASSWORD}@pacs.example/dicom-web", check=False)
    assert r.returncode == 2
    assert "must not carry credentials" in r.stderr and "nothing was saved" in r.stderr
    assert PASSWORD not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert _toml(data_dir) == before
    assert containing(data_dir, PASSWORD.encode()) == []


def test_plain_http_outside_loopback_needs_the_flag_and_warns(data_dir):
    before = _toml(data_dir)
    r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", "http://10.9.8.7/dicom-web", check=False)
    assert r.returncode == 2 and "--allow-plain-http" in r.stderr and "unencrypted" in r.stderr
    assert _toml(data_dir) == before
    r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", "http://10.9.8.7/dicom-web", "--allow-plain-http")
    assert "warning: studies and credentials go unencrypted over http:// to 10.9.8.7" in r.stderr
    assert 'url = "http://10.9.8.7/dicom-web"' in _toml(data_dir)
    for local in ("http://127.0.0.1:8042/dicom-web", "http://localhost:8042/dicom-web"):
        r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", local)
        assert "warning" not in r.stderr
    r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", "ftp://pacs.example/", check=False)
    assert r.returncode == 2 and "must start with https://" in r.stderr


def test_auth_fields_are_checked_at_set_time(data_dir, tmp_path):
    before = _toml(data_dir)
    url = ["--url", "https://pacs.example/dicom-web"]
    cases = [
        (["--auth", "basic"], "--auth basic needs --username"),
        (["--auth", "basic", "--username", "kit"], "--auth basic needs --password-file"),
        (["--auth", "bearer"], "--auth bearer needs --token-file"),
        (["--auth", "client-cert"], "--auth client-cert needs --client-cert"),
        (["--auth", "kerberos"], "Invalid value for '--auth'"),
    ]
    for args, message in cases:
        r = run_cli("hospital", "set", "--data-dir", data_dir, *url, *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    junk = tmp_path / "key.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    r = run_cli("hospital", "set", "--data-dir", data_dir, *url, "--client-key", junk, check=False)
    assert r.returncode == 2 and "is not a PEM private key" in r.stderr
    key = ec.generate_private_key(ec.SECP256R1())
    junk.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")))
    r = run_cli("hospital", "set", "--data-dir", data_dir, *url, "--client-key", junk, check=False)
    assert r.returncode == 2 and "is encrypted" in r.stderr
    assert _toml(data_dir) == before
    assert not [e for e in _audit_events(data_dir) if e["action"] == "hospital.set"]


def test_bearer_token_set_through_the_running_kit_is_sealed(kit_server, tmp_path):
    data_dir = kit_server.data_dir
    tok = tmp_path / "tok"
    tok.write_text(TOKEN + "\n")
    r = run_cli("hospital", "set", "--data-dir", data_dir, "--url", "https://pacs.example/dicom-web",
                "--auth", "bearer", "--token-file", tok)
    assert "restart `fieldkit serve` to apply" in r.stdout
    assert is_sealed(data_dir / "secrets" / "hospital-token")
    assert containing(data_dir, TOKEN.encode()) == []
    assert [e["action"] for e in _audit_events(data_dir)].count("hospital.set") == 1


def test_plaintext_secrets_from_an_older_kit_are_sealed_at_the_first_open(data_dir):
    from fieldkit.kit import open_kit
    from fieldkit.sync.hospital import endpoint_from_config
    (data_dir / "secrets").mkdir(mode=0o700)
    (data_dir / "secrets" / "hospital-password").write_text(PASSWORD + "\n")
    (data_dir / "secrets" / "hospital-password").chmod(0o600)
    (data_dir / "hospital-token").write_text(TOKEN + "\n")  # where provisioning wrote them
    (data_dir / "hospital-token").chmod(0o600)
    set_config(data_dir, hospital__url="https://pacs.example/dicom-web", hospital__auth="basic",
               hospital__username="kit", hospital__password_file="secrets/hospital-password",
               hospital__token_file="hospital-token")
    kit = open_kit(data_dir)
    try:
        assert containing(data_dir, PASSWORD.encode()) == [] and containing(data_dir, TOKEN.encode()) == []
        assert is_sealed(data_dir / "secrets" / "hospital-password") and is_sealed(data_dir / "hospital-token")
        assert endpoint_from_config(kit.config, data_dir, kit.store.secrets).password == PASSWORD
    finally:
        kit.close()
    # sealed files do not open without the data key, nor under another name
    with pytest.raises(ConfigError, match="sealed by the data key"):
        endpoint_from_config(kit.config, data_dir, None)
    (data_dir / "secrets" / "hospital-password").rename(data_dir / "secrets" / "other")
    set_config(data_dir, hospital__password_file="secrets/other")
    kit = open_kit(data_dir)
    try:
        with pytest.raises(ConfigError, match="does not open with this kit's data key"):
            endpoint_from_config(kit.config, data_dir, kit.store.secrets)
    finally:
        kit.close()


# ---- client certificate ----------------------------------------------------------------

def _cert(subject: str, key, issuer=None, issuer_key=None, *, ca=False, ip=None):
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_client_key_is_sealed_and_opened_in_memory_for_a_server_that_requires_it(data_dir, tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("hospital CA", ca_key, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = _cert("pacs", srv_key, ca, ca_key, ip="127.0.0.1")
    cli = _cert("kit TEST1", cli_key, ca, ca_key)
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "srv.pem").write_bytes(_pem(srv) + _pem(srv_key))
    combined = tmp_path / "client.pem"  # certificate and key in one file, as PKI tools hand them out
    combined.write_bytes(_pem(cli) + _pem(cli_key))

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.connection.getpeercert()["subject"])
            body = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(tmp_path / "ca.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
        run_cli("hospital", "set", "--data-dir", data_dir, "--url", url, "--auth", "client-cert",
                "--client-cert", combined, "--ca-bundle", tmp_path / "ca.pem")
        scalar = cli_key.private_numbers().private_value.to_bytes(32, "big")
        assert containing(data_dir, scalar) == [] and containing(data_dir, _pem(cli_key)) == []
        assert data_dir / "secrets" / "hospital-client-key" not in key_files(data_dir)
        assert is_sealed(data_dir / "secrets" / "hospital-client-key")
        assert "hospital OK" in run_cli("hospital", "test", "--data-dir", data_dir).stdout
        assert seen and dict(x[0] for x in seen[-1])["commonName"] == "kit TEST1"
        from fieldkit.kit import open_kit
        from fieldkit.sync.client import StowClient
        from fieldkit.sync.hospital import endpoint_from_config
        kit = open_kit(data_dir)  # the first open seals nothing more, and the sync client connects
        try:
            client = StowClient(endpoint_from_config(kit.config, data_dir, kit.store.secrets))
            try:
                client.probe()
            finally:
                client.close()
        finally:
            kit.close()
        assert len(seen) == 2 and not is_sealed(data_dir / "secrets" / "hospital-client.pem")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_erase_leaves_no_private_key_and_no_secret(data_dir, tmp_path):
    pw, tok = tmp_path / "pw", tmp_path / "tok"
    pw.write_text(PASSWORD + "\n")
    tok.write_text(TOKEN + "\n")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "k.pem").write_bytes(_pem(key))
    run_cli("hospital", "set", "--data-dir", data_dir, "--url", "https://pacs.example/dicom-web", "--auth", "basic",
            "--username", "kit", "--password-file", pw, "--token-file", tok, "--client-key", tmp_path / "k.pem")
    assert key_files(data_dir) == {}  # every key sealed, the server's too
    r = run_cli("erase", "--data-dir", data_dir, "--confirm", "TEST1")
    removed = r.stdout.split("removed: ")[1].splitlines()[0].split(", ")
    assert set(removed) == {"keys/keyring.json", "keys/device.key", "tls/ca.key.sealed", "tls/server.key.sealed",
                            "secrets/hospital-password", "secrets/hospital-token", "secrets/hospital-client-key"}
    assert key_files(data_dir) == {}
    names = {p.relative_to(data_dir).as_posix() for p in files(data_dir)}
    assert not any(n.startswith(("keys/", "secrets/")) or n.endswith((".key", ".sealed")) for n in names), names
    for needle in (PASSWORD.encode(), TOKEN.encode(), key.private_numbers().private_value.to_bytes(32, "big")):
        assert containing(data_dir, needle) == []


# ---- fuzz: what `hospital set` parses refuses bad input with BadInput only --------------


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["", "http://", "https://", "https://u:pw@"]), st.booleans())
def test_fuzz_hospital_urls_are_accepted_or_refused_cleanly(tail, head, allow):
    from fieldkit.sync.hospital import check_url
    url = head + tail
    try:
        warning = check_url(url, allow)
    except BadInput as exc:
        if "@" in url and "pw" in url:
            assert "pw@" not in exc.message
        return
    assert warning is None or warning.startswith("warning: ")
    assert "@" not in url.split("//", 1)[-1].split("/", 1)[0].split("?")[0].split("#")[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", b"-----BEGIN PRIVATE KEY-----\n", b"-----BEGIN CERTIFICATE-----\n"]))
def test_fuzz_client_key_and_certificate_files_refuse_cleanly(body, head):
    from fieldkit.cli.sync import _pem_key, _split_client_cert
    for parse in (_pem_key, _split_client_cert):
        try:
            parse(head + body, "f.pem")
        except BadInput:
            pass


def test_hospital_set_keeps_secrets_out_of_the_toml_and_sync_once_sends(data_dir, tmp_path):
    _require_orthanc()
    h = start_orthanc(tmp_path / "o", username="kit", password="s3cret-hospital-pw")
    try:
        pw = tmp_path / "pw"
        pw.write_text("s3cret-hospital-pw\n")
        run_cli("hospital", "set", "--data-dir", data_dir, "--url", h.base_url, "--auth", "basic",
                "--username", "kit", "--password-file", pw, "--window", "00:00-23:59")
        toml = (data_dir / "fieldkit.toml").read_text()
        assert "s3cret" not in toml and 'password_file = "secrets/hospital-password"' in toml
        mode = stat.S_IMODE(os.stat(data_dir / "secrets" / "hospital-password").st_mode)
        assert mode == 0o600
        show = run_cli("hospital", "show", "--data-dir", data_dir).stdout
        assert "s3cret" not in show and h.base_url in show
        assert "hospital OK" in run_cli("hospital", "test", "--data-dir", data_dir).stdout
        out = _capture_then_sync_once(data_dir, "T-0502")
        assert "4 confirmed" in out.stdout and "0 queued" in out.stdout
        assert "s3cret" not in out.stdout + out.stderr
        assert h.instance_count() == 4
        st = run_cli("sync", "status", "--data-dir", data_dir, "--json").stdout
        assert '"confirmed": 4' in st
        # wrong password: clear line, nothing lost, exit code says "not done"
        pw.write_text("wrong\n")
        run_cli("hospital", "set", "--data-dir", data_dir, "--password-file", pw)
        bad = run_cli("hospital", "test", "--data-dir", data_dir, check=False)
        assert bad.returncode != 0 and "credentials" in bad.stderr
    finally:
        h.stop()

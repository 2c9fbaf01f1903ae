"""The kit's own certificate authority and HTTPS server certificate.

Tablets and clients trust `tls/ca.pem` once (onboarding); the server certificate names
the kit's host names and addresses. Keys are EC P-256, files owner-only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"


def _name(common_name: str, kit_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldkit"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kit_id or "kit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_tls(data_dir: Path, kit_id: str, hostnames: list[str] | None = None,
               addresses: list[str] | None = None, days: int = 825) -> Path:
    """Write a CA and a server certificate signed by it under DIR/tls. Returns the CA path."""
    tls = Path(data_dir) / TLS_DIR
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"fieldkit CA {kit_id}".strip(), kit_id)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = ["localhost", socket.gethostname(), f"fieldkit-{kit_id}.local" if kit_id else "fieldkit.local"]
    names += hostnames or []
    ips = ["127.0.0.1", "::1", "10.42.0.1"] + (addresses or [])
    sans = [x509.DNSName(n) for n in dict.fromkeys(names) if n]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(names[2], kit_id)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem_key = dict(encoding=serialization.Encoding.PEM, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    write_atomic(tls / CA_KEY, ca_key.private_bytes(**pem_key), 0o600)
    write_atomic(tls / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    write_atomic(tls / SERVER_KEY, key.private_bytes(**pem_key), 0o600)
    write_atomic(tls / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM)
           + ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return tls / CA_CERT


def ca_fingerprint(data_dir: Path) -> str:
    """SHA-256 fingerprint of the CA certificate, as tablets show it (AA:BB:…)."""
    cert = x509.load_pem_x509_certificate((Path(data_dir) / TLS_DIR / CA_CERT).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))

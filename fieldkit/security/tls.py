"""The kit's own certificate authority and HTTPS server certificate.

Tablets and clients trust `tls/ca.pem` once (onboarding); the server certificate names
the kit's host names and addresses. The CA is name-constrained (critical) to the kit's
own host names, its loopback and Wi-Fi subnets, so even its key could not vouch for
another site to an onboarded tablet; and that key is never a plaintext file: it is kept
sealed by the data key (`ca.key.sealed`, see security/secrets.py) and opened only to
issue a server certificate (`fieldkit init`, `fieldkit tls renew`). The server's own key
is sealed the same way (`server.key.sealed`) where the kit opens its data key unattended
(key modes `tpm`, `device`) and handed to TLS as an in-memory file; a kit in key mode
`passphrase` keeps it as a plaintext file, because it serves its unlock page before anyone
has given the passphrase. Keys are EC P-256.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import ssl

from ..errors import ConfigError
from .files import write_atomic
from .secrets import MemoryFile, SecretBox, is_sealed, shred


# TLS 1.2 with forward secrecy and AEAD only (no CBC, no static RSA); TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def harden_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 or 1.3, AEAD suites only, no renegotiation (a handshake per request is a cheap
    DoS). For every listener the kit has: HTTPS and DICOM over TLS."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.pem", "ca.key"  # ca.key: the plaintext file of kits made before sealing
CA_KEY_SEALED = "ca.key.sealed"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"  # server.key: key mode passphrase (and older kits)
SERVER_KEY_SEALED = "server.key.sealed"
CA_DAYS = 3650
SERVER_DAYS = 825  # the most a browser accepts for a server certificate
WIFI_SUBNET = "10.42.0.0/24"  # the kit's access point (provisioning's default address 10.42.0.1)
LOOPBACK = ("127.0.0.0/8", "::1/128")


def _name(common_name: str, kit_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldkit"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kit_id or "kit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _own_name(kit_id: str) -> str:
    return f"fieldkit-{kit_id}.local" if kit_id else "fieldkit.local"


def _kit_names(kit_id: str, hostnames: list[str] | None) -> list[str]:
    names = ["localhost", socket.gethostname(), _own_name(kit_id)]
    return [n for n in dict.fromkeys(names + list(hostnames or [])) if n]


def _networks(values) -> list:
    try:
        return [ipaddress.ip_network(v, strict=False) for v in dict.fromkeys(values)]
    except ValueError as exc:
        raise ConfigError(f"not an IP address or subnet: {exc}") from None


def _pem_key(key) -> bytes:
    return key.private_bytes(encoding=serialization.Encoding.PEM, format=serialization.PrivateFormat.PKCS8,
                             encryption_algorithm=serialization.NoEncryption())


def create_tls(data_dir: Path, kit_id: str, data_key: bytes, hostnames: list[str] | None = None,
               addresses: list[str] | None = None, subnets: list[str] | None = None,
               days: int = SERVER_DAYS, seal_server_key: bool = True) -> Path:
    """Write a name-constrained CA (its key sealed by `data_key`) and a server certificate
    signed by it under DIR/tls; the server key sealed too unless `seal_server_key` is False
    (key mode passphrase). Returns the CA certificate's path."""
    tls = Path(data_dir) / TLS_DIR
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    names = _kit_names(kit_id, hostnames)
    ips = ["127.0.0.1", "::1", "10.42.0.1"] + list(addresses or [])
    permitted_nets = _networks(list(LOOPBACK) + list(subnets or [WIFI_SUBNET]))
    for net in _networks(ips):  # an address outside those subnets is permitted on its own
        if not any(net.version == n.version and net.subnet_of(n) for n in permitted_nets):
            permitted_nets.append(net)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"fieldkit CA {kit_id}".strip(), kit_id)
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(n) for n in names] + [x509.IPAddress(n) for n in permitted_nets],
        excluded_subtrees=None)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(constraints, critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    SecretBox(data_key).seal(tls / CA_KEY_SEALED, _pem_key(ca_key))
    write_atomic(tls / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    sans = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ips)]
    _issue_server(tls, ca, ca_key, sans, _name(_own_name(kit_id), kit_id), days,
                  SecretBox(data_key) if seal_server_key else None)
    return tls / CA_CERT


def _issue_server(tls: Path, ca: x509.Certificate, ca_key, sans: list, subject: x509.Name,
                  days: int, box: SecretBox | None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    # key first: a power cut between the two writes leaves a mismatch `doctor` names, never
    # a certificate whose key is gone
    if box is not None:
        box.seal(tls / SERVER_KEY_SEALED, _pem_key(key))
        shred(tls / SERVER_KEY)
    else:
        write_atomic(tls / SERVER_KEY, _pem_key(key), 0o600)
    write_atomic(tls / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM)
                 + ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def _open_ca_key(tls: Path, data_key: bytes):
    path = tls / CA_KEY_SEALED
    if not path.exists():
        raise ConfigError(f"the kit CA's key ({path}) is missing: the server certificate cannot be "
                          "re-issued from the same CA (a new kit CA means onboarding every tablet again)")
    return serialization.load_pem_private_key(SecretBox(data_key).open(path), password=None)


def renew_server(data_dir: Path, data_key: bytes, days: int = SERVER_DAYS) -> x509.Certificate:
    """A new server key and certificate from the same CA (so onboarded tablets keep trusting
    the kit), for the same names and addresses as the current one. The new key is kept as
    the old one was: sealed, or a plaintext file in key mode passphrase."""
    tls = Path(data_dir) / TLS_DIR
    try:
        ca = x509.load_pem_x509_certificate((tls / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{tls / CA_CERT} is missing: this data dir has no kit CA") from None
    ca_key = _open_ca_key(tls, data_key)
    if ca_key.public_key().public_numbers() != ca.public_key().public_numbers():
        raise ConfigError(f"{tls / CA_KEY_SEALED} does not belong to {tls / CA_CERT}")
    try:
        current = x509.load_pem_x509_certificates((tls / SERVER_CERT).read_bytes())[0]
        sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        subject = current.subject
    except (FileNotFoundError, ValueError, x509.ExtensionNotFound):
        ou = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        kit_id = ou[0].value if ou else ""
        names = _kit_names(kit_id, None)
        sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a))
                                                   for a in ("127.0.0.1", "::1", "10.42.0.1")]
        subject = _name(_own_name(kit_id), kit_id)
    box = None if (tls / SERVER_KEY).exists() and not (tls / SERVER_KEY_SEALED).exists() else SecretBox(data_key)
    return _issue_server(tls, ca, ca_key, sans, subject, days, box)


def seal_plain_ca_key(data_dir: Path, data_key: bytes) -> bool:
    """A kit made before the CA key was sealed: seal it, and overwrite and remove the
    plaintext file. Returns True when it did so."""
    tls = Path(data_dir) / TLS_DIR
    plain = tls / CA_KEY
    if not plain.exists():
        return False
    if not (tls / CA_KEY_SEALED).exists():
        key = serialization.load_pem_private_key(plain.read_bytes(), password=None)
        SecretBox(data_key).seal(tls / CA_KEY_SEALED, _pem_key(key))
    shred(plain)
    return True


def seal_plain_server_key(data_dir: Path, data_key: bytes) -> bool:
    """A kit that opens its data key unattended but still has a plaintext server key (made
    before it was sealed): seal it, and overwrite and remove the plaintext file."""
    tls = Path(data_dir) / TLS_DIR
    plain = tls / SERVER_KEY
    if not plain.exists() or is_sealed(plain):
        return False
    if not (tls / SERVER_KEY_SEALED).exists():
        SecretBox(data_key).seal(tls / SERVER_KEY_SEALED, plain.read_bytes())
    shred(plain)
    return True


@contextlib.contextmanager
def server_key_path(data_dir: Path, box: SecretBox | None):
    """A path TLS can load the server key from (`load_cert_chain` reads it at once): the
    sealed key opened into an in-memory file (closed on leaving), else the plaintext file."""
    tls = Path(data_dir) / TLS_DIR
    if not (tls / SERVER_KEY_SEALED).exists():
        yield str(tls / SERVER_KEY)
        return
    if box is None:
        raise ConfigError(f"{tls / SERVER_KEY_SEALED} is sealed by the data key, which this kit does not "
                          "hold yet: unlock it first")
    memory = MemoryFile(box.open(tls / SERVER_KEY_SEALED))
    try:
        yield memory.path
    finally:
        memory.close()


def load_server_key(data_dir: Path, box: SecretBox | None):
    """The server's private key (for checks such as doctor's)."""
    with server_key_path(data_dir, box) as path, open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def private_key_files(data_dir: Path) -> list[Path]:
    """Every file of DIR/tls that holds a private key (sealed or not), for `erase`."""
    tls = Path(data_dir) / TLS_DIR
    return [tls / CA_KEY, tls / CA_KEY_SEALED, tls / SERVER_KEY, tls / SERVER_KEY_SEALED]


def server_expiry(data_dir: Path) -> dt.datetime | None:
    """When the server certificate expires (None if there is none)."""
    try:
        cert = x509.load_pem_x509_certificates((Path(data_dir) / TLS_DIR / SERVER_CERT).read_bytes())[0]
    except (FileNotFoundError, ValueError):
        return None
    return cert.not_valid_after_utc


def ca_fingerprint(data_dir: Path) -> str:
    """SHA-256 fingerprint of the CA certificate, as tablets show it (AA:BB:…)."""
    cert = x509.load_pem_x509_certificate((Path(data_dir) / TLS_DIR / CA_CERT).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))

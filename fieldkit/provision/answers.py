"""The answers file of `fieldkit provision`: its schema (`Answers`), parsed and checked
in full before anything is touched; every problem is reported at once."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import SETTINGS, is_ip, read_toml
from . import ProvisionError


KIT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


@dataclass
class Answers:
    kit_id: str
    profile: str = "generic-x86-2c4g"
    kit_name: str = "fieldkit.lan"
    passphrase_file: Path | None = None
    admin_user: str = ""
    admin_password_file: Path | None = None
    hospital_url: str = ""
    hospital_auth: str = "none"
    hospital_username: str = ""
    hospital_password_file: Path | None = None
    hospital_token_file: Path | None = None
    hospital_ca_bundle: Path | None = None
    user: str = "fieldkit"
    data_dir: str = "/var/lib/fieldkit"
    install_dir: str = "/opt/fieldkit"
    http_port: int = 8443
    dicom_port: int = 11112
    dicom_tls_port: int | None = None  # None: keep dicom.tls_port as fieldkit.toml has it
    network_mode: str = "hostapd"
    interface: str = "wlan0"
    ssid: str = ""
    wpa_passphrase_file: Path | None = None
    country: str = ""
    channel: int = 6
    address: str = "10.42.0.1"
    prefix: int = 24
    dhcp_start: str = "10.42.0.10"
    dhcp_end: str = "10.42.0.250"
    time_mode: str = "chrony"
    time_servers: list[str] = field(default_factory=lambda: ["pool.ntp.org"])
    key_mode: str = "device"


# (table.key, attribute, kind, required). kind: str, int, path, list, or a tuple of choices.
FIELDS: list[tuple[str, str, Any, bool]] = [
    ("kit.id", "kit_id", str, True),
    ("kit.profile", "profile", str, False),
    ("kit.name", "kit_name", str, False),
    ("secrets.passphrase_file", "passphrase_file", "path", True),
    ("secrets.admin_user", "admin_user", str, False),
    ("secrets.admin_password_file", "admin_password_file", "path", False),
    ("hospital.url", "hospital_url", str, False),
    ("hospital.auth", "hospital_auth", ("none", "basic", "bearer", "client-cert"), False),
    ("hospital.username", "hospital_username", str, False),
    ("hospital.password_file", "hospital_password_file", "path", False),
    ("hospital.token_file", "hospital_token_file", "path", False),
    ("hospital.ca_bundle", "hospital_ca_bundle", "path", False),
    ("service.user", "user", str, False),
    ("service.data_dir", "data_dir", str, False),
    ("service.install_dir", "install_dir", str, False),
    ("service.http_port", "http_port", int, False),
    ("service.dicom_port", "dicom_port", int, False),
    ("service.dicom_tls_port", "dicom_tls_port", int, False),
    ("network.mode", "network_mode", ("hostapd", "networkmanager", "none"), False),
    ("network.interface", "interface", str, False),
    ("network.ssid", "ssid", str, False),
    ("network.wpa_passphrase_file", "wpa_passphrase_file", "path", False),
    ("network.country", "country", str, False),
    ("network.channel", "channel", int, False),
    ("network.address", "address", str, False),
    ("network.prefix", "prefix", int, False),
    ("network.dhcp_start", "dhcp_start", str, False),
    ("network.dhcp_end", "dhcp_end", str, False),
    ("time.mode", "time_mode", ("chrony", "timesyncd", "none"), False),
    ("time.servers", "time_servers", "list", False),
    ("security.key_mode", "key_mode", ("tpm", "passphrase", "device"), False),
]


def parse_answers(raw: dict, base_dir: Path) -> Answers:
    """Answers from a parsed TOML document. Every problem is collected and reported at
    once, so an operator preparing a batch fixes the file in one go."""
    problems: list[str] = []
    known = {name.split(".")[0]: set() for name, *_ in FIELDS}
    for name, *_ in FIELDS:
        table, key = name.split(".")
        known[table].add(key)
    for table, value in raw.items():
        if table not in known:
            problems.append(f"unknown table [{table}] (known: {', '.join(sorted(known))})")
        elif not isinstance(value, dict):
            problems.append(f"{table} must be a table ([{table}])")
        else:
            problems += [f"unknown field {table}.{k}" for k in value if k not in known[table]]
    values: dict[str, Any] = {}
    for name, attr, kind, required in FIELDS:
        table, key = name.split(".")
        section = raw.get(table) if isinstance(raw.get(table), dict) else {}
        if key not in section or section[key] in ("", None):
            if required:
                problems.append(f"{name} is required")
            continue
        value = section[key]
        if kind is str and not isinstance(value, str):
            problems.append(f"{name} must be text, got {value!r}")
        elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{name} must be a whole number, got {value!r}")
        elif kind == "list" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            problems.append(f"{name} must be a list of text, got {value!r}")
        elif kind == "path":
            if not isinstance(value, str):
                problems.append(f"{name} must be a file path, got {value!r}")
            else:
                path = Path(value) if Path(value).is_absolute() else base_dir / value
                if not path.is_file():
                    problems.append(f"{name}: file {path} does not exist")
                values[attr] = path
                continue
        elif isinstance(kind, tuple) and value not in kind:
            problems.append(f"{name} must be one of {', '.join(kind)}, got {value!r}")
        values[attr] = value
    if problems:
        raise ProvisionError("the answers file has problems:\n  - " + "\n  - ".join(problems))
    answers = Answers(**values)
    validate(answers)
    return answers


def validate(a: Answers) -> None:
    """Checks that need more than one field, or the contents of secret files."""
    problems: list[str] = []
    if not KIT_ID_RE.match(a.kit_id):
        problems.append(f"kit.id {a.kit_id!r} may hold letters, digits, '-', '_' and '.', at most 32 characters")
    if not HOST_RE.match(a.kit_name):
        problems.append(f"kit.name {a.kit_name!r} is not a valid host name")
    if not USER_RE.match(a.user):
        problems.append(f"service.user {a.user!r} is not a valid user name")
    for name, value in (("service.data_dir", a.data_dir), ("service.install_dir", a.install_dir)):
        if not value.startswith("/") or ".." in Path(value).parts or value.rstrip("/") in ("", "/usr", "/etc", "/var"):
            problems.append(f"{name} must be an absolute path of its own, got {value!r}")
    for name, port in (("service.http_port", a.http_port), ("service.dicom_port", a.dicom_port)):
        if not 1 <= port <= 65535:
            problems.append(f"{name} must be between 1 and 65535, got {port}")
    if a.http_port == a.dicom_port:
        problems.append("service.http_port and service.dicom_port must differ")
    if a.dicom_tls_port is not None:
        if not (a.dicom_tls_port == -1 or 1 <= a.dicom_tls_port <= 65535):
            problems.append(f"service.dicom_tls_port must be between 1 and 65535 (or -1 for none), "
                            f"got {a.dicom_tls_port}: the unit allows only the ports it names")
        elif a.dicom_tls_port in (a.http_port, a.dicom_port):
            problems.append("service.dicom_tls_port must differ from service.http_port and service.dicom_port")
    minimum = SETTINGS["security.passphrase_min_length"].default
    passphrase = _secret(a.passphrase_file, "secrets.passphrase_file", problems)
    if passphrase is not None and len(passphrase) < minimum:
        problems.append(f"the kit passphrase in {a.passphrase_file} is {len(passphrase)} characters; "
                        f"the policy asks for at least {minimum}")
    if bool(a.admin_user) != bool(a.admin_password_file):
        problems.append("secrets.admin_user and secrets.admin_password_file go together")
    elif a.admin_password_file:
        _secret(a.admin_password_file, "secrets.admin_password_file", problems)
    if a.hospital_url:
        parts = urlsplit(a.hospital_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"hospital.url must be http(s)://host[:port]/path, got {a.hospital_url!r}")
        elif parts.username or parts.password:
            problems.append("hospital.url must not carry credentials; use hospital.username and password_file")
        need = {"basic": ("hospital_password_file", "hospital.password_file"),
                "bearer": ("hospital_token_file", "hospital.token_file")}.get(a.hospital_auth)
        if need and getattr(a, need[0]) is None:
            problems.append(f"hospital.auth = {a.hospital_auth!r} needs {need[1]}")
        if a.hospital_auth == "basic" and not a.hospital_username:
            problems.append("hospital.auth = 'basic' needs hospital.username")
        if a.hospital_auth == "client-cert":
            problems.append("hospital.auth = 'client-cert': install the certificate by hand and set "
                            "hospital.client_cert in fieldkit.toml (provisioning does not copy private keys)")
    if a.network_mode != "none":
        if not IFACE_RE.match(a.interface):
            problems.append(f"network.interface {a.interface!r} is not an interface name")
        if not a.ssid or len(a.ssid.encode()) > 32:
            problems.append("network.ssid is required (1 to 32 bytes) when network.mode is not 'none'")
        if a.wpa_passphrase_file is None:
            problems.append("network.wpa_passphrase_file is required when network.mode is not 'none'")
        else:
            psk = _secret(a.wpa_passphrase_file, "network.wpa_passphrase_file", problems)
            if psk is not None and not (8 <= len(psk) <= 63 and psk.isprintable()):
                problems.append("the Wi-Fi passphrase must be 8 to 63 printable characters")
        if not re.fullmatch(r"[A-Z]{2}", a.country or ""):
            problems.append("network.country must be a two-letter country code (e.g. KE): it sets legal channels and power")
        if not 1 <= a.channel <= 13:
            problems.append(f"network.channel must be a 2.4 GHz channel 1-13, got {a.channel}")
        try:
            net = ipaddress.ip_network(f"{a.address}/{a.prefix}", strict=False)
            addr = ipaddress.ip_address(a.address)
            lo, hi = ipaddress.ip_address(a.dhcp_start), ipaddress.ip_address(a.dhcp_end)
            if not (lo in net and hi in net and lo <= hi) or lo <= addr <= hi:
                problems.append(f"network.dhcp_start..dhcp_end must lie in {net} and not include {addr}")
        except ValueError as exc:
            problems.append(f"network addresses: {exc}")
    if a.time_mode != "none" and not all(HOST_RE.match(s) or is_ip(s) for s in a.time_servers):
        problems.append(f"time.servers must be host names or addresses, got {a.time_servers!r}")
    if problems:
        raise ProvisionError("the answers file has problems:\n  - " + "\n  - ".join(problems))


def _secret(path: Path | None, name: str, problems: list[str]) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{name}: cannot read {path} ({exc})")
        return None
    if not text or not text[0]:
        problems.append(f"{name}: {path} is empty")
        return None
    return text[0]


def load_answers(path: Path) -> Answers:
    return parse_answers(read_toml(path, "answers file", error=ProvisionError), Path(path).resolve().parent)

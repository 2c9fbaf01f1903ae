"""`fieldkit provision`: turn a Debian box into a kit, or fix one that drifted.

Reads an answers file (or asks), checks every answer before touching anything, then runs
a fixed list of steps. Each step compares what is on disk with what should be there and
writes only the difference, so running it again changes nothing that is right and fixes
what is not. `--root DIR` writes everything under DIR instead of `/` (how the tests run it)
and does nothing that needs a live system (no accounts, no systemctl).

A run that stops half-way leaves `etc/fieldkit/provisioning.json` saying which step failed
and why; the next run says so and finishes the job.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import click

from .. import __version__, fsio
from ..config import SETTINGS, Config, is_ip, render_toml
from ..errors import ConfigError, FieldkitError
from ..security.files import write_atomic

TEMPLATES = Path("provisioning") / "templates"
LOCK_FILE = Path("provisioning") / "requirements.lock"
STATE_FILE = "etc/fieldkit/provisioning.json"
KIT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class ProvisionError(FieldkitError):
    exit_code = 2


# -- answers ----------------------------------------------------------------------------

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
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvisionError(f"answers file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"answers file {path} is not valid TOML: {exc}") from None
    return parse_answers(raw, Path(path).resolve().parent)


# -- the provisioner ---------------------------------------------------------------------

@dataclass
class Step:
    name: str
    outcome: str   # unchanged | created | changed | skipped | warning
    detail: str = ""


class Provisioner:
    def __init__(self, answers: Answers, root: Path, source: Path, use_venv: Path | None = None,
                 wheelhouse: Path | None = None, echo: Callable[[str], None] = print):
        self.a = answers
        self.root = Path(root).resolve()
        self.live = self.root == Path("/")
        self.source = Path(source).resolve()
        self.use_venv = Path(use_venv).resolve() if use_venv else None
        self.wheelhouse = wheelhouse
        self.echo = echo
        self.steps: list[Step] = []

    # paths: "target" paths are what the box sees; "host" paths are where we write them.
    def host(self, target: str | Path) -> Path:
        return self.root / str(target).lstrip("/")

    @property
    def venv(self) -> Path:
        """The venv as the target box sees it."""
        return self.use_venv if self.use_venv else Path(self.a.install_dir) / "venv"

    @property
    def fieldkit_bin(self) -> Path:
        return self.venv / "bin" / "fieldkit"

    @property
    def log_dir(self) -> str:
        return "/var/log/fieldkit"

    @property
    def data_dir(self) -> Path:
        return self.host(self.a.data_dir)

    def record(self, name: str, outcome: str, detail: str = "") -> None:
        step = Step(name, outcome, detail)
        self.steps.append(step)
        self.echo(f"  {outcome:9} {name}" + (f": {detail}" if detail else ""))

    # -- entry point ----------------------------------------------------------------------
    def run(self) -> list[Step]:
        state_path = self.host(STATE_FILE)
        previous = _read_json(state_path)
        if previous.get("state") == "incomplete":
            self.echo(f"note: the previous run stopped at step '{previous.get('step')}' "
                      f"({previous.get('error', 'no reason recorded')}); finishing it now")
        steps = [
            ("service account", self.step_user),
            ("python environment", self.step_venv),
            ("kit data", self.step_init),
            ("kit settings", self.step_config),
            ("data dir permissions", self.step_permissions),
            ("systemd unit", self.step_unit),
            ("log rotation", self.step_logs),
            ("wi-fi access point", self.step_network),
            ("time sync", self.step_time),
            ("enable services", self.step_enable),
        ]
        for name, fn in steps:
            self._write_state(state_path, {"state": "incomplete", "step": name, "kit_id": self.a.kit_id})
            try:
                fn()
            except FieldkitError as exc:
                self._write_state(state_path, {"state": "incomplete", "step": name, "error": exc.message,
                                               "kit_id": self.a.kit_id})
                raise ProvisionError(
                    f"provisioning stopped at step '{name}': {exc.message}\n"
                    f"The kit is NOT ready. Steps before this one are done and are kept; fix the cause "
                    f"and run the same command again to finish.") from None
            except (OSError, subprocess.SubprocessError) as exc:
                self._write_state(state_path, {"state": "incomplete", "step": name, "error": str(exc),
                                               "kit_id": self.a.kit_id})
                raise ProvisionError(
                    f"provisioning stopped at step '{name}': {exc}\n"
                    f"The kit is NOT ready. Fix the cause and run the same command again to finish.") from None
        changed = [s for s in self.steps if s.outcome in ("created", "changed")]
        summary = {"state": "complete", "kit_id": self.a.kit_id, "fieldkit_version": __version__,
                   "data_dir": self.a.data_dir, "venv": str(self.venv),
                   "http_port": self.a.http_port, "dicom_port": self.a.dicom_port,
                   "network": self.a.network_mode, "time": self.a.time_mode}
        # the summary changes only when the kit's shape does, so a re-run leaves it alone
        if _read_json(state_path) != summary or previous != summary:
            self._write_state(state_path, summary)
        return changed

    def _write_state(self, path: Path, doc: dict) -> None:
        fsio.makedirs(path.parent)
        if _read_json(path) != doc:
            write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)

    # -- steps ----------------------------------------------------------------------------
    def step_user(self) -> None:
        content = self.render("sysusers.conf", user=self.a.user, data_dir=self.a.data_dir)
        self.write("/usr/lib/sysusers.d/fieldkit.conf", content, 0o644)
        if not self.live:
            self.record("account " + self.a.user, "skipped", "--root mode creates no accounts")
            return
        try:
            pwd.getpwnam(self.a.user)
            self.record("account " + self.a.user, "unchanged")
        except KeyError:
            self.run_cmd(["useradd", "--system", "--user-group", "--home-dir", self.a.data_dir,
                          "--no-create-home", "--shell", "/usr/sbin/nologin", self.a.user])
            self.record("account " + self.a.user, "created")

    def step_venv(self) -> None:
        if self.use_venv:
            if not (self.use_venv / "bin" / "fieldkit").exists():
                raise ProvisionError(f"--use-venv {self.use_venv} has no bin/fieldkit")
            self.record("python environment", "unchanged", f"using {self.use_venv}")
            return
        venv = self.host(self.venv)
        python = venv / "bin" / "python"
        if not python.exists():
            venv.parent.mkdir(parents=True, exist_ok=True)
            self.run_cmd([sys.executable, "-m", "venv", str(venv)])
            outcome = "created"
        else:
            outcome = "unchanged"
        want = _source_version(self.source)
        have = subprocess.run([str(python), "-c", "import fieldkit; print(fieldkit.__version__)"],
                              capture_output=True, text=True).stdout.strip()
        if have != want:
            for cmd in pip_install_commands(python, self.source, self.wheelhouse):
                self.run_cmd(cmd)
            outcome = "changed" if outcome == "unchanged" else outcome
        self.record("python environment", outcome, f"fieldkit {want} in {self.venv}")
        # hardware profiles travel with the installed package (profiles.default_profiles_dir)
        for profile in sorted((self.source / "hardware").glob("*.toml")):
            self.write(str(self.venv / "share" / "fieldkit" / "hardware" / profile.name),
                       profile.read_text(encoding="utf-8"), 0o644, quiet=True)

    def step_init(self) -> None:
        config_file = self.data_dir / "fieldkit.toml"
        if config_file.exists():
            try:
                kit_id = Config.load(config_file)["kit.id"]
            except ConfigError as exc:
                raise ProvisionError(f"{config_file} is unreadable ({exc}); it holds a kit, so provisioning "
                                     "will not overwrite it: repair or move it by hand") from None
            if kit_id != self.a.kit_id:
                raise ProvisionError(f"{self.a.data_dir} already holds kit {kit_id!r}, but the answers are for "
                                     f"{self.a.kit_id!r}; refusing to touch another kit's data")
            if not (self.data_dir / "keys" / "keyring.json").exists():
                raise ProvisionError(f"{self.a.data_dir} holds a config but no keys (an interrupted init?); "
                                     "move the data dir away and run again")
            self.record("kit data", "unchanged", f"kit {kit_id} in {self.a.data_dir}")
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ProvisionError(f"{self.a.data_dir} is not empty but holds no kit; refusing to mix; move it away")
        if self.data_dir.exists():
            self.data_dir.rmdir()  # init creates it, and removes it again if it fails
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.host_fieldkit()), "init", "--data-dir", str(self.data_dir),
               "--passphrase-file", str(self.a.passphrase_file), "--kit-id", self.a.kit_id,
               "--hostname", self.a.kit_name, "--key-mode", self.a.key_mode,
               "--subnet", str(ipaddress.ip_network(f"{self.a.address}/{self.a.prefix}", strict=False))]
        if self.a.admin_user:
            cmd += ["--admin-user", self.a.admin_user, "--admin-password-file", str(self.a.admin_password_file)]
        self.run_cmd(cmd)
        self.record("kit data", "created", f"kit {self.a.kit_id} in {self.a.data_dir}")

    def host_fieldkit(self) -> Path:
        return self.fieldkit_bin if self.use_venv else self.host(self.fieldkit_bin)

    def step_config(self) -> None:
        path = self.data_dir / "fieldkit.toml"
        values = Config.load(path).as_dict()
        want = dict(values)
        want.update({"hardware.profile": self.a.profile, "http.port": self.a.http_port,
                     "dicom.port": self.a.dicom_port})
        if self.a.dicom_tls_port is not None:
            want["dicom.tls_port"] = self.a.dicom_tls_port
        if self.a.network_mode != "none":
            want["http.bind"] = "0.0.0.0"
            want["onboarding.kit_url"] = f"https://{self.a.kit_name}:{self.a.http_port}/"
        if self.a.hospital_url:
            want["hospital.url"] = self.a.hospital_url
            want["hospital.auth"] = self.a.hospital_auth
            want["hospital.username"] = self.a.hospital_username
            for attr, setting, name in (("hospital_password_file", "hospital.password_file", "hospital-password"),
                                        ("hospital_token_file", "hospital.token_file", "hospital-token"),
                                        ("hospital_ca_bundle", "hospital.ca_bundle", "hospital-ca.pem")):
                src = getattr(self.a, attr)
                if src is not None:
                    mode = 0o644 if name.endswith(".pem") else 0o600
                    self.write(str(Path(self.a.data_dir) / name), src.read_text(encoding="utf-8"), mode, quiet=True)
                    want[setting] = name  # relative: resolved under the data dir
            self._check_hospital()
        want = {k: v for k, v in want.items() if k in SETTINGS}
        Config(want)  # validates every value before writing
        self.write(str(Path(self.a.data_dir) / "fieldkit.toml"), render_toml(want), 0o600)

    def _check_hospital(self) -> None:
        from ..sync.link import probe
        up, reason = probe(self.a.hospital_url, timeout=3.0)
        if not up:
            self.record("hospital link", "warning", f"{reason}; the kit will keep studies and send them "
                        "when the hospital answers (check with `fieldkit doctor`)")
        else:
            self.record("hospital link", "unchanged", "the hospital answers")

    def step_permissions(self) -> None:
        changed = False
        if self.data_dir.stat().st_mode & 0o777 != 0o700:
            os.chmod(self.data_dir, 0o700)
            changed = True
        if self.live:
            uid, gid = pwd.getpwnam(self.a.user).pw_uid, grp.getgrnam(self.a.user).gr_gid
            for dirpath, dirnames, filenames in os.walk(self.data_dir):
                for p in [dirpath, *(os.path.join(dirpath, f) for f in filenames + dirnames)]:
                    st = os.lstat(p)
                    if (st.st_uid, st.st_gid) != (uid, gid):
                        os.lchown(p, uid, gid)
                        changed = True
        self.record("data dir permissions", "changed" if changed else "unchanged",
                    f"{self.a.data_dir} owner-only" + ("" if self.live else " (owner not set in --root mode)"))

    def step_unit(self) -> None:
        # The unit denies binding any port it does not name: the DICOM TLS port is named when
        # the kit's settings turn it on (from the answers, or set by hand in fieldkit.toml).
        tls_port = Config.load(self.data_dir / "fieldkit.toml")["dicom.tls_port"]
        if tls_port == 0:
            raise ProvisionError("dicom.tls_port = 0 (any free port) cannot be allowed by the unit; "
                                 "set service.dicom_tls_port in the answers (or -1 for none)")
        ports = {self.a.http_port, self.a.dicom_port} | ({tls_port} if tls_port > 0 else set())
        tls_allow = (f"SocketBindAllow=tcp:{tls_port}" if tls_port > 0
                     else "# no DICOM TLS port (dicom.tls_port = -1)")
        unit = self.render("fieldkit.service", user=self.a.user, data_dir=self.a.data_dir,
                           fieldkit_bin=str(self.fieldkit_bin), log_dir=self.log_dir,
                           http_port=self.a.http_port, dicom_port=self.a.dicom_port,
                           device_access=DEVICE_ACCESS[self.a.key_mode], dicom_tls_allow=tls_allow)
        path = "/etc/systemd/system/fieldkit.service"
        self.write(path, unit, 0o644)
        problems = verify_unit(self.host(path), self.root, ports)
        if problems:
            raise ProvisionError("the generated unit does not verify: " + "; ".join(problems))

    def step_logs(self) -> None:
        log_dir = self.host(self.log_dir)
        if not log_dir.is_dir():
            log_dir.mkdir(parents=True, mode=0o750)
            self.record(self.log_dir, "created")
        self.write("/etc/logrotate.d/fieldkit", self.render("logrotate", log_dir=self.log_dir), 0o644)

    def network_values(self) -> dict[str, Any]:
        net = ipaddress.ip_network(f"{self.a.address}/{self.a.prefix}", strict=False)
        psk = self.a.wpa_passphrase_file.read_text(encoding="utf-8").splitlines()[0]
        return {"interface": self.a.interface, "ssid": self.a.ssid, "country": self.a.country,
                "channel": self.a.channel, "wpa_passphrase": psk, "address": self.a.address,
                "prefix": self.a.prefix, "netmask": str(net.netmask), "subnet": str(net),
                "dhcp_start": self.a.dhcp_start, "dhcp_end": self.a.dhcp_end, "kit_name": self.a.kit_name}

    def step_network(self) -> None:
        files = {
            "hostapd": [("hostapd.conf", "/etc/hostapd/fieldkit.conf", 0o600),
                        ("dnsmasq.conf", "/etc/dnsmasq.d/fieldkit.conf", 0o644),
                        ("interface.network", "/etc/systemd/network/10-fieldkit-ap.network", 0o644)],
            "networkmanager": [("fieldkit-ap.nmconnection",
                                "/etc/NetworkManager/system-connections/fieldkit-ap.nmconnection", 0o600)],
        }
        if self.a.network_mode == "none":
            self.record("wi-fi access point", "skipped", "network.mode = none")
            return
        values = self.network_values()
        for template, target, mode in files[self.a.network_mode]:
            self.write(target, self.render(template, **values), mode)
        if self.a.network_mode == "hostapd":
            # Debian's hostapd unit reads DAEMON_CONF from here
            self.write("/etc/default/hostapd", 'DAEMON_CONF="/etc/hostapd/fieldkit.conf"\n', 0o644)

    def step_time(self) -> None:
        if self.a.time_mode == "none":
            self.record("time sync", "skipped", "time.mode = none")
            return
        if self.a.time_mode == "chrony":
            subnet = str(ipaddress.ip_network(f"{self.a.address}/{self.a.prefix}", strict=False))
            lines = "\n".join(f"pool {s} iburst" for s in self.a.time_servers)
            self.write("/etc/chrony/conf.d/fieldkit.conf",
                       self.render("chrony.conf", server_lines=lines, subnet=subnet), 0o644)
        else:
            self.write("/etc/systemd/timesyncd.conf.d/fieldkit.conf",
                       self.render("timesyncd.conf", servers=" ".join(self.a.time_servers)), 0o644)

    def step_enable(self) -> None:
        units = ["fieldkit.service"]
        if self.a.network_mode == "hostapd":
            units += ["hostapd.service", "dnsmasq.service", "systemd-networkd.service"]
        if self.a.time_mode == "chrony":
            units.append("chrony.service")
        elif self.a.time_mode == "timesyncd":
            units.append("systemd-timesyncd.service")
        if self.live:
            changed = any(s.outcome in ("created", "changed") for s in self.steps)
            self.run_cmd(["systemctl", "daemon-reload"])
            if "hostapd.service" in units:
                self.run_cmd(["systemctl", "unmask", "hostapd.service"])  # Debian ships it masked
            self.run_cmd(["systemctl", "enable", *units])
            if changed:
                self.run_cmd(["systemctl", "restart", *units])
            self.record("services", "changed" if changed else "unchanged", ", ".join(units) + " enabled and running")
            return
        # --root: what `systemctl --root enable` does for the kit's own unit
        link = self.host("/etc/systemd/system/multi-user.target.wants/fieldkit.service")
        target = "/etc/systemd/system/fieldkit.service"
        if link.is_symlink() and os.readlink(link) == target:
            self.record("enable fieldkit.service", "unchanged")
        else:
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
            self.record("enable fieldkit.service", "created")

    # -- helpers --------------------------------------------------------------------------
    def render(self, template: str, **values: Any) -> str:
        text = (self.source / TEMPLATES / template).read_text(encoding="utf-8")
        try:
            return string.Template(text).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise ProvisionError(f"template {template} needs a value for {exc}") from None

    def write(self, target: str, content: str, mode: int, quiet: bool = False) -> str:
        """Write a file only when its content or mode differ; report what happened."""
        path = self.host(target)
        data = content.encode("utf-8")
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = None
        if current != data:
            outcome = "created" if current is None else "changed"
            fsio.makedirs(path.parent)
            write_atomic(path, data, mode)
        elif path.stat().st_mode & 0o7777 != mode:
            os.chmod(path, mode)
            outcome = "changed"
        else:
            outcome = "unchanged"
        if not quiet or outcome != "unchanged":
            self.record(target, outcome)
        return outcome

    def run_cmd(self, cmd: list[str]) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ProvisionError(f"`{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''}` failed: " + " / ".join(tail))


def pip_install_commands(python: Path, source: Path, wheelhouse: Path | None) -> list[list[str]]:
    """Install the locked dependencies (pinned, every file's hash checked), then fieldkit
    itself without resolving anything again, so the box gets exactly the tested versions."""
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if wheelhouse:
        pip += ["--no-index", "--find-links", str(wheelhouse)]
    return [pip + ["--require-hashes", "-r", str(Path(source) / LOCK_FILE)],
            pip + ["--upgrade", "--no-deps", str(source)]]


def verify_unit(path: Path, root: Path = Path("/"), ports: set[int] | None = None) -> list[str]:
    """Problems with a unit file: `systemd-analyze verify` where it is installed, and always
    our own check that the hardening the kit relies on is present (and, given `ports`, that
    exactly those may be bound)."""
    text = path.read_text(encoding="utf-8")
    problems = check_unit_keys(text, ports)
    tool = shutil.which("systemd-analyze")
    if tool:
        # In --root mode the unit's paths are the target's: verify a copy whose absolute
        # paths point into the root, so the executable check is meaningful.
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            if Path(root) != Path("/"):
                text = _rebase_exec(text, Path(root))
            copy.write_text(text, encoding="utf-8")
            result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        noise = ("Failed to connect", "Failed to create ", "/dev/", "not found")  # a container without systemd
        lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
        serious = [ln for ln in lines if not any(n in ln for n in noise)]
        if result.returncode != 0 or serious:
            problems += serious or [f"systemd-analyze verify exited {result.returncode}"]
    return problems


# The unit's device lines per key mode: a kit whose device key is sealed to the TPM sees
# the kernel's TPM resource manager (group tss) and no other device.
DEVICE_ACCESS = {
    "tpm": "PrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=/dev/tpmrm0 rw\nSupplementaryGroups=tss",
    "passphrase": "PrivateDevices=yes",
    "device": "PrivateDevices=yes",
}


REQUIRED_UNIT_KEYS = {
    "Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "SocketBindDeny": "any",
}


def check_unit_keys(text: str, ports: set[int] | None = None) -> list[str]:
    """Parse the unit (systemd's ini dialect) and check sections, keys and hardening; with
    `ports`, that SocketBindAllow= names exactly those TCP ports."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    problems = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            problems.append(f"line {n}: not a 'Key=value' line inside a section: {raw!r}")
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    service = sections.get("Service", {})
    for key, want in REQUIRED_UNIT_KEYS.items():
        if want not in service.get(key, []):
            problems.append(f"[Service] {key}={want} is missing")
    if set(sections) - {"Unit", "Service", "Install"}:
        problems.append(f"unexpected sections {sorted(set(sections) - {'Unit', 'Service', 'Install'})}")
    exec_start = service.get("ExecStart", [""])[0]
    if not exec_start.startswith("/"):
        problems.append("[Service] ExecStart must be an absolute path")
    rw = service.get("ReadWritePaths", [])
    if len(rw) != 1 or len(rw[0].split()) != 1:
        problems.append("[Service] ReadWritePaths must name the data dir only")
    allowed = service.get("SocketBindAllow", [])
    if ports is not None and sorted(allowed) != sorted(f"tcp:{p}" for p in ports):
        problems.append(f"[Service] SocketBindAllow must list exactly the kit's ports {sorted(ports)}, "
                        f"not {allowed}")
    elif len(allowed) not in (2, 3):
        problems.append("[Service] SocketBindAllow must list the HTTPS and DICOM ports (and the DICOM TLS port)")
    if not sections.get("Install", {}).get("WantedBy"):
        problems.append("[Install] WantedBy is missing (the kit would not start at boot)")
    if service.get("User", ["root"])[0] == "root":
        problems.append("[Service] User must be the kit's own account, not root")
    return problems


def _rebase_exec(text: str, root: Path) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("ExecStart=") and line[len("ExecStart="):].startswith("/"):
            exe, _, rest = line[len("ExecStart="):].partition(" ")
            rebased = root / exe.lstrip("/")
            if rebased.exists() or not Path(exe).exists():
                exe = str(rebased)
            line = f"ExecStart={exe} {rest}".rstrip()
        out.append(line)
    return "\n".join(out) + "\n"


def _source_version(source: Path) -> str:
    text = (source / "fieldkit" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not match:
        raise ProvisionError(f"{source} does not look like a fieldkit source tree")
    return match.group(1)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def default_source() -> Path | None:
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / TEMPLATES).is_dir() else None


# -- interactive answers -----------------------------------------------------------------

def ask_answers(workdir: Path) -> Answers:
    """Ask for the answers at the terminal; secrets go to owner-only files in `workdir`
    (a private temporary directory removed after provisioning)."""
    def secret(name: str, prompt: str) -> Path:
        value = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
        path = workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return path

    raw: dict[str, dict[str, Any]] = {"kit": {}, "secrets": {}, "hospital": {}, "network": {}, "time": {},
                                      "security": {}}
    raw["kit"]["id"] = click.prompt("Kit ID (letters, digits, '-')")
    raw["kit"]["profile"] = click.prompt("Hardware profile", default="generic-x86-2c4g")
    raw["secrets"]["passphrase_file"] = str(secret("passphrase", "Kit passphrase"))
    raw["security"]["key_mode"] = click.prompt(
        "Key mode (tpm: sealed to this box's TPM; passphrase: an admin unlocks after each boot; "
        "device: a key file, a stolen disk opens)", type=click.Choice(["tpm", "passphrase", "device"]),
        default="tpm" if Path("/dev/tpmrm0").exists() else "device")
    admin = click.prompt("First admin account name", default="admin")
    raw["secrets"]["admin_user"] = admin
    raw["secrets"]["admin_password_file"] = str(secret("admin", f"Password for {admin}"))
    url = click.prompt("Hospital DICOMweb URL (empty: none yet)", default="", show_default=False)
    if url:
        raw["hospital"]["url"] = url
        auth = click.prompt("Hospital authentication", type=click.Choice(["none", "basic", "bearer"]), default="basic")
        raw["hospital"]["auth"] = auth
        if auth == "basic":
            raw["hospital"]["username"] = click.prompt("Hospital user name")
            raw["hospital"]["password_file"] = str(secret("hospital", "Hospital password"))
        elif auth == "bearer":
            raw["hospital"]["token_file"] = str(secret("token", "Hospital token"))
    mode = click.prompt("Wi-Fi access point", type=click.Choice(["hostapd", "networkmanager", "none"]), default="hostapd")
    raw["network"]["mode"] = mode
    if mode != "none":
        raw["network"]["interface"] = click.prompt("Wi-Fi interface", default="wlan0")
        raw["network"]["ssid"] = click.prompt("Network name (SSID)", default=f"fieldkit-{raw['kit']['id']}")
        raw["network"]["wpa_passphrase_file"] = str(secret("wifi", "Wi-Fi passphrase (8-63 characters)"))
        raw["network"]["country"] = click.prompt("Country code (e.g. KE)").upper()
    return parse_answers({k: v for k, v in raw.items() if v}, workdir)


# -- the command -------------------------------------------------------------------------

@click.command("provision")
@click.option("--answers", type=click.Path(dir_okay=False, path_type=Path),
              help="Answers file (see provisioning/answers.example.toml); without it, questions are asked.")
@click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, help="Write everything under this directory instead of / (no accounts, no systemctl).")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path),
              help="The fieldkit source tree to install and take templates from (default: this checkout).")
@click.option("--use-venv", type=click.Path(file_okay=False, path_type=Path),
              help="Use this existing Python environment (with fieldkit installed) instead of creating one.")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path),
              help="Install from these wheels only (offline batches).")
@click.option("--check", "check_only", is_flag=True, help="Only validate the answers; change nothing.")
def provision(answers: Path | None, root: Path, source: Path | None, use_venv: Path | None,
              wheelhouse: Path | None, check_only: bool) -> None:
    """Turn this Debian box (or --root DIR) into a kit; safe to run again."""
    root = Path(root)
    live = root.resolve() == Path("/")
    if live and os.geteuid() != 0 and not check_only:
        raise ProvisionError("provisioning changes the system (accounts, services, /etc): run it as root "
                             "(sudo), or use --root DIR to write into a directory instead")
    if not live and not root.is_dir():
        raise ProvisionError(f"--root {root} does not exist; create it first")
    source = source or default_source()
    if source is None or not (Path(source) / TEMPLATES).is_dir():
        raise ProvisionError("cannot find the fieldkit source tree (provisioning/templates); pass --source")
    with tempfile.TemporaryDirectory(prefix="fieldkit-provision-") as tmp:
        parsed = load_answers(answers) if answers else ask_answers(Path(tmp))
        if check_only:
            click.echo(f"answers for kit {parsed.kit_id} are valid")
            return
        click.echo(f"provisioning kit {parsed.kit_id} into {root}")
        started = time.monotonic()
        provisioner = Provisioner(parsed, root, Path(source), use_venv, wheelhouse, echo=click.echo)
        changed = provisioner.run()
    took = time.monotonic() - started
    if changed:
        click.echo(f"kit {parsed.kit_id} provisioned: {len(changed)} change(s) in {took:.1f} s")
    else:
        click.echo(f"kit {parsed.kit_id} provisioned: nothing changed, everything was already right ({took:.1f} s)")
    warnings = [s for s in provisioner.steps if s.outcome == "warning"]
    for w in warnings:
        click.echo(f"warning: {w.name}: {w.detail}")
    click.echo(f"next: check it with `fieldkit doctor --data-dir {parsed.data_dir}`; onboard tablets at "
               f"https://{parsed.kit_name}:{parsed.http_port}/onboarding")


COMMANDS = [provision]

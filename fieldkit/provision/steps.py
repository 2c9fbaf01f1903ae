"""The steps of `fieldkit provision`: each compares what is on disk with what should be
there and writes only the difference, so running it again changes nothing that is right
and fixes what is not. `root` other than / writes everything under it and does nothing
that needs a live system (no accounts, no systemctl).

A run that stops half-way leaves STATE_FILE saying which step failed and why; the next
run says so and finishes the job."""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__, fsio
from ..config import CONFIG_FILE, SETTINGS, Config, render_toml
from ..errors import ConfigError, FieldkitError
from ..security.files import write_atomic
from . import ProvisionError
from .answers import Answers
from .systemd import DEVICE_ACCESS, verify_unit


TEMPLATES = Path("provisioning") / "templates"
LOCK_FILE = Path("provisioning") / "requirements.lock"
STATE_FILE = "etc/fieldkit/provisioning.json"


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
        config_file = self.data_dir / CONFIG_FILE
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
        path = self.data_dir / CONFIG_FILE
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
        self.write(str(Path(self.a.data_dir) / CONFIG_FILE), render_toml(want), 0o600)

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
        tls_port = Config.load(self.data_dir / CONFIG_FILE)["dicom.tls_port"]
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

"""Start, stop and kill real `fieldkit` processes for tests (importable from any test)."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

PASSPHRASE = "test passphrase for the kit"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin password 123"
PEOPLE = ("clinician", "triage", "admin")  # roles that sign in (fieldkit.security.roles.HUMAN_ROLES)
FIELDKIT = [sys.executable, "-m", "fieldkit"]


def readable(fileobj, timeout: float) -> bool:
    """True when a pipe or socket has something to read (or was closed) within `timeout`.

    A selector, not select.select: in a long test process descriptor numbers pass 1024,
    which select.select refuses."""
    with selectors.DefaultSelector() as sel:
        sel.register(fileobj, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def open_files(under: Path | str | None = None) -> list[str]:
    """What this process holds open (the targets of its descriptors), only those under a
    folder when one is given."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if under is None or target.startswith(str(under)):
            out.append(target)
    return out


def run_cli(*args, check: bool = True, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(FIELDKIT + [str(a) for a in args], capture_output=True, text=True,
                          input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fieldkit {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def init_kit(data_dir: Path, *extra, admin: bool = True) -> Path:
    secrets = data_dir.parent / f".{data_dir.name}-secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "passphrase").write_text(PASSPHRASE + "\n")
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    args = ["init", "--data-dir", data_dir, "--passphrase-file", secrets / "passphrase",
            "--kit-id", "TEST1", "--demo"]
    if admin and _have_accounts():
        args += ["--admin-user", ADMIN_USER, "--admin-password-file", secrets / "admin"]
    run_cli(*args, *extra)
    return data_dir


def _have_accounts() -> bool:
    import importlib.util
    return importlib.util.find_spec("fieldkit.store.accounts") is not None


class KitProcess:
    """`fieldkit serve` as a child process on loopback with random ports."""

    def __init__(self, data_dir: Path, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-serve.log"
        self._sessions: dict[str, dict] = {}  # role -> headers of a signed-in session (this run)

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.info['http_port']}"

    @property
    def http_port(self) -> int:
        return self.info["http_port"]

    @property
    def dicom_port(self) -> int | None:
        return self.info.get("dicom_port")

    def start(self, timeout: float = 60.0, *extra) -> "KitProcess":
        run_file = self.data_dir / "run.json"
        run_file.unlink(missing_ok=True)
        self._sessions.clear()  # sessions live in the kit's memory only
        env = dict(os.environ, **(self.env or {}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(FIELDKIT + ["serve", "--data-dir", str(self.data_dir), "--bind", "127.0.0.1",
                                                 "--http-port", "0", "--dicom-port", "0", *extra],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fieldkit serve exited {self.proc.returncode}:\n{self.log()}")
            if run_file.exists():
                try:
                    self.info = json.loads(run_file.read_text())
                except ValueError:
                    time.sleep(0.05)
                    continue
                if self.info.get("pid") == self.proc.pid:
                    return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"fieldkit serve did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, verify=self.ca, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, verify=self.ca, timeout=kw.pop("timeout", 30), **kw)

    def token(self, role: str = "probe") -> str:
        """A bearer token for a machine role (people sign in: see `auth`)."""
        if role in PEOPLE:
            raise AssertionError(f"{role!r} is a person's role: tokens are for machines; use auth({role!r})")
        out = run_cli("token", "create", "--data-dir", self.data_dir, "--role", role).stdout
        return out.strip().splitlines()[-1].strip()

    def auth(self, role: str = "admin", again: bool = False) -> dict:
        """Request headers that authenticate as `role`: a bearer token for a machine role,
        else a signed-in session of an account with that role (cookie and CSRF token).
        `again`: sign in anew (a lock signs everybody out)."""
        if role not in PEOPLE:
            return {"Authorization": f"Bearer {self.token(role)}"}
        if role in self._sessions and not again:
            return dict(self._sessions[role])
        user, secret = f"test-{role}", f"test secret for {role}"
        secret_file = self.data_dir.parent / f".{self.data_dir.name}-{user}"
        secret_file.write_text(secret + "\n")
        run_cli("users", "add", user, "--role", role, "--password-file", secret_file, "--data-dir", self.data_dir,
                check=False)  # made once per data dir (a restarted kit keeps it)
        s = requests.Session()
        page = s.get(self.url + "/login", verify=self.ca, timeout=30)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = s.post(self.url + "/login", json={"username": user, "password": secret},
                   headers={"X-CSRF-Token": csrf}, verify=self.ca, timeout=30)
        assert r.status_code == 200, f"sign-in as {user} failed: {r.status_code} {r.text}"
        session = s.get(self.url + "/api/v1/session", verify=self.ca, timeout=30).json()
        self._sessions[role] = {"Cookie": f"__Host-fk_session={s.cookies.get('__Host-fk_session')}",
                                "X-CSRF-Token": session["csrf_token"]}
        return dict(self._sessions[role])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def set_config(data_dir: Path, **dotted) -> None:
    """Change settings in DIR/fieldkit.toml (keys use '__' for '.'), as an operator would."""
    from fieldkit.config import Config, render_toml

    path = Path(data_dir) / "fieldkit.toml"
    values = Config.load(path).as_dict()
    values.update({k.replace("__", "."): v for k, v in dotted.items()})
    path.write_text(render_toml(values))


def wait_until(cond, timeout: float, step: float = 0.1) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass (bounded); its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def dataset_bytes(ds) -> bytes:
    """A pydicom Dataset as the Part-10 bytes a probe would send."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

"""The systemd unit the kit runs as, checked: `systemd-analyze verify` where installed, and
always the hardening the kit relies on (and, given the ports, exactly those may be bound)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


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

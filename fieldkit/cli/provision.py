"""`fieldkit provision`: turn a Debian box into a kit, or fix one that drifted.

Reads an answers file (or asks), checks every answer before touching anything, then runs
the steps of fieldkit/provision (`--root DIR` writes everything under DIR instead of `/`,
how the tests run it). The answers schema, the steps and the unit checks live there."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ..provision.answers import Answers, load_answers, parse_answers
from ..provision import ProvisionError
from ..provision.steps import TEMPLATES, Provisioner, default_source


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

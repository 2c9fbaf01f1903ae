"""`fieldkit init`, `serve`, `status` and `passphrase change`."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import click

from .. import config as config_mod, fsio
from ..errors import BadInput, ConfigError
from ..kit import CONFIG_FILE, open_kit, serve as run_server, setup_logging
from ..kit.control import run_op
from ..security.files import write_atomic
from ..security.keys import KEY_MODES, Keyring
from ..security.tpm import sealer_for
from ..security.tls import ca_fingerprint, create_tls
from ..store import Store, write_format

DATA_DIR = click.option("--data-dir", "data_dir", required=True, type=click.Path(path_type=Path),
                        help="The kit's data directory.")


def read_secret_file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read the {what} file {path}: {exc.strerror}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise BadInput(f"the {what} file {path} is empty")
    return secret


def _check_passphrase(passphrase: str, minimum: int) -> None:
    if len(passphrase) < minimum:
        raise BadInput(f"the kit passphrase must be at least {minimum} characters "
                       f"(setting security.passphrase_min_length)")


@click.command()
@DATA_DIR
@click.option("--passphrase-file", type=click.Path(path_type=Path), help="File holding the kit passphrase (else asked).")
@click.option("--kit-id", help="Kit identifier (default: a random K-xxxxxx).")
@click.option("--admin-user", help="Name of the first admin account.")
@click.option("--admin-password-file", type=click.Path(path_type=Path), help="File holding the first admin's password.")
@click.option("--demo", is_flag=True, help="Demo kit: accept DICOM from any AE title, bind to loopback.")
@click.option("--hostname", "hostnames", multiple=True, help="Extra host name for the HTTPS certificate.")
@click.option("--subnet", "subnets", multiple=True,
              help="The kit's Wi-Fi subnet, e.g. 10.42.0.0/24 (repeatable): the kit CA may vouch only for "
                   "addresses in it, loopback and its own host names.")
@click.option("--key-mode", type=click.Choice(KEY_MODES), default="device", show_default=True,
              help="How the kit restarts: tpm (device key sealed to this box's TPM 2.0), passphrase (starts "
                   "locked until an admin unlocks it), device (key file on the disk: protects nothing if "
                   "the disk is stolen).")
@click.option("--tpm-tcti", help="How to reach the TPM for --key-mode tpm (setting security.tpm_tcti).")
def init(data_dir: Path, passphrase_file, kit_id, admin_user, admin_password_file, demo, hostnames, subnets,
         key_mode, tpm_tcti):
    """Create a new kit: config, wrapped data key, device key, TLS CA and certificate."""
    if (data_dir / CONFIG_FILE).exists() or (data_dir / "keys").exists():
        raise ConfigError(f"{data_dir} already holds a kit; refusing to overwrite it")
    if bool(admin_user) != bool(admin_password_file):
        raise BadInput("--admin-user and --admin-password-file go together")
    min_len = config_mod.SETTINGS["security.passphrase_min_length"].default
    passphrase = read_secret_file(passphrase_file, "passphrase")
    if passphrase is None:
        passphrase = click.prompt("Kit passphrase", hide_input=True, confirmation_prompt=True)
    _check_passphrase(passphrase, min_len)
    admin_password = read_secret_file(admin_password_file, "admin password")
    kit_id = kit_id or f"K-{uuid.uuid4().hex[:6].upper()}"
    if not all(c.isalnum() or c in "-_." for c in kit_id) or len(kit_id) > 32:
        raise BadInput("--kit-id may hold letters, digits, '-', '_' and '.', at most 32 characters")

    created = not data_dir.exists()
    try:
        fsio.makedirs(data_dir, 0o700)
        values = {"kit.id": kit_id}
        if demo:
            values.update({"dicom.allow_any_ae": True, "http.bind": "127.0.0.1", "dicom.bind": "127.0.0.1"})
        if tpm_tcti:
            values["security.tpm_tcti"] = tpm_tcti
        write_atomic(data_dir / CONFIG_FILE, config_mod.render_toml(values).encode())
        cfg = config_mod.Config.load(data_dir / CONFIG_FILE)
        write_format(data_dir)
        sealer = sealer_for(cfg) if key_mode == "tpm" else None
        data_key = Keyring(data_dir, sealer=sealer).create(passphrase, scrypt_n=cfg["security.scrypt_n"],
                                                           mode=key_mode)
        ca = create_tls(data_dir, kit_id, data_key, hostnames=list(hostnames), subnets=list(subnets) or None,
                        seal_server_key=key_mode != "passphrase")  # passphrase: the unlock page needs it
        store = Store.open(data_dir, data_key, cfg)
        try:
            if admin_user:
                from ..store.accounts import create_user
                create_user(store, admin_user, admin_password, "admin")
        finally:
            store.close()
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    click.echo(f"kit {kit_id} created in {data_dir}")
    click.echo({"tpm": "key mode tpm: the device key is sealed to this box's TPM; the kit restarts unattended",
                "passphrase": "key mode passphrase: `fieldkit serve` starts locked until an admin unlocks it",
                "device": "key mode device: the kit restarts unattended, and a stolen disk opens fully"}[key_mode])
    click.echo(f"tablets and clients trust {ca} (SHA-256 {ca_fingerprint(data_dir)})")
    if not admin_user:
        click.echo("no account yet: add one with `fieldkit users add`")


@click.command()
@DATA_DIR
@click.option("--bind", help="Address HTTPS and DICOM listen on (default from config http.bind and dicom.bind).")
@click.option("--http-port", type=int, help="HTTPS port (default from config; 0 picks a free one).")
@click.option("--dicom-port", type=int, help="DICOM port (default from config; 0 picks a free one).")
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="Unlock with the passphrase instead of the device key.")
def serve(data_dir: Path, bind, http_port, dicom_port, passphrase_file):
    """Run the kit: HTTPS, DICOM receiver, inference and sync, in one process."""
    setup_logging()
    kit = open_kit(data_dir, passphrase=read_secret_file(passphrase_file, "passphrase"), allow_locked=True)
    run_server(kit, bind=bind, http_port=http_port, dicom_port=dicom_port)


@click.command()
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /api/v1/status).")
def status(data_dir: Path, as_json: bool):
    """Counts of patients, instances, findings and queue rows."""
    result = run_op(data_dir, "status", {})
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"kit {result.get('kit_id')}  version {result.get('version')}")
    for key in ("patients", "instances", "findings"):
        if key in result:
            click.echo(f"{key:10} {result[key]}")
    for kind, counts in result.get("queue", {}).items():
        click.echo(f"queue {kind:5} " + "  ".join(f"{s} {n}" for s, n in counts.items()))
    disk = result.get("disk")
    if disk:
        click.echo(f"disk       {disk['free_bytes'] / (1 << 30):.1f} GiB free ({disk['level']})"
                   + (f": {disk['message']}" if disk.get("message") else ""))
    if result.get("sync"):
        from ..sync.progress import format_lines
        for line in format_lines(result["sync"]):
            click.echo(line)


@click.group()
def passphrase():
    """Manage the kit passphrase."""


@passphrase.command("change")
@DATA_DIR
@click.option("--old-file", type=click.Path(path_type=Path), help="File holding the current passphrase.")
@click.option("--new-file", type=click.Path(path_type=Path), help="File holding the new passphrase.")
def passphrase_change(data_dir: Path, old_file, new_file):
    """Rewrap the data key under a new passphrase (no data is re-encrypted)."""
    cfg = config_mod.Config.load(data_dir / CONFIG_FILE)
    old = read_secret_file(old_file, "old passphrase") or click.prompt("Current passphrase", hide_input=True)
    new = read_secret_file(new_file, "new passphrase") or click.prompt(
        "New passphrase", hide_input=True, confirmation_prompt=True)
    _check_passphrase(new, cfg["security.passphrase_min_length"])
    Keyring(data_dir).change_passphrase(old, new)
    click.echo("passphrase changed")


COMMANDS = [init, serve, status, passphrase]

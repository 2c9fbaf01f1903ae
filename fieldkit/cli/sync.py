"""`fieldkit hospital …` (where and how to reach the hospital PACS) and `fieldkit sync …`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .. import config as config_mod
from ..errors import BadInput, Conflict
from ..kit import CONFIG_FILE, open_kit
from ..kit.control import run_op
from ..store import dir_is_locked
from ..sync.hospital import AUTH_MODES, SECRET_FILES, SECRETS_DIR, check_url
from .core import DATA_DIR, read_secret_file


def _load_values(data_dir: Path) -> dict:
    import tomllib
    path = Path(data_dir) / CONFIG_FILE
    config_mod.Config.load(path)  # validates, with a clear error
    return config_mod._flatten(tomllib.loads(path.read_text(encoding="utf-8")))


def _save_values(data_dir: Path, values: dict) -> None:
    config_mod.Config(values)  # refuse a bad value before anything is written
    path = Path(data_dir) / CONFIG_FILE
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(config_mod.render_toml(values))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@click.group()
def hospital():
    """Where and how the kit reaches the hospital's DICOMweb service."""


@hospital.command("set")
@DATA_DIR
@click.option("--url", help="DICOMweb root, e.g. https://pacs.example/dicom-web (no credentials in it).")
@click.option("--allow-plain-http", is_flag=True, help="Accept an http:// URL to a host other than this machine.")
@click.option("--auth", type=click.Choice(list(AUTH_MODES)))
@click.option("--username", help="User for HTTP Basic.")
@click.option("--password-file", type=click.Path(path_type=Path), help="File holding the Basic password (sealed into the data dir).")
@click.option("--token-file", type=click.Path(path_type=Path), help="File holding the bearer token (sealed into the data dir).")
@click.option("--client-cert", type=click.Path(path_type=Path), help="PEM client certificate (a key inside it is sealed apart).")
@click.option("--client-key", type=click.Path(path_type=Path), help="Unencrypted PEM key of the client certificate (sealed into the data dir).")
@click.option("--ca-bundle", type=click.Path(path_type=Path), help="PEM CA bundle to trust for the hospital.")
@click.option("--bandwidth-kbps", type=int, help="Upload cap in kbit/s (0: none).")
@click.option("--metered/--not-metered", default=None, help="Metered link: findings only until images are allowed.")
@click.option("--allow-images/--no-images", default=None, help="On a metered link, send images too.")
@click.option("--window", "windows", multiple=True, help="HH:MM-HH:MM when sync may send (repeatable; 'any' clears).")
@click.option("--retention-days", type=int, help="Purge pixel data this many days after confirmation (0: keep).")
def hospital_set(data_dir: Path, url, allow_plain_http, auth, username, password_file, token_file, client_cert,
                 client_key, ca_bundle, bandwidth_kbps, metered, allow_images, windows, retention_days):
    """Change hospital settings in fieldkit.toml (restart `serve` to apply). Secrets are
    sealed by the data key into DIR/secrets/; the TOML only names the file. Audited."""
    from .security import _actor
    values = _load_values(data_dir)
    changes = {"hospital.url": url, "hospital.auth": auth, "hospital.username": username,
               "sync.bandwidth_kbps": bandwidth_kbps, "sync.metered": metered,
               "sync.allow_images": allow_images, "sync.retention_days": retention_days}
    warning = check_url(url, allow_plain_http) if url is not None else None
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise BadInput(f"{ca_bundle} does not exist")
        changes["hospital.ca_bundle"] = str(Path(ca_bundle).resolve())
    secrets: dict[str, str] = {}
    if password_file is not None:
        secrets["hospital.password_file"] = read_secret_file(password_file, "password").strip()
    if token_file is not None:
        secrets["hospital.token_file"] = read_secret_file(token_file, "token").strip()
    if client_key is not None:
        secrets["hospital.client_key"] = _pem_key(_read_bytes(client_key, "client key"), client_key)
    if client_cert is not None:
        cert_pem, key_pem = _split_client_cert(_read_bytes(client_cert, "client certificate"), client_cert)
        changes["hospital.client_cert"] = f"{SECRETS_DIR}/{CLIENT_CERT_FILE}"
        secrets["cert"] = cert_pem
        if key_pem and "hospital.client_key" not in secrets:
            secrets["hospital.client_key"] = key_pem
    if windows:
        from ..sync.worker import in_windows
        ws = [] if list(windows) == ["any"] else list(windows)
        in_windows(ws)  # validates the format
        changes["sync.windows"] = ws
    changes = {k: v for k, v in changes.items() if v is not None}
    _check_auth({**values, **changes}, secrets, data_dir)
    r = run_op(data_dir, "hospital.set", {"changes": changes, "secrets": secrets, "actor": _actor()})
    if warning:
        click.echo(warning, err=True)
    click.echo("hospital settings saved: " + ", ".join(f"{k}={v}" for k, v in r["saved"].items())
               + (" (restart `fieldkit serve` to apply)" if dir_is_locked(data_dir) else ""))


CLIENT_CERT_FILE = "hospital-client.pem"


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _pem_key(data: bytes, path) -> str:
    """The key as PEM text, if it parses as an unencrypted private key (else a clear refusal)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BadInput(f"the client key {path} is encrypted: give it unencrypted (the kit seals it itself)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadInput(f"the client key {path} is not a PEM private key") from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _split_client_cert(data: bytes, path) -> tuple[str, str | None]:
    """(the certificates as PEM, the private key in the file as PEM or None)."""
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BadInput(f"the client certificate {path} holds no PEM certificate") from None
    block = re.search(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", data, re.S)
    key = _pem_key(block.group(0), path) if block else None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode(), key


def _check_auth(values: dict, secrets: dict, data_dir: Path) -> None:
    """The auth kind and the fields it needs, before anything is written."""
    mode = values.get("hospital.auth") or "none"
    if mode not in AUTH_MODES:
        raise BadInput(f"hospital.auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")

    def have(setting):
        return setting in secrets or bool(values.get(setting))

    if mode == "basic" and not values.get("hospital.username"):
        raise BadInput("--auth basic needs --username")
    need = {"basic": ("hospital.password_file", "--password-file"), "bearer": ("hospital.token_file", "--token-file"),
            "client-cert": ("hospital.client_cert", "--client-cert")}.get(mode)
    if need and not have(need[0]):
        raise BadInput(f"--auth {mode} needs {need[1]}")
    if mode == "client-cert" and not have("hospital.client_key"):
        raise BadInput("--auth client-cert needs the certificate's key: --client-key (or a key inside --client-cert)")


def op_hospital_set(kit, args, emit):
    """Seal the secrets, write the settings, audit which settings changed (never a value)."""
    from ..store import accounts
    from ..sync.hospital import write_secret
    changes = dict(args.get("changes") or {})
    secrets = dict(args.get("secrets") or {})
    values = _load_values(kit.data_dir)
    cert = secrets.pop("cert", None)
    saved = {k: v for k, v in changes.items()}
    for setting in secrets:
        if setting not in SECRET_FILES:
            raise BadInput(f"{setting} is not a secret setting")
        changes[setting] = f"{SECRETS_DIR}/{SECRET_FILES[setting]}"
    config_mod.Config({**values, **changes})  # refuse a bad value before anything is written
    for setting, value in secrets.items():
        changes[setting] = write_secret(kit.data_dir, kit.store.secrets, setting, value.encode())
        saved[setting] = changes[setting]
    if cert is not None:
        from ..security.files import write_atomic
        write_atomic(Path(kit.data_dir) / SECRETS_DIR / CLIENT_CERT_FILE, cert.encode(), 0o600)
    values.update(changes)
    _save_values(kit.data_dir, values)
    url = str(values.get("hospital.url") or "")
    accounts.audit_append(kit.store, actor=args.get("actor", accounts.SYSTEM), role="operator",
                          action="hospital.set", object=url, detail={"settings": sorted(changes)})
    return {"saved": saved}


@hospital.command("show")
@DATA_DIR
def hospital_show(data_dir: Path):
    """The hospital settings (secret files are named, never printed)."""
    cfg = config_mod.Config.load(Path(data_dir) / CONFIG_FILE)
    for name in config_mod.SETTINGS:
        if name.startswith(("hospital.", "sync.")):
            click.echo(f"{name} = {cfg[name]!r}")


@hospital.command("test")
@DATA_DIR
def hospital_test(data_dir: Path):
    """Check URL, TLS, credentials and that the endpoint speaks DICOMweb (one QIDO)."""
    from ..sync.client import StowClient
    from ..sync.hospital import endpoint_from_config
    from ..sync.link import probe
    cfg = config_mod.Config.load(Path(data_dir) / CONFIG_FILE)
    ep = endpoint_from_config(cfg, data_dir, open_secret_box(data_dir))
    up, reason = probe(ep.base_url)
    if not up:
        raise Conflict(f"hospital unreachable: {reason}")
    StowClient(ep).probe()
    click.echo(f"hospital OK: {ep.base_url} answers DICOMweb QIDO with the configured credentials")


def open_secret_box(data_dir: Path):
    """What opens the sealed hospital secrets, or None when the data key cannot be had
    unattended (then a sealed secret is reported as such)."""
    from ..errors import KeyUnavailable
    from ..kit import unlock_data_key
    from ..security.secrets import SecretBox
    try:
        return SecretBox(unlock_data_key(data_dir))
    except KeyUnavailable:
        return None


@click.group(invoke_without_command=True)
@click.option("--data-dir", "data_dir", type=click.Path(path_type=Path), help="The kit's data directory.")
@click.option("--once", is_flag=True, help="Send what can go now, then exit (the kit must not be running).")
@click.option("--timeout", type=float, default=None, help="With --once: give up after this many seconds.")
@click.option("--passphrase-file", type=click.Path(path_type=Path), help="Unlock with the passphrase instead of the device key.")
@click.pass_context
def sync(ctx, data_dir, once, timeout, passphrase_file):
    """Send queued findings and images to the hospital (`--once`), or see sync state."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"data_dir": data_dir}
        return
    if not once or data_dir is None:
        raise click.UsageError("use `fieldkit sync --once --data-dir DIR`, or a subcommand (status, purge)")
    if dir_is_locked(data_dir):
        raise Conflict("the kit is running and syncs by itself; see `fieldkit sync status`")
    from tqdm import tqdm
    from ..sync.progress import format_lines
    from ..sync.worker import SyncWorker
    kit = open_kit(data_dir, passphrase=read_secret_file(passphrase_file, "passphrase"))
    try:
        worker = SyncWorker(kit.store, kit.config, kit.data_dir)
        start = worker.status()
        total = start["queue_bytes"]
        import threading
        done = threading.Event()
        result = {}

        def run():
            try:
                result["status"] = worker.run_once(timeout=timeout)
            finally:
                done.set()
        threading.Thread(target=run, name="sync-once", daemon=True).start()
        with tqdm(total=total, unit="B", unit_scale=True, desc="to hospital", disable=None) as bar:
            while not done.wait(0.5):
                st = worker.status()
                bar.n = max(0, total - st["queue_bytes"])
                bar.set_postfix_str(f"{st['counts']['confirmed']} confirmed, {st['counts']['quarantined']} quarantined")
                bar.refresh()
            st = result.get("status") or worker.status()
            bar.n = max(0, total - st["queue_bytes"])
            bar.refresh()
        for line in format_lines(st):
            click.echo(line)
        if st["counts"]["queued"] or st["counts"]["sending"]:
            raise Conflict("not everything could be sent now; it stays queued")
    finally:
        kit.close()


@sync.command("status")
@click.option("--data-dir", "data_dir", type=click.Path(path_type=Path), help="The kit's data directory.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sync_status(ctx, data_dir, as_json):
    """Per-item sync state, queue bytes, link and ETA."""
    from ..kit.control import run_op
    data_dir = data_dir or (ctx.obj or {}).get("data_dir")
    if data_dir is None:
        raise click.UsageError("--data-dir is required")
    if dir_is_locked(data_dir):
        st = run_op(data_dir, "status", {}).get("sync")
        if st is None:
            raise Conflict("the running kit does not report sync state; stop it to read the queue directly")
    else:
        from ..sync.progress import status
        kit = open_kit(data_dir)
        try:
            st = status(kit.store)
        finally:
            kit.close()
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    from ..sync.progress import format_lines
    for line in format_lines(st):
        click.echo(line)


@sync.command("purge")
@click.option("--data-dir", "data_dir", type=click.Path(path_type=Path), required=True)
def sync_purge(data_dir):
    """Apply the retention policy now (kit not running)."""
    from ..sync.retention import purge_expired
    if dir_is_locked(data_dir):
        raise Conflict("the kit is running and applies retention by itself")
    kit = open_kit(data_dir)
    try:
        n = purge_expired(kit.store, int(kit.config["sync.retention_days"]))
    finally:
        kit.close()
    click.echo(f"purged pixel data of {n} confirmed instances (tombstones kept)")


COMMANDS = [hospital, sync]

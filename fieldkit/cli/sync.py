"""`fieldkit hospital …` (where and how to reach the hospital PACS) and `fieldkit sync …`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .. import config as config_mod
from ..errors import BadInput, Conflict
from ..runtime import CONFIG_FILE, open_kit
from ..store import dir_is_locked
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
@click.option("--url", help="DICOMweb root, e.g. https://pacs.example/dicom-web.")
@click.option("--auth", type=click.Choice(["none", "basic", "bearer", "client-cert"]))
@click.option("--username", help="User for HTTP Basic.")
@click.option("--password-file", type=click.Path(path_type=Path), help="File holding the Basic password (copied owner-only into the data dir).")
@click.option("--token-file", type=click.Path(path_type=Path), help="File holding the bearer token (copied owner-only into the data dir).")
@click.option("--client-cert", type=click.Path(path_type=Path), help="PEM client certificate.")
@click.option("--client-key", type=click.Path(path_type=Path), help="PEM key of the client certificate.")
@click.option("--ca-bundle", type=click.Path(path_type=Path), help="PEM CA bundle to trust for the hospital.")
@click.option("--bandwidth-kbps", type=int, help="Upload cap in kbit/s (0: none).")
@click.option("--metered/--not-metered", default=None, help="Metered link: findings only until images are allowed.")
@click.option("--allow-images/--no-images", default=None, help="On a metered link, send images too.")
@click.option("--window", "windows", multiple=True, help="HH:MM-HH:MM when sync may send (repeatable; 'any' clears).")
@click.option("--retention-days", type=int, help="Purge pixel data this many days after confirmation (0: keep).")
def hospital_set(data_dir: Path, url, auth, username, password_file, token_file, client_cert, client_key,
                 ca_bundle, bandwidth_kbps, metered, allow_images, windows, retention_days):
    """Change hospital settings in fieldkit.toml (restart `serve` to apply). Secrets are
    copied into DIR/secrets/ with owner-only permissions; the TOML only names the file."""
    from ..sync.hospital import write_secret
    values = _load_values(data_dir)
    changes = {"hospital.url": url, "hospital.auth": auth, "hospital.username": username,
               "sync.bandwidth_kbps": bandwidth_kbps, "sync.metered": metered,
               "sync.allow_images": allow_images, "sync.retention_days": retention_days}
    for name, path in (("hospital.client_cert", client_cert), ("hospital.client_key", client_key),
                       ("hospital.ca_bundle", ca_bundle)):
        if path is not None:
            if not Path(path).is_file():
                raise BadInput(f"{path} does not exist")
            changes[name] = str(Path(path).resolve())
    if url is not None and not url.startswith(("http://", "https://")):
        raise BadInput(f"the hospital URL must start with https:// (or http://): {url!r}")
    if password_file is not None:
        changes["hospital.password_file"] = write_secret(
            data_dir, "hospital-password", read_secret_file(password_file, "password"))
    if token_file is not None:
        changes["hospital.token_file"] = write_secret(
            data_dir, "hospital-token", read_secret_file(token_file, "token"))
    if windows:
        from ..sync.worker import in_windows
        ws = [] if list(windows) == ["any"] else list(windows)
        in_windows(ws)  # validates the format
        changes["sync.windows"] = ws
    values.update({k: v for k, v in changes.items() if v is not None})
    _save_values(data_dir, values)
    shown = {k: v for k, v in changes.items() if v is not None}
    click.echo("hospital settings saved: " + ", ".join(f"{k}={v}" for k, v in shown.items())
               + (" (restart `fieldkit serve` to apply)" if dir_is_locked(data_dir) else ""))


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
    ep = endpoint_from_config(cfg, data_dir)
    up, reason = probe(ep.base_url)
    if not up:
        raise Conflict(f"hospital unreachable: {reason}")
    StowClient(ep).probe()
    click.echo(f"hospital OK: {ep.base_url} answers DICOMweb QIDO with the configured credentials")


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
    from .control import run_op
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

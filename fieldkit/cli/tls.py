"""`fieldkit tls renew`: a new HTTPS server certificate from the kit's own CA."""

from __future__ import annotations

from pathlib import Path

import click

from ..kit import unlock_data_key
from ..security.tls import SERVER_DAYS, renew_server
from ..store import dir_is_locked
from .core import DATA_DIR, read_secret_file


@click.group()
def tls():
    """The kit's HTTPS certificate, issued by the kit's own CA (whose key stays sealed)."""


@tls.command("renew")
@DATA_DIR
@click.option("--days", type=click.IntRange(1, SERVER_DAYS), default=SERVER_DAYS, show_default=True,
              help="Lifetime of the new certificate.")
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="Unlock with the kit passphrase instead of the device key.")
def tls_renew(data_dir: Path, days: int, passphrase_file):
    """Issue a new server key and certificate from the same kit CA, for the same names and
    addresses: onboarded tablets keep trusting the kit."""
    cert = renew_server(data_dir, unlock_data_key(data_dir, read_secret_file(passphrase_file, "passphrase")), days)
    click.echo(f"server certificate renewed: serial {cert.serial_number:x}, valid until "
               f"{cert.not_valid_after_utc:%Y-%m-%d}, issued by the same kit CA")
    if dir_is_locked(data_dir):
        click.echo("the running kit serves the old certificate until it restarts: restart `fieldkit serve`")


COMMANDS = [tls]

"""`fieldkit store salvage`: keep what still authenticates in a damaged store."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StoreBusy
from ..kit import load_config
from ..security.keys import Keyring
from ..security.tpm import sealer_for
from ..store import Store, check_format, dir_is_locked
from ..store.salvage import readopt_captures, salvage as salvage_store
from .core import DATA_DIR, read_secret_file


@click.group("store")
def store_group():
    """Check and repair the kit's encrypted store."""


@store_group.command("salvage")
@DATA_DIR
@click.option("--passphrase-file", type=click.Path(path_type=Path),
              help="Unlock with the passphrase instead of the device key.")
def salvage(data_dir: Path, passphrase_file):
    """Write a new journal from every record that still authenticates, name what was lost,
    keep the original aside. On an undamaged store: says so and changes nothing (exit 0)."""
    if dir_is_locked(data_dir):
        raise StoreBusy(f"data dir {data_dir} is in use by a running kit: stop `fieldkit serve` first, "
                        "then run the salvage")
    check_format(data_dir)
    keyring = Keyring(data_dir, sealer=sealer_for(load_config(data_dir)))
    passphrase = read_secret_file(passphrase_file, "passphrase")
    key = keyring.unlock(passphrase)
    report = salvage_store(data_dir, key)
    for line in report.lines():
        click.echo(line)
    if report.changed:
        store = Store.open(data_dir, key, load_config(data_dir))  # proves the result opens
        try:
            back = [r for r in readopt_captures(store) if r["status"] == "stored"]
            counts = store.counts()
        finally:
            store.close()
        if back:
            click.echo(f"put back {len(back)} capture(s) whose catalogue rows were lost (their files were whole): "
                       + ", ".join(r["sop_instance_uid"] for r in back))
        click.echo(f"the salvaged store opens: {counts['patients']} patients, {counts['instances']} instances")


def op_scrub(kit, args: dict, emit) -> dict:
    """CONTROL_OPS "store.scrub": verify every stored capture now (fieldkit doctor --scrub)."""
    from ..store.scrub import scrub_all
    return scrub_all(kit.store)


COMMANDS = [store_group]

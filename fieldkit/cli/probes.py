"""`fieldkit probes add|list|remove`: the probes allowed to send to the kit, by AE title.

A registered probe is let in by the DICOM receiver without editing `dicom.allowed_ae_titles`
(which stays as the underlying setting: the kit allows both). While `serve` runs, the change
goes through it and takes effect at once.
"""

from __future__ import annotations

import json

import click

from ..ingest import dimse
from ..kit.control import run_op
from ..store import probes
from .core import DATA_DIR
from .security import _actor


# fn(kit, args, emit) -> JSON-able; registered in fieldkit.kit.registry.CONTROL_OPS
def op_probes_add(kit, args, emit):
    return dimse.register_probe(kit, args["ae"], name=args.get("name", ""), host=args.get("host", ""),
                                actor=args.get("actor", ""), role="operator")


def op_probes_list(kit, args, emit):
    return probes.list_probes(kit.store)


def op_probes_remove(kit, args, emit):
    dimse.unregister_probe(kit, args["ae"], actor=args.get("actor", ""), role="operator")
    return {"removed": args["ae"]}


@click.group("probes")
def probes_group():
    """Probes allowed to send captures (by calling AE title)."""


@probes_group.command("add")
@DATA_DIR
@click.argument("ae")
@click.option("--name", default="", help="A label people recognise (e.g. 'Lumify 2, tent B').")
@click.option("--host", default="", help="The probe's address, if known (shown on the device page).")
def probes_add(data_dir, ae, name, host):
    """Register a probe by its AE title: it may send at once."""
    row = run_op(data_dir, "probes.add", {"ae": ae, "name": name, "host": host, "actor": _actor()})
    click.echo(f"probe {row['ae']} registered" + (f" ({row['name']})" if row["name"] else ""))


@probes_group.command("list")
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def probes_list(data_dir, as_json):
    """List registered probes and their current probe session."""
    rows = run_op(data_dir, "probes.list", {})
    if as_json:
        return click.echo(json.dumps(rows, indent=1, ensure_ascii=False))
    for r in rows:
        session = f"  scanning {r['session']['patient_id']}" if r.get("session") else ""
        click.echo(f"{r['ae']:16} {r['name'] or '-':24} {r['host'] or '-'}{session}")
    if not rows:
        click.echo("no probes registered: add one with `fieldkit probes add AE --name LABEL`")


@probes_group.command("remove")
@DATA_DIR
@click.argument("ae")
def probes_remove(data_dir, ae):
    """Remove a probe: it may no longer send (unless dicom.allowed_ae_titles lists it)."""
    run_op(data_dir, "probes.remove", {"ae": ae, "actor": _actor()})
    click.echo(f"probe {ae} removed")


COMMANDS = [probes_group]

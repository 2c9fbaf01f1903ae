"""`fieldkit import PATH... --data-dir DIR`: bring captures in from a USB stick or folder.

Runs inside the running kit (through its control socket) when `serve` runs, else opens
the store itself; shows a progress bar; importing the same files twice stores nothing
twice and says so."""

from __future__ import annotations

from pathlib import Path

import click

from ..kit.control import run_op


def op_import(kit, args: dict, emit) -> dict:
    from ..ingest.walker import import_paths

    paths = [Path(p) for p in args.get("paths") or []]
    return import_paths(kit.store, paths, emit)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="FIELDKIT_DATA_DIR", help="The kit's data directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_cmd(paths, data_dir, quiet):
    """Import DICOM files, DICOMDIR sets and Part-10 zip bundles from PATHS."""
    from tqdm import tqdm

    bar = None

    def progress(p: dict) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=p.get("total", 0), unit="file", desc="importing")
        bar.n = p.get("done", 0)
        bar.refresh()

    try:
        result = run_op(data_dir, "import", {"paths": [str(p.resolve()) for p in paths]}, progress)
    finally:
        if bar is not None:
            bar.close()
    counts = result["counts"]
    stored, dup = counts.get("stored", 0), counts.get("duplicate", 0)
    click.echo(f"{result['files']} file(s) read: {stored} stored, {dup} already on the kit (not stored again), "
               f"{counts.get('conflict', 0)} kept as conflicts, {counts.get('refused', 0)} refused, "
               f"{counts.get('skipped', 0)} skipped (not DICOM)")
    for p in result["problems"][:50]:
        click.echo(f"  {p['status']}: {p['name']}: {p['reason']}", err=True)
    if len(result["problems"]) > 50:
        click.echo(f"  ... and {len(result['problems']) - 50} more", err=True)
    if counts.get("refused", 0) and not (stored or dup):
        raise SystemExit(2)


COMMANDS = [import_cmd]
